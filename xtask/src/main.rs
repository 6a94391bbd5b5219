//! `cargo xtask`: the project's own tasks (testbed, demo, ci, bench).
fn main() -> anyhow::Result<()> {
    anyhow::bail!("no task yet")
}
