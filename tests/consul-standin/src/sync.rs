//! Anti-entropy: an agent pushes its local services and checks to the server's catalog
//! (`agent/local/state.go`). Registrations and deregistrations are synced before the HTTP call
//! returns; check status changes after [`crate::Config::sync_delay`]; everything again every
//! [`FULL_SYNC`], which also repairs a server that lost its state.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::state::NodeSync;
use crate::{Role, Shared};

/// How often an agent re-sends everything, changed or not.
const FULL_SYNC: Duration = Duration::from_secs(10);

/// The path on the server that takes a node's whole state (the stand-in's internal RPC).
pub const SYNC_PATH: &str = "/v1/internal/standin/sync";

#[derive(Default)]
pub struct Syncer {
    notify: Notify,
    /// One sync at a time, so an older snapshot never lands after a newer one.
    lock: tokio::sync::Mutex<()>,
}

impl Syncer {
    pub fn changed(&self) {
        self.notify.notify_one();
    }
}

fn snapshot(shared: &Shared) -> NodeSync {
    let state = shared.state.lock().unwrap();
    NodeSync {
        node: shared.config.node.clone(),
        id: shared.node_id.clone(),
        address: shared.node_address.clone(),
        services: state.services.values().cloned().collect(),
        checks: state.checks.values().map(|c| c.for_catalog()).collect(),
    }
}

/// Pushes the agent's whole local state to the server now.
pub async fn sync_now(shared: &Shared) -> anyhow::Result<()> {
    let Role::Agent { server, sync } = &shared.role else {
        return Ok(());
    };
    let _one = sync.lock.lock().await;
    let body = snapshot(shared);
    let response = shared
        .http
        .put(format!("{server}{SYNC_PATH}"))
        .timeout(Duration::from_secs(10))
        .json(&body)
        .send()
        .await?;
    if !response.status().is_success() {
        anyhow::bail!(
            "server answered {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// The background sync: after each local change (and its delay), and every [`FULL_SYNC`].
pub fn spawn_loop(shared: &Arc<Shared>, stop: &watch::Sender<bool>) -> JoinHandle<()> {
    let shared = shared.clone();
    let mut stopped = stop.subscribe();
    tokio::spawn(async move {
        let Role::Agent { sync, .. } = &shared.role else {
            return;
        };
        loop {
            tokio::select! {
                _ = sync.notify.notified() => {
                    tokio::time::sleep(shared.config.sync_delay).await;
                }
                _ = tokio::time::sleep(FULL_SYNC) => {}
                _ = crate::stopped(&mut stopped) => return,
            }
            if let Err(e) = sync_now(&shared).await {
                eprintln!("consul-standin: sync to the server failed: {e:#}");
            }
        }
    })
}
