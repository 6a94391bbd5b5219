//! What the apply steps share: the options, the records of what was done (`Step`, `Failure`),
//! what a container launch needs (`Launch`, `Started`, `Undo`), and the per-apply and per-host
//! context (`Ctx`, `Host`) that `deploy`, `instance` and `prune` all work through; progress
//! goes to `ApplyOptions::events` as `ApplyEvent`s (event.rs).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use serde::Serialize;

use super::event::ApplyEvent;
use super::pull_auth::PullAuth;
use crate::consul::ConsulClient;
use crate::desired::HealthSpec;
use crate::host::HostSession;
use crate::plan::rollout::AppRollout;
use crate::plan::{Action, HostPlan, Plan};

/// Where apply's progress goes, one [`ApplyEvent`] at a time.
pub type Events = Arc<dyn Fn(&ApplyEvent) + Send + Sync>;

/// Asked before each batch of instances: `Some(reason)` stops the rollout there (the deploy
/// lock was lost: another deploy may be about to start).
pub type Cancel = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// How to apply.
#[derive(Clone)]
pub struct ApplyOptions {
    /// Hosts worked on at once.
    pub parallel: usize,
    /// Roll back what this deploy replaced when an instance fails.
    pub rollback: bool,
    /// Wait between deregistering an old instance and stopping it, so clients that just looked
    /// it up finish their requests.
    pub drain: Duration,
    /// Versions of each built app's image kept on each host (older fleet images are removed).
    pub keep_images: usize,
    /// The Consul ACL token's value, when the project has one.
    pub consul_token: Option<String>,
    pub events: Option<Events>,
    /// Checked before each batch; a reason stops every host at its next instance, with a
    /// failure naming it and no rollback (whoever took over now owns the environment).
    pub cancel: Option<Cancel>,
    /// Hosts with changes converged first (in manifest order); the others start only after
    /// every canary host passed. 0: all hosts at once (up to `parallel`).
    pub canary: usize,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            parallel: crate::host::DEFAULT_PARALLEL,
            rollback: true,
            drain: Duration::from_secs(2),
            keep_images: 3,
            consul_token: None,
            events: None,
            cancel: None,
            canary: 0,
        }
    }
}

/// One thing done to one instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub host: String,
    pub app: String,
    pub instance: Option<u32>,
    pub action: Action,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    /// The container that serves the instance now (for create, replace, start, unchanged).
    pub container: Option<String>,
    /// Its published host port, when it has one.
    pub port: Option<u16>,
    pub seconds: f64,
    /// How long the new container took to pass its health check (create, replace, start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_seconds: Option<f64>,
}

/// The instance that failed a deploy.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Failure {
    pub host: String,
    pub app: String,
    pub instance: Option<u32>,
    pub version: Option<String>,
    pub reason: String,
    /// The last lines of the failed container's output (stderr and stdout).
    pub logs: Vec<String>,
    /// A fault of the host rather than the instance: `connection-lost`, `engine-down` or
    /// `agent-down` (`apply::fault`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<&'static str>,
    /// With a fault: what may be left on the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left: Option<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.fault.is_some() {
            // `h2: connection lost while starting hello#1 (10.200.2.2)`: the reason names the
            // instance already.
            write!(f, "{}: {}", self.host, self.reason)?;
            if let Some(left) = &self.left {
                write!(
                    f,
                    "\n  {left}.\n  Once {} answers again, the next deploy converges it.",
                    self.host
                )?;
            }
            return Ok(());
        }
        let inst = self.instance.map(|i| format!("#{i}")).unwrap_or_default();
        write!(
            f,
            "{}{inst} on {} ({}): {}",
            self.app,
            self.host,
            self.version.as_deref().unwrap_or("?"),
            self.reason
        )?;
        if !self.logs.is_empty() {
            write!(f, "\nlast lines of the container's output:")?;
            for l in &self.logs {
                write!(f, "\n  | {l}")?;
            }
        }
        Ok(())
    }
}

/// A container to start: from an `InstanceSpec` (forward) or from an inspect (rollback).
#[derive(Clone)]
pub(super) struct Launch {
    pub(super) app: String,
    pub(super) instance: u32,
    pub(super) version: String,
    pub(super) name: String,
    pub(super) body: ContainerCreateBody,
    pub(super) image: String,
    /// `(container port, fixed host port or 0)`, when published.
    pub(super) port: Option<(u16, u16)>,
    pub(super) service: Option<ServiceTemplate>,
    pub(super) health: Option<HealthSpec>,
    pub(super) deadline: Duration,
    pub(super) stop_timeout: Duration,
    /// The app's `pm2` key: whether the container's pm2 workers are part of its health gate
    /// (`None`: when its main process is `pm2-runtime`).
    pub(super) pm2: Option<bool>,
    /// How long every pm2 worker must stay online without a restart.
    pub(super) min_healthy: Duration,
    /// Stop the old container before this one starts (a fixed host port, or an accessory,
    /// whose volume two containers must not share).
    pub(super) stop_first: bool,
}

/// A Consul registration without its per-container ID and port.
#[derive(Clone)]
pub(super) struct ServiceTemplate {
    pub(super) base_id: String,
    pub(super) name: String,
    pub(super) tags: Vec<String>,
    pub(super) meta: BTreeMap<String, String>,
    pub(super) address: String,
}

/// What was started.
#[derive(Clone)]
pub(super) struct Started {
    pub(super) id: String,
    pub(super) port: Option<u16>,
    pub(super) registration: Option<String>,
    /// How long its health check took to pass, when one was waited for.
    pub(super) healthy_after: Option<Duration>,
}

/// Enough to put an old container back.
#[derive(Clone)]
pub(super) struct Undo {
    pub(super) host: usize,
    pub(super) launch: Launch,
    /// The container and registration that replaced it.
    pub(super) new: Started,
    pub(super) new_version: String,
}

pub use crate::identity::names::registration_id;

pub(super) struct Host<'a> {
    pub(super) index: usize,
    pub(super) session: &'a HostSession,
    pub(super) docker: Docker,
    pub(super) consul: Option<ConsulClient>,
    /// This host's part of the plan: everything apply does here.
    pub(super) plan: &'a HostPlan,
    /// The Docker bridge gateway, read once per host when a container needs it.
    pub(super) gateway: tokio::sync::OnceCell<String>,
}

pub(super) struct Ctx<'a> {
    pub(super) plan: &'a Plan,
    pub(super) opts: &'a ApplyOptions,
    /// Which credentials go with which pull.
    pub(super) pull_auth: PullAuth,
    pub(super) stop: AtomicBool,
    /// Stopped by `opts.cancel` (no rollback then).
    pub(super) cancelled: AtomicBool,
    pub(super) steps: Mutex<Vec<Step>>,
    pub(super) failures: Mutex<Vec<Failure>>,
    pub(super) undo: Mutex<Vec<Undo>>,
    pub(super) images_removed: Mutex<usize>,
    /// What each instance (host index, `app#n`) is doing, for a fault's report.
    pub(super) phases: Mutex<HashMap<(usize, String), Phase>>,
    /// Hosts whose SSH connection was lost (no rollback is tried there).
    pub(super) lost: Mutex<HashSet<usize>>,
    /// The edges' upstreams, when the environment has public routes (set up before the
    /// rollout).
    pub(super) edge: tokio::sync::OnceCell<crate::edge::sync::EdgeSync>,
}

impl Ctx<'_> {
    pub(super) fn emit(&self, event: ApplyEvent) {
        if let Some(e) = &self.opts.events {
            e(&event);
        }
    }
    pub(super) fn app(&self, name: &str) -> Option<&AppRollout> {
        self.plan.context.app(name)
    }
    /// Instance `tag` (`app#n`) on `h` is now doing `phase`.
    pub(super) fn set_phase(&self, h: &Host<'_>, tag: &str, phase: Phase) {
        self.phases
            .lock()
            .unwrap()
            .insert((h.index, tag.to_string()), phase);
    }
    pub(super) fn phase_of(&self, h: &Host<'_>, tag: &str) -> Phase {
        self.phases
            .lock()
            .unwrap()
            .get(&(h.index, tag.to_string()))
            .cloned()
            .unwrap_or(Phase::Starting)
    }
}

impl Launch {
    /// `app#n`, as progress lines and reports name an instance.
    pub(super) fn tag(&self) -> String {
        format!("{}#{}", self.app, self.instance)
    }
}

/// What an instance's rollout was doing, for a report of a fault in the middle of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Phase {
    /// Pulling `image` before anything changes on the host.
    Pulling { image: String },
    /// Creating and starting the new container, registering it, waiting for its health gate.
    Starting,
    /// The new container passed; the old one is deregistered and drained.
    Draining,
    /// Stopping and removing the old container.
    StoppingOld,
}

impl Phase {
    /// `while …` for `tag` (`hello#1`): `starting hello#1`.
    pub(super) fn doing(&self, tag: &str) -> String {
        match self {
            Phase::Pulling { image } => format!("pulling {image} for {tag}"),
            Phase::Starting => format!("starting {tag}"),
            Phase::Draining => format!("draining the old container of {tag}"),
            Phase::StoppingOld => format!("stopping the old container of {tag}"),
        }
    }

    /// What may be on `host` after a fault in this phase (crash-safe order: `deploy.rs`).
    pub(super) fn left(&self, host: &str, tag: &str) -> String {
        match self {
            Phase::Pulling { .. } => format!("nothing of {tag} was changed on {host}"),
            Phase::Starting => format!(
                "{host} may run a new container for {tag} beside the old one, which was not \
                 touched and keeps serving; the next deploy health-checks the new one before \
                 it removes either"
            ),
            Phase::Draining | Phase::StoppingOld => format!(
                "the new container of {tag} on {host} passed its health check and serves; the \
                 old one may still run, deregistered, until the next deploy removes it"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_ids_carry_the_container() {
        assert_eq!(
            registration_id("hello-production-hello-h1-1", "0123456789abcdef0123"),
            "hello-production-hello-h1-1-0123456789ab"
        );
        assert_eq!(registration_id("b", "abc"), "b-abc");
    }

    #[test]
    fn failure_names_app_host_instance_and_logs() {
        let f = Failure {
            host: "h2".into(),
            app: "hello".into(),
            instance: Some(1),
            version: Some("v3".into()),
            reason: "health check failed".into(),
            logs: vec!["boom".into()],
            ..Default::default()
        };
        let s = f.to_string();
        assert!(s.starts_with("hello#1 on h2 (v3): health check failed"));
        assert!(s.contains("  | boom"));
    }

    #[test]
    fn a_host_fault_reads_as_the_host_then_what_is_left() {
        let f = Failure {
            host: "h2".into(),
            app: "hello".into(),
            instance: Some(1),
            reason: "connection lost while starting hello#1 (10.200.2.2)".into(),
            fault: Some("connection-lost"),
            left: Some("h2 may run a new container".into()),
            ..Default::default()
        };
        let s = f.to_string();
        assert!(
            s.starts_with("h2: connection lost while starting hello#1 (10.200.2.2)\n"),
            "{s}"
        );
        assert!(s.contains("the next deploy converges it"), "{s}");
    }
}
