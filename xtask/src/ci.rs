//! `cargo xtask ci` (the test command README gives). `demo` lives in `deploy.rs`.
use crate::testbed::{self, image, layout::Layout};
use anyhow::Result;
use std::process::Command;

/// Testbed up + images, `cargo test --workspace` pointed at it, testbed down even when the tests
/// fail, then the "down leaves nothing behind" check (which cannot run inside `cargo test` while
/// the testbed is up). Returns the exit code: the tests', or 1 if down left something.
pub fn ci(l: &Layout, hosts: u32) -> Result<i32> {
    let started = std::time::Instant::now();
    // Three bare hosts b1..b3 for tests/testsuite/setup.rs (`fleet setup` from hosts without an agent).
    let bare = || {
        let bin = testbed::consul_standin(l).map_err(|e| anyhow::anyhow!(e))?;
        testbed::bare::up(l, 3, &bin)
    };
    let code = match testbed::up(l, hosts)
        .and_then(|()| image::image(l))
        .and_then(|()| bare())
    {
        Ok(()) => run_tests(l)?,
        Err(e) => {
            eprintln!("ci: testbed up failed: {e:#}");
            1
        }
    };
    eprintln!("ci: tests exited with {code}; stopping the testbed");
    let down = testbed::down(l);
    let left = testbed::leftovers(l);
    let mut code = code;
    if let Err(e) = down {
        eprintln!("ci: FAILED: testbed down: {e:#}");
        code = code.max(1);
    }
    if left.is_empty() {
        println!("ci: after testbed down: no testbed process, namespace, veth or mount left");
    } else {
        eprintln!(
            "ci: FAILED: after testbed down these are left:\n  {}",
            left.join("\n  ")
        );
        code = code.max(1);
    }
    println!(
        "ci: {} in {:.0?}",
        if code == 0 { "passed" } else { "FAILED" },
        started.elapsed()
    );
    Ok(code)
}

fn run_tests(l: &Layout) -> Result<i32> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["test", "--workspace"]).current_dir(&l.workspace);
    l.point_at(&mut cmd)?;
    crate::sh::interactive(&mut cmd)
}
