//! Plan against the real hosts: connect to all (bounded), observe, diff, close.
//! The CLI, the benchmark and `deploy --plan` re-checks call this; `deploy` itself keeps the
//! sessions open and composes `host::connect_all` + `observe::observe_all` directly.

use std::time::{Duration, Instant};

use crate::desired::{DesiredState, HostTarget};
use crate::host::{ConnectOptions, close_all, connect_all};
use crate::observe::{ObserveOptions, ObservedState, observe_all};

use super::{Plan, diff};

/// Wall time of each phase, for `--verbose`-style output and the benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub connect: Duration,
    pub observe: Duration,
    pub close: Duration,
    pub total: Duration,
}

/// Why nothing could be planned at all (per-host failures are faults inside the plan instead).
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("cannot read the Consul ACL token: {0}")]
    ConsulToken(String),
}

/// Observe every host of `desired` and diff. Hosts that fail are faults in the returned plan.
pub async fn plan_live(
    desired: &DesiredState,
    connect: &ConnectOptions,
    parallel: usize,
) -> Result<(Plan, ObservedState, Timings), LiveError> {
    let oo = ObserveOptions::for_desired(desired, parallel).map_err(LiveError::ConsulToken)?;
    let targets: Vec<HostTarget> = desired.hosts.iter().map(|h| h.target.clone()).collect();
    let t0 = Instant::now();
    let sessions = connect_all(&targets, connect, parallel).await;
    let t1 = Instant::now();
    let observed = observe_all(&targets, &sessions, &oo).await;
    let t2 = Instant::now();
    close_all(sessions, connect).await;
    let t3 = Instant::now();
    let plan = diff(desired, &observed);
    Ok((
        plan,
        observed,
        Timings {
            connect: t1 - t0,
            observe: t2 - t1,
            close: t3 - t2,
            total: t0.elapsed(),
        },
    ))
}
