//! Process bookkeeping by pid file and /proc, never by process name: the testbed only ever stops
//! what it started (pids it recorded, and what runs inside its own network namespaces).
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// Reads a pid file; `None` when missing or not a number.
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// True when `pid` is alive (not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the `(comm)` field; `Z` = zombie, `X` = dead.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => false,
        },
        Err(_) => false,
    }
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// The pid in `path` if that process is alive and its command line contains `expect`
/// (guards against a recycled pid that now belongs to something else).
pub fn live_pid(path: &Path, expect: &str) -> Option<u32> {
    let pid = read_pid(path)?;
    (alive(pid) && cmdline(pid).contains(expect)).then_some(pid)
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `roots` plus every live descendant of them.
pub fn with_descendants(roots: &BTreeSet<u32>) -> BTreeSet<u32> {
    let pids = all_pids();
    let mut set: BTreeSet<u32> = roots.iter().copied().filter(|p| alive(*p)).collect();
    loop {
        let before = set.len();
        for &p in &pids {
            if !set.contains(&p) && parent(p).is_some_and(|pp| set.contains(&pp)) && alive(p) {
                set.insert(p);
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

/// SIGTERM to every pid, wait up to `grace` for them to go, then SIGKILL the rest.
/// Returns the pids that are still alive afterwards (should be none).
pub fn stop_all(pids: &BTreeSet<u32>, grace: Duration) -> Vec<u32> {
    for &p in pids {
        signal(p, "TERM");
    }
    crate::sh::wait_until(grace, || pids.iter().all(|p| !alive(*p)));
    let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    for &p in &left {
        signal(p, "KILL");
    }
    crate::sh::wait_until(Duration::from_secs(5), || left.iter().all(|p| !alive(*p)));
    left.into_iter().filter(|p| alive(*p)).collect()
}
