//! `cargo xtask bench WHAT`: each benchmark prints its times and its ratios against a baseline
//! measured in the same run (never a timed test).
//!
//! - `manifest`: load + resolve 500 apps on 200 hosts (`examples/bench_manifest.rs`, release);
//! - `build`: hashing a 200 MB context, and a no-change `build --push` of 10 apps
//!   (`examples/bench_build.rs`, release, against the testbed registry);
//! - `plan`: a no-op plan of 1, 5, 10, 20 hosts and the ratio to 1 host (`examples/bench_plan.rs`);
//! - `deploy`: a one-app change rolled out to 1, 5, 10, 20 hosts, against the floor (`deploy.rs`).
//!
//! Host counts above the testbed's size are skipped or capped: `cargo xtask testbed up --hosts 20`
//! first for the full series.
use crate::testbed::layout::Layout;
use anyhow::{Result, bail};
use std::process::Command;

pub fn run(l: &Layout, what: &str, hosts: &[u32]) -> Result<()> {
    let counts: Vec<String> = hosts.iter().map(u32::to_string).collect();
    match what {
        "deploy" => crate::deploy::bench(l, hosts),
        "manifest" => example(l, "bench_manifest", &[], false),
        "build" => example(l, "bench_build", &["--mb", "200", "--apps", "10"], true),
        "plan" => {
            example(
                l,
                "bench_plan",
                &counts.iter().map(String::as_str).collect::<Vec<_>>(),
                true,
            )?;
            ssh_floor(l, hosts)
        }
        other => bail!("unknown benchmark {other}"),
    }
}

/// The floor under a plan on this machine: plain `ssh HOST true` to N hosts at once (every
/// handshake's both ends share this machine's cores), best of three, and its own ratio.
fn ssh_floor(l: &Layout, hosts: &[u32]) -> Result<()> {
    let have: u32 = std::fs::read_to_string(l.path("hosts"))?.trim().parse()?;
    let mut one = None;
    for &n in hosts.iter().filter(|n| **n <= have) {
        let mut best = std::time::Duration::MAX;
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let children: Vec<_> = (1..=n)
                .map(|i| {
                    Command::new("ssh")
                        .arg("-F")
                        .arg(l.path("ssh_config"))
                        .args([format!("h{i}").as_str(), "true"])
                        .spawn()
                })
                .collect::<Result<_, _>>()?;
            for mut c in children {
                if !c.wait()?.success() {
                    bail!("ssh to a testbed host failed");
                }
            }
            best = best.min(t.elapsed());
        }
        let base = *one.get_or_insert(best);
        println!(
            "ssh floor, {n:>2} hosts: {:.3} s  ({:.2}x one host)",
            best.as_secs_f64(),
            best.as_secs_f64() / base.as_secs_f64()
        );
    }
    Ok(())
}

/// `cargo run --release --example NAME -- ARGS`, pointed at the testbed when it needs one.
fn example(l: &Layout, name: &str, args: &[&str], testbed: bool) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "fleet",
        "--example",
        name,
        "--",
    ])
    .args(args)
    .current_dir(&l.workspace);
    if testbed {
        if !l.path("READY").exists() {
            bail!(
                "no testbed in {} (run `cargo xtask testbed up` first)",
                l.d()
            );
        }
        l.point_at(&mut cmd)?;
    }
    let code = crate::sh::interactive(&mut cmd)?;
    if code != 0 {
        bail!("{name} exited with {code}");
    }
    Ok(())
}
