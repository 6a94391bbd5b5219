//! Tiny helpers around `std::process::Command`: the xtask drives system tools (ip, nsenter, ssh,
//! docker) and small shell snippets, so these keep the call sites short and the errors readable.
use anyhow::{Context, Result, bail};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `sh -c SCRIPT` and fails with its stderr when it exits non-zero.
pub fn run(script: &str) -> Result<()> {
    output(script).map(|_| ())
}

/// Runs `sh -c SCRIPT` and returns its stdout (trimmed) when it exits zero.
pub fn output(script: &str) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run sh -c {script:?}"))?;
    if !out.status.success() {
        bail!(
            "command failed ({}): {script}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// True when `sh -c SCRIPT` exits zero (all output discarded).
pub fn ok(script: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a command with inherited stdio (the user sees its output); returns its exit code.
pub fn interactive(cmd: &mut Command) -> Result<i32> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    Ok(status.code().unwrap_or(1))
}

/// Starts a long-running process detached from us (own process group, stdin closed, output
/// appended to `log`) and returns its pid. We never wait for it: `down` stops it by pid file.
pub fn spawn_detached(cmd: &mut Command, log: &Path) -> Result<u32> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    // A daemon must not keep a descriptor this process inherited open (a `flock` around
    // `testbed up` would be held until the testbed stops): mark everything above stderr
    // close-on-exec (std's own exec-error pipe already is).
    // SAFETY: only async-signal-safe calls (close_range, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            unsafe extern "C" {
                fn close_range(first: u32, last: u32, flags: i32) -> i32;
                fn fcntl(fd: i32, cmd: i32, ...) -> i32;
            }
            const CLOSE_RANGE_CLOEXEC: i32 = 1 << 2;
            const F_SETFD: i32 = 2;
            const FD_CLOEXEC: i32 = 1;
            if close_range(3, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
                for fd in 3..1024 {
                    fcntl(fd, F_SETFD, FD_CLOEXEC);
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    Ok(child.id())
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Single-quotes a string for sh.
pub fn q(s: impl AsRef<str>) -> String {
    format!("'{}'", s.as_ref().replace('\'', r"'\''"))
}
