//! CPU time for the benchmarks: fleet's own (the children this process waited for), and how
//! busy the whole machine was (all test hosts share its cores).
use std::time::Duration;

/// User + sys CPU time of this process's children that have been waited for (the `fleet`
/// commands run here), from `getrusage(RUSAGE_CHILDREN)`: microseconds, where the clock ticks
/// of `/proc/self/stat` count in 10 ms steps.
pub fn children_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let t = |v: libc::timeval| Duration::new(v.tv_sec as u64, v.tv_usec as u32 * 1000);
    t(u.ru_utime) + t(u.ru_stime)
}

/// Busy and total ticks of all CPUs together, from `/proc/stat`.
pub fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The share of the machine's CPU time that was busy since `start` (0 to 1): near 1 means
/// every core was working, so more hosts at once cannot finish sooner.
pub fn busy_since(start: (u64, u64)) -> f64 {
    let now = cpu_ticks();
    let total = now.1.saturating_sub(start.1);
    if total == 0 {
        return 0.0;
    }
    now.0.saturating_sub(start.0) as f64 / total as f64
}
