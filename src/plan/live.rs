//! Plan against the real hosts: connect to all (bounded), observe, diff, close, through
//! `observe::Connected` (as the deploy pipeline does, which keeps the sessions open to apply).
//! The CLI, the benchmark and `deploy --plan` re-checks call this.

use std::time::{Duration, Instant};

use crate::desired::DesiredState;
use crate::host::ConnectOptions;
use crate::observe::{Connected, ObservedState};

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
    let t0 = Instant::now();
    let cx = Connected::open(desired, connect.clone(), parallel)
        .await
        .map_err(|e| LiveError::ConsulToken(e.to_string()))?;
    let t1 = Instant::now();
    let observed = cx.observe().await;
    let t2 = Instant::now();
    cx.close().await;
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
