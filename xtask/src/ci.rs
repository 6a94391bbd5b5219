//! `cargo xtask ci` and `cargo xtask demo`.
use crate::testbed::{self, layout::Layout};
use anyhow::Result;

pub fn demo(_l: &Layout) -> Result<()> {
    anyhow::bail!("demo: not yet")
}

pub fn ci(_l: &Layout, _hosts: u32) -> Result<i32> {
    let _ = testbed::status;
    anyhow::bail!("ci: not yet")
}
