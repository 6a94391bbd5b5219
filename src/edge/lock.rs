//! One edge change at a time per host, across projects.
//!
//! An edge is shared: two projects deploying at once may both edit one Caddy's config. Each
//! request of the admin API is atomic, but a converge is several (read, add the server, insert
//! a route at an index, patch the settings): two at once can lose a change (one adds the
//! server while the other loads the skeleton over it). So a converge holds the Consul key
//! `_fleet/edge/<host address>/lock`, acquired by a short session (behavior `delete`, no
//! lock-delay), waiting for it as long as another project holds it (up to `within`).
//!
//! The deploy lock is per project and environment: it does not cover this. The upstream
//! updates of a rollout (one PATCH of one route's upstreams by `@id`) are single requests and
//! need no lock. A token that may not write the key (ACLs) converges without it, as before.

use std::time::{Duration, Instant};

use crate::consul::{ConsulClient, ConsulError, SessionBehavior, SessionRequest, go_duration};

/// A held edge lock; `release` it when the converge is done (an abandoned one expires).
pub struct EdgeLock {
    consul: ConsulClient,
    session: String,
}

/// The key of the edge lock of the host at `address`.
pub fn key(address: &str) -> String {
    format!("_fleet/edge/{address}/lock")
}

/// Waits up to `within` for the edge lock of `address`. `Ok(None)`: this token may not take
/// it (ACL), go on without. `Err`: still held by someone else after `within`.
pub async fn acquire(
    consul: &ConsulClient,
    address: &str,
    holder: &str,
    within: Duration,
) -> Result<Option<EdgeLock>, String> {
    let session = match consul
        .session_create(&SessionRequest {
            name: Some(format!("fleet edge lock {address} ({holder})")),
            ttl: Some(go_duration(Duration::from_secs(30))),
            behavior: Some(SessionBehavior::Delete),
            lock_delay: Some(go_duration(Duration::ZERO)),
            ..SessionRequest::default()
        })
        .await
    {
        Ok(s) => s,
        Err(e) if denied(&e) => return Ok(None),
        Err(e) => return Err(format!("edge lock of {address}: {e}")),
    };
    let key = key(address);
    let t0 = Instant::now();
    loop {
        match consul.kv_acquire(&key, holder.as_bytes(), &session).await {
            Ok(true) => {
                return Ok(Some(EdgeLock {
                    consul: consul.clone(),
                    session,
                }));
            }
            Ok(false) if t0.elapsed() < within => {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            Ok(false) => {
                let _ = consul.session_destroy(&session).await;
                let who = consul
                    .kv_get(&key)
                    .await
                    .ok()
                    .flatten()
                    .map(|p| p.value_str())
                    .unwrap_or_else(|| "another deploy".into());
                return Err(format!(
                    "the edge of {address} is being changed by {who} for over {}s; \
                     retry when it is done",
                    within.as_secs()
                ));
            }
            Err(e) => {
                let _ = consul.session_destroy(&session).await;
                if denied(&e) {
                    return Ok(None);
                }
                return Err(format!("edge lock of {address}: {e}"));
            }
        }
    }
}

impl EdgeLock {
    /// Ends the session: the key goes with it (behavior `delete`), free at once (no
    /// lock-delay).
    pub async fn release(self) {
        let _ = self.consul.session_destroy(&self.session).await;
    }
}

fn denied(e: &ConsulError) -> bool {
    matches!(e, ConsulError::AclDenied { .. })
}
