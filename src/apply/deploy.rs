//! The apply engine: execute a `Plan` on open host sessions, health-gated, with rollback.
//!
//! Per host (hosts in parallel, bounded), app by app in manifest order, `batch` instances at
//! once. A **replace** (auto port) is:
//! pull → create + start the new container beside the old one (its name carries the version) →
//! register it in Consul under its *own* ID (`<base id>-<container id>`) → wait until its check
//! passes → deregister the old registration → drain → stop the old container (SIGTERM,
//! `stop_timeout`) → remove it. With a fixed host port the old one is deregistered, drained
//! and stopped first (the port is taken), and started again if the new one fails.
//!
//! Crash safety: at every point of that order an instance is served by the old container, the
//! new one, or both, and each registration points at a running container. A deploy killed
//! half-way leaves at most an extra container or registration per instance, which the next plan
//! sees (duplicates are matched by labels and Meta) and the next apply converges.
//!
//! Failure: the new container is stopped, removed and deregistered (the old one was never
//! touched), every other host finishes the instance it is on and stops, and the instances this
//! deploy already replaced are rolled back by the same procedure, from an `inspect` of the old
//! container taken just before it was removed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, ListImagesOptions,
    LogsOptions, RemoveContainerOptions, RemoveImageOptions, StopContainerOptions,
};
use futures_util::StreamExt;
use serde::Serialize;

use super::container::create_body;
use super::health::{self, Unhealthy};
use crate::consul::{ConsulClient, ServiceRegistration};
use crate::desired::{DesiredApp, DesiredHost, DesiredState, HealthSpec, InstanceSpec};
use crate::errors::chain;
use crate::host::HostSession;
use crate::labels;
use crate::observe::{ObservedHost, ObservedService, ObservedState};
use crate::plan::fields::{FIELDS_LABEL, label_value};
use crate::plan::{Action, HostPlan, InstanceChange, Plan, ServiceAction};

/// Progress lines: (host, message).
pub type Events = Arc<dyn Fn(&str, &str) + Send + Sync>;

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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub host: String,
    pub app: String,
    pub instance: Option<u32>,
    pub version: Option<String>,
    pub reason: String,
    /// The last lines of the failed container's output (stderr and stdout).
    pub logs: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

/// What an apply did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub steps: Vec<Step>,
    /// Every instance that failed (normally one: the others stop after it).
    pub failures: Vec<Failure>,
    /// Instances returned to their old version after a failure.
    pub rolled_back: Vec<Step>,
    pub rollback_errors: Vec<String>,
    pub kv: super::kv::KvOutcome,
    pub images_removed: usize,
    pub seconds: f64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Why apply could not even start.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("host {host}: {cause}")]
    Host { host: String, cause: String },
    #[error(transparent)]
    Kv(#[from] super::kv::KvError),
    #[error("registry credentials: {0}")]
    Registry(String),
}

/// A container to start: from an `InstanceSpec` (forward) or from an inspect (rollback).
#[derive(Clone)]
struct Launch {
    app: String,
    instance: u32,
    version: String,
    name: String,
    body: ContainerCreateBody,
    image: String,
    /// `(container port, fixed host port or 0)`, when published.
    port: Option<(u16, u16)>,
    service: Option<ServiceTemplate>,
    health: Option<HealthSpec>,
    deadline: Duration,
    stop_timeout: Duration,
}

/// A Consul registration without its per-container ID and port.
#[derive(Clone)]
struct ServiceTemplate {
    base_id: String,
    name: String,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
    address: String,
}

/// What was started.
#[derive(Clone)]
struct Started {
    id: String,
    port: Option<u16>,
    registration: Option<String>,
    /// How long its health check took to pass, when one was waited for.
    healthy_after: Option<Duration>,
}

/// Enough to put an old container back.
#[derive(Clone)]
struct Undo {
    host: usize,
    launch: Launch,
    /// The container and registration that replaced it.
    new: Started,
    new_version: String,
}

/// The registration ID of one container of an instance.
pub fn registration_id(base: &str, container_id: &str) -> String {
    format!("{base}-{}", &container_id[..container_id.len().min(12)])
}

struct Host<'a> {
    index: usize,
    session: &'a HostSession,
    docker: Docker,
    consul: Option<ConsulClient>,
    desired: &'a DesiredHost,
    observed: &'a ObservedHost,
    plan: &'a HostPlan,
}

struct Ctx<'a> {
    desired: &'a DesiredState,
    opts: &'a ApplyOptions,
    creds: Option<DockerCredentials>,
    stop: AtomicBool,
    /// Stopped by `opts.cancel` (no rollback then).
    cancelled: AtomicBool,
    steps: Mutex<Vec<Step>>,
    failures: Mutex<Vec<Failure>>,
    undo: Mutex<Vec<Undo>>,
    images_removed: Mutex<usize>,
}

impl Ctx<'_> {
    fn emit(&self, host: &str, msg: &str) {
        if let Some(e) = &self.opts.events {
            e(host, msg);
        }
    }
    fn app(&self, name: &str) -> Option<&DesiredApp> {
        self.desired.apps.iter().find(|a| a.name == name)
    }
}

/// A Consul client for a host's agent, through its session.
pub async fn consul_for(
    session: &HostSession,
    desired: &DesiredState,
    token: Option<String>,
) -> Result<Option<ConsulClient>, String> {
    let Some(c) = &desired.consul else {
        return Ok(None);
    };
    let url = session
        .consul_url(&c.address)
        .await
        .map_err(|e| e.to_string())?;
    let client = ConsulClient::new(&url, token, c.datacenter.clone())
        .map_err(|e| e.to_string())?
        .with_target(format!("{} (agent {})", session.target().name, c.address));
    Ok(Some(client))
}

/// Apply `plan` (computed from `desired` and `observed`) through `sessions` (one per desired
/// host, in order). KV first, then every host; on a failure, roll back unless told not to.
pub async fn apply(
    desired: &DesiredState,
    observed: &ObservedState,
    plan: &Plan,
    sessions: &[&HostSession],
    opts: &ApplyOptions,
) -> Result<Report, ApplyError> {
    let t0 = Instant::now();
    let creds = match &desired.registry {
        Some(r) => crate::registry::credentials(r)
            .map_err(|e| ApplyError::Registry(e.to_string()))?
            .map(|c| DockerCredentials {
                username: Some(c.username.clone()),
                password: Some(c.password().to_string()),
                serveraddress: Some(r.server.clone()),
                ..Default::default()
            }),
        None => None,
    };
    let ctx = Ctx {
        desired,
        opts,
        creds,
        stop: AtomicBool::new(false),
        cancelled: AtomicBool::new(false),
        steps: Mutex::new(Vec::new()),
        failures: Mutex::new(Vec::new()),
        undo: Mutex::new(Vec::new()),
        images_removed: Mutex::new(0),
    };

    // Connect each host's engine and agent.
    let mut hosts = Vec::new();
    for (index, dh) in desired.hosts.iter().enumerate() {
        let name = &dh.target.name;
        let session = *sessions
            .iter()
            .find(|s| &s.target().name == name)
            .ok_or_else(|| ApplyError::Host {
                host: name.clone(),
                cause: "no session".into(),
            })?;
        let docker = session.docker().await.map_err(|e| ApplyError::Host {
            host: name.clone(),
            cause: e.to_string(),
        })?;
        let consul = consul_for(session, desired, opts.consul_token.clone())
            .await
            .map_err(|cause| ApplyError::Host {
                host: name.clone(),
                cause,
            })?;
        let observed = observed
            .hosts
            .iter()
            .find(|h| &h.name == name)
            .ok_or_else(|| ApplyError::Host {
                host: name.clone(),
                cause: "not observed".into(),
            })?;
        let hp = plan
            .hosts
            .iter()
            .find(|h| &h.name == name)
            .ok_or_else(|| ApplyError::Host {
                host: name.clone(),
                cause: "not in the plan".into(),
            })?;
        hosts.push(Host {
            index,
            session,
            docker,
            consul,
            desired: dh,
            observed,
            plan: hp,
        });
    }

    // KV before containers: new instances may read their config when they start.
    let mut kv = super::kv::KvOutcome::default();
    if let Some(c) = hosts.iter().find_map(|h| h.consul.as_ref())
        && plan
            .kv
            .iter()
            .any(|k| k.action != crate::plan::KvAction::Unchanged)
    {
        kv = super::kv::apply(c, desired, &plan.kv).await?;
        ctx.emit("kv", &format!("{} put, {} deleted", kv.put, kv.deleted));
    }

    futures_util::stream::iter(hosts.iter())
        .map(|h| run_host(&ctx, h))
        .buffer_unordered(opts.parallel.max(1))
        .collect::<Vec<()>>()
        .await;

    let mut report = Report {
        kv,
        ..Default::default()
    };
    report.failures = std::mem::take(&mut *ctx.failures.lock().unwrap());
    if !report.failures.is_empty() && opts.rollback && !ctx.cancelled.load(Ordering::SeqCst) {
        let undo = std::mem::take(&mut *ctx.undo.lock().unwrap());
        let (done, errors) = roll_back(&ctx, &hosts, undo).await;
        report.rolled_back = done;
        report.rollback_errors = errors;
    }
    report.steps = std::mem::take(&mut *ctx.steps.lock().unwrap());
    report.images_removed = *ctx.images_removed.lock().unwrap();
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// The services fleet has registered on a host for one instance slot.
fn slot_registrations<'a>(
    oh: &'a ObservedHost,
    app: &str,
    instance: u32,
) -> Vec<&'a ObservedService> {
    let ma = labels::meta_key(labels::APP);
    let mi = labels::meta_key(labels::INSTANCE);
    oh.services
        .iter()
        .flatten()
        .filter(|s| {
            s.meta.get(&ma).map(String::as_str) == Some(app)
                && s.meta.get(&mi).map(String::as_str) == Some(instance.to_string().as_str())
        })
        .collect()
}

fn launch_for(d: &DesiredState, host: &DesiredHost, spec: &InstanceSpec) -> Result<Launch, String> {
    let mut spec = spec.clone();
    spec.container
        .labels
        .insert(FIELDS_LABEL.to_string(), label_value(&spec.container));
    let body =
        create_body(&spec, &|r| crate::observe::read_secret(r).ok()).map_err(|e| e.to_string())?;
    let app = d.apps.iter().find(|a| a.name == spec.app);
    Ok(Launch {
        app: spec.app.clone(),
        instance: spec.instance,
        version: spec.version.clone(),
        name: spec.container_name(&d.project, &d.environment),
        image: spec.container.image.clone(),
        body,
        port: spec.container.ports.first().map(|p| (p.container, p.host)),
        service: spec.service.as_ref().map(|s| ServiceTemplate {
            base_id: s.id.clone(),
            name: s.name.clone(),
            tags: s.tags.clone(),
            meta: s.meta.clone(),
            address: if s.address.is_empty() {
                host.target.address.clone()
            } else {
                s.address.clone()
            },
        }),
        health: spec.container.health.clone(),
        deadline: app
            .map(|a| a.health_deadline)
            .unwrap_or(Duration::from_secs(60)),
        stop_timeout: spec.container.stop_timeout,
    })
}

async fn run_host(ctx: &Ctx<'_>, h: &Host<'_>) {
    let host = &h.desired.target.name;
    // Instance changes per app, in manifest order.
    let mut per_app: Vec<(&str, Vec<&InstanceChange>)> = Vec::new();
    let mut leftovers: Vec<&InstanceChange> = Vec::new();
    for a in &ctx.desired.apps {
        let mine: Vec<&InstanceChange> = h
            .plan
            .instances
            .iter()
            .filter(|c| c.app == a.name && c.desired.is_some())
            .collect();
        if !mine.is_empty() {
            per_app.push((a.name.as_str(), mine));
        }
    }
    for c in &h.plan.instances {
        if c.desired.is_none() {
            leftovers.push(c);
        }
    }
    for (app, changes) in per_app {
        let batch = ctx.app(app).map(|a| a.batch.max(1)).unwrap_or(1) as usize;
        for chunk in changes.chunks(batch) {
            if let Some(reason) = ctx.opts.cancel.as_ref().and_then(|c| c()) {
                if !ctx.cancelled.swap(true, Ordering::SeqCst) {
                    let c = chunk[0];
                    ctx.failures.lock().unwrap().push(Failure {
                        host: host.clone(),
                        app: app.to_string(),
                        instance: c.instance,
                        version: c.desired.as_ref().map(|d| d.version.clone()),
                        reason: format!("stopped before this instance: {reason}"),
                        logs: Vec::new(),
                    });
                }
                ctx.stop.store(true, Ordering::SeqCst);
                ctx.emit(host, &format!("stopping: {reason}"));
                return;
            }
            if ctx.stop.load(Ordering::SeqCst) {
                ctx.emit(host, "stopping: another instance failed");
                return;
            }
            let results = futures_util::future::join_all(
                chunk.iter().map(|c| run_instance(ctx, h, c, &leftovers)),
            )
            .await;
            if results.iter().any(|r| !r) {
                ctx.stop.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
    // What is no longer desired here: deregister, drain, stop, remove.
    let mut gone = Vec::new();
    let mut regs = Vec::new();
    for c in &leftovers {
        let Some(cur) = &c.current else { continue };
        // Duplicates of a desired instance were handled with that instance.
        if c.instance.is_some()
            && h.desired
                .instances
                .iter()
                .any(|i| i.app == c.app && Some(i.instance) == c.instance)
        {
            continue;
        }
        gone.push((cur.id.clone(), c.app.clone(), c.instance));
    }
    for s in &h.plan.services {
        if s.action == ServiceAction::Deregister {
            regs.push(s.id.clone());
        }
    }
    if !gone.is_empty() || !regs.is_empty() {
        let t = Instant::now();
        let ids: Vec<String> = gone.iter().map(|g| g.0.clone()).collect();
        retire(ctx, h, &ids, &regs, Duration::from_secs(10)).await;
        for (id, app, instance) in gone {
            ctx.emit(host, &format!("{app}#{} removed", instance.unwrap_or(0)));
            ctx.steps.lock().unwrap().push(Step {
                host: host.clone(),
                app,
                instance,
                action: Action::Remove,
                from_version: None,
                to_version: None,
                container: Some(id[..12.min(id.len())].to_string()),
                port: None,
                seconds: t.elapsed().as_secs_f64(),
                health_seconds: None,
            });
        }
    }
    if !ctx.stop.load(Ordering::SeqCst) {
        let n = prune_images(ctx, h).await;
        *ctx.images_removed.lock().unwrap() += n;
    }
}

/// One desired instance (and its duplicates). False when it failed.
async fn run_instance(
    ctx: &Ctx<'_>,
    h: &Host<'_>,
    c: &InstanceChange,
    leftovers: &[&InstanceChange],
) -> bool {
    let host = &h.desired.target.name;
    let Some(instance) = c.instance else {
        return true;
    };
    let Some(spec) = h
        .desired
        .instances
        .iter()
        .find(|i| i.app == c.app && i.instance == instance)
    else {
        return true;
    };
    let t = Instant::now();
    let tag = format!("{}#{instance}", c.app);
    let launch = match launch_for(ctx.desired, h.desired, spec) {
        Ok(l) => l,
        Err(reason) => {
            fail(ctx, host, spec, reason, Vec::new());
            return false;
        }
    };
    let dups: Vec<String> = leftovers
        .iter()
        .filter(|l| l.app == c.app && l.instance == Some(instance))
        .filter_map(|l| l.current.as_ref().map(|r| r.id.clone()))
        .collect();
    let slot_regs: Vec<String> = slot_registrations(h.observed, &c.app, instance)
        .into_iter()
        .map(|s| s.id.clone())
        .collect();
    let service_unchanged = h
        .plan
        .services
        .iter()
        .filter(|s| s.app == c.app && s.instance == Some(instance))
        .all(|s| s.action == ServiceAction::Unchanged);

    let result: Result<Started, (String, Vec<String>)> = match c.action {
        Action::Create => {
            ctx.emit(host, &format!("{tag} create {}", spec.version));
            launch_new(ctx, h, &launch, &[]).await
        }
        Action::Replace => {
            let old = c
                .current
                .as_ref()
                .expect("a replace has a current container");
            ctx.emit(
                host,
                &format!(
                    "{tag} replace {} -> {}",
                    old.version.as_deref().unwrap_or("?"),
                    spec.version
                ),
            );
            replace(ctx, h, &launch, &old.id, &slot_regs, &spec.version).await
        }
        Action::Start | Action::Unchanged => {
            let cur = c.current.as_ref().expect("start/unchanged has a container");
            if c.action == Action::Start {
                ctx.emit(host, &format!("{tag} start"));
                if let Err(e) = h.docker.start_container(&cur.id, None).await {
                    let logs = tail_logs(&h.docker, &cur.id).await;
                    fail(ctx, host, spec, format!("starting: {}", chain(&e)), logs);
                    return false;
                }
            }
            if c.action == Action::Start || !service_unchanged || !dups.is_empty() {
                converge_registration(ctx, h, &launch, &cur.id, &slot_regs).await
            } else {
                Ok(Started {
                    id: cur.id.clone(),
                    port: None,
                    registration: None,
                    healthy_after: None,
                })
            }
        }
        Action::Remove => Ok(Started {
            id: String::new(),
            port: None,
            registration: None,
            healthy_after: None,
        }),
    };
    match result {
        Ok(started) => {
            if !dups.is_empty() {
                let regs: Vec<String> = slot_regs
                    .iter()
                    .filter(|r| Some(*r) != started.registration.as_ref())
                    .cloned()
                    .collect();
                retire(ctx, h, &dups, &regs, launch.stop_timeout).await;
                ctx.emit(host, &format!("{tag} removed {} duplicate(s)", dups.len()));
            }
            if c.action != Action::Unchanged || !dups.is_empty() {
                ctx.emit(
                    host,
                    &format!(
                        "{tag} {} ({:.1}s{})",
                        match c.action {
                            Action::Create => "created",
                            Action::Replace => "replaced",
                            Action::Start => "started",
                            _ => "converged",
                        },
                        t.elapsed().as_secs_f64(),
                        started
                            .healthy_after
                            .map(|d| format!(", healthy after {:.1}s", d.as_secs_f64()))
                            .unwrap_or_default()
                    ),
                );
            }
            ctx.steps.lock().unwrap().push(Step {
                host: host.clone(),
                app: c.app.clone(),
                instance: Some(instance),
                action: c.action,
                from_version: c.current.as_ref().and_then(|r| r.version.clone()),
                to_version: Some(spec.version.clone()),
                container: Some(started.id[..12.min(started.id.len())].to_string()),
                port: started.port,
                seconds: t.elapsed().as_secs_f64(),
                health_seconds: started.healthy_after.map(|d| d.as_secs_f64()),
            });
            true
        }
        Err((reason, logs)) => {
            ctx.emit(host, &format!("{tag} FAILED: {reason}"));
            fail(ctx, host, spec, reason, logs);
            false
        }
    }
}

fn fail(ctx: &Ctx<'_>, host: &str, spec: &InstanceSpec, reason: String, logs: Vec<String>) {
    ctx.stop.store(true, Ordering::SeqCst);
    ctx.failures.lock().unwrap().push(Failure {
        host: host.to_string(),
        app: spec.app.clone(),
        instance: Some(spec.instance),
        version: Some(spec.version.clone()),
        reason,
        logs,
    });
}

/// Replace `old` by `launch`. Records how to undo it.
async fn replace(
    ctx: &Ctx<'_>,
    h: &Host<'_>,
    launch: &Launch,
    old: &str,
    old_regs: &[String],
    new_version: &str,
) -> Result<Started, (String, Vec<String>)> {
    // How to put the old one back, read before anything changes.
    let undo_launch = match old_launch(h, launch, old).await {
        Ok(l) => Some(l),
        Err(e) => {
            ctx.emit(
                &h.desired.target.name,
                &format!("cannot record the old container for rollback: {e}"),
            );
            None
        }
    };
    let fixed = matches!(launch.port, Some((_, p)) if p != 0);
    let started = if fixed {
        // The port is taken by the old container: deregister, drain, stop it first.
        deregister_all(h, old_regs).await;
        if !old_regs.is_empty() {
            tokio::time::sleep(ctx.opts.drain).await;
        }
        let _ = stop(h, old, launch.stop_timeout).await;
        match launch_new(ctx, h, launch, &[old.to_string()]).await {
            Ok(s) => s,
            Err(e) => {
                // Put the old one back in service.
                if let Some(ul) = &undo_launch {
                    let _ = h.docker.start_container(old, None).await;
                    let _ = converge_registration(ctx, h, ul, old, &[]).await;
                }
                return Err(e);
            }
        }
    } else {
        let s = launch_new(ctx, h, launch, &[old.to_string()]).await?;
        let regs: Vec<String> = old_regs
            .iter()
            .filter(|r| Some(*r) != s.registration.as_ref())
            .cloned()
            .collect();
        retire(ctx, h, &[], &regs, launch.stop_timeout).await;
        let _ = stop(h, old, launch.stop_timeout).await;
        s
    };
    let _ = h
        .docker
        .remove_container(
            old,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    if let Some(ul) = undo_launch {
        ctx.undo.lock().unwrap().push(Undo {
            host: h.index,
            launch: ul,
            new: started.clone(),
            new_version: new_version.to_string(),
        });
    }
    Ok(started)
}

/// A `Launch` that recreates container `old` as it is (for rollback).
async fn old_launch(h: &Host<'_>, like: &Launch, old: &str) -> Result<Launch, String> {
    let i = h
        .docker
        .inspect_container(old, None)
        .await
        .map_err(|e| chain(&e))?;
    let config = i.config.ok_or("no config in the inspect")?;
    let mut body: ContainerCreateBody =
        serde_json::from_value(serde_json::to_value(&config).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    body.host_config = i.host_config;
    body.hostname = None;
    let l = config.labels.unwrap_or_default();
    let version = l.get(labels::VERSION).cloned().unwrap_or_default();
    let spec = l.get(labels::SPEC).cloned().unwrap_or_default();
    let service = like.service.clone().map(|mut s| {
        s.meta
            .insert(labels::meta_key(labels::VERSION), version.clone());
        s.meta.insert(labels::meta_key(labels::SPEC), spec.clone());
        s
    });
    Ok(Launch {
        name: i
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image: config.image.unwrap_or_default(),
        body,
        version,
        service,
        ..like.clone()
    })
}

async fn deregister_all(h: &Host<'_>, regs: &[String]) {
    if let Some(c) = &h.consul {
        for r in regs {
            let _ = c.deregister_service(r).await;
        }
    }
}

/// Deregister `regs`, wait the drain when any was deregistered, stop and remove `containers`.
async fn retire(
    ctx: &Ctx<'_>,
    h: &Host<'_>,
    containers: &[String],
    regs: &[String],
    stop_timeout: Duration,
) {
    deregister_all(h, regs).await;
    if !regs.is_empty() && h.consul.is_some() {
        tokio::time::sleep(ctx.opts.drain).await;
    }
    for c in containers {
        let _ = stop(h, c, stop_timeout).await;
        let _ = h
            .docker
            .remove_container(
                c,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }
}

async fn stop(h: &Host<'_>, id: &str, t: Duration) -> Result<(), String> {
    h.docker
        .stop_container(
            id,
            Some(StopContainerOptions {
                t: Some(t.as_secs() as i32),
                signal: None,
            }),
        )
        .await
        .map_err(|e| chain(&e))
}

async fn tail_logs(docker: &Docker, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut s = docker.logs(
        id,
        Some(LogsOptions {
            stdout: true,
            stderr: true,
            tail: "20".into(),
            ..Default::default()
        }),
    );
    while let Some(Ok(chunk)) = s.next().await {
        let text = String::from_utf8_lossy(&chunk.into_bytes()).to_string();
        out.extend(text.lines().map(str::to_string));
    }
    let n = out.len();
    out.split_off(n.saturating_sub(20))
}

/// Pull when the host lacks the image.
async fn pull(ctx: &Ctx<'_>, h: &Host<'_>, image: &str) -> Result<(), String> {
    if h.docker.inspect_image(image).await.is_ok() {
        return Ok(());
    }
    ctx.emit(&h.desired.target.name, &format!("pull {image}"));
    let mut s = h.docker.create_image(
        Some(CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        }),
        None,
        ctx.creds.clone(),
    );
    while let Some(item) = s.next().await {
        item.map_err(|e| format!("pulling {image}: {}", chain(&e)))?;
    }
    Ok(())
}

/// Create and start a container, register it, wait until healthy. On failure everything it
/// did is undone (the container stopped and removed, its registration removed) and the error
/// carries the container's last output lines. `protect`: containers a name clash must not remove.
async fn launch_new(
    ctx: &Ctx<'_>,
    h: &Host<'_>,
    l: &Launch,
    protect: &[String],
) -> Result<Started, (String, Vec<String>)> {
    let plain = |s: String| (s, Vec::new());
    pull(ctx, h, &l.image).await.map_err(plain)?;
    let mut name = l.name.clone();
    let mut tries = 0;
    let id = loop {
        tries += 1;
        match h
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                l.body.clone(),
            )
            .await
        {
            Ok(r) => break r.id,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) if tries < 3 => {
                // The name is taken: by the container being replaced (same version, other
                // spec) -> another name; by a leftover of a killed deploy -> remove it.
                let existing = h.docker.inspect_container(&name, None).await.ok();
                let eid = existing.and_then(|e| e.id).unwrap_or_default();
                if protect.contains(&eid) {
                    name = format!("{}-{}", l.name, &uuid_ish()[..6]);
                } else {
                    let _ = h
                        .docker
                        .remove_container(
                            &name,
                            Some(RemoveContainerOptions {
                                force: true,
                                ..Default::default()
                            }),
                        )
                        .await;
                }
            }
            Err(e) => return Err(plain(format!("creating {name}: {}", chain(&e)))),
        }
    };
    let cleanup = |reg: Option<String>| {
        let id = id.clone();
        async move {
            let logs = tail_logs(&h.docker, &id).await;
            if let (Some(c), Some(r)) = (&h.consul, reg) {
                let _ = c.deregister_service(&r).await;
            }
            let _ = h
                .docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await;
            logs
        }
    };
    if let Err(e) = h.docker.start_container(&id, None).await {
        let logs = cleanup(None).await;
        return Err((format!("starting {name}: {}", chain(&e)), logs));
    }
    match register_and_wait(ctx, h, l, &id).await {
        Ok(s) => Ok(s),
        Err((reason, reg)) => {
            let logs = cleanup(reg).await;
            Err((reason, logs))
        }
    }
}

fn uuid_ish() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:08x}", (n as u64) ^ (std::process::id() as u64) << 32)
}

/// The host port Docker gave `container_port` of a running container.
async fn published_port(docker: &Docker, id: &str, container_port: u16) -> Result<u16, String> {
    let i = docker
        .inspect_container(id, None)
        .await
        .map_err(|e| chain(&e))?;
    let ports = i.network_settings.and_then(|n| n.ports).unwrap_or_default();
    ports
        .get(&format!("{container_port}/tcp"))
        .cloned()
        .flatten()
        .unwrap_or_default()
        .iter()
        .find_map(|b| b.host_port.as_deref().and_then(|p| p.parse().ok()))
        .ok_or_else(|| format!("port {container_port}/tcp is not published"))
}

/// Register a running container (its real port) and wait until its health gate passes.
/// The error carries the registration to remove.
async fn register_and_wait(
    ctx: &Ctx<'_>,
    h: &Host<'_>,
    l: &Launch,
    id: &str,
) -> Result<Started, (String, Option<String>)> {
    let _ = ctx;
    let port = match l.port {
        Some((cp, _)) => Some(
            published_port(&h.docker, id, cp)
                .await
                .map_err(|e| (e, None))?,
        ),
        None => None,
    };
    if let (Some(consul), Some(svc), Some(port)) = (&h.consul, &l.service, port) {
        let reg_id = registration_id(&svc.base_id, id);
        let reg = ServiceRegistration {
            id: Some(reg_id.clone()),
            name: svc.name.clone(),
            tags: svc.tags.clone(),
            address: Some(svc.address.clone()),
            port: Some(port),
            meta: svc.meta.clone(),
            check: l
                .health
                .as_ref()
                .map(|hs| health::check_definition(hs, &svc.address, port)),
            ..Default::default()
        };
        consul
            .register_service(&reg)
            .await
            .map_err(|e| (format!("registering {reg_id}: {e}"), None))?;
        let waited = if l.health.is_some() {
            health::wait_consul(consul, &reg_id, &h.docker, id, l.deadline).await
        } else {
            health::wait_local(h.session, &h.docker, id, None, None, l.deadline).await
        }
        .map_err(|e| (describe(e), Some(reg_id.clone())))?;
        return Ok(Started {
            id: id.to_string(),
            port: Some(port),
            registration: Some(reg_id),
            healthy_after: Some(waited),
        });
    }
    let waited = health::wait_local(
        h.session,
        &h.docker,
        id,
        l.health.as_ref(),
        port,
        l.deadline,
    )
    .await
    .map_err(|e| (describe(e), None))?;
    Ok(Started {
        id: id.to_string(),
        port,
        registration: None,
        healthy_after: Some(waited),
    })
}

fn describe(e: Unhealthy) -> String {
    format!("health check failed: {e}")
}

/// Make the registration of running container `id` right (real port, current Meta), wait
/// until it passes, then remove the slot's other registrations.
async fn converge_registration(
    ctx: &Ctx<'_>,
    h: &Host<'_>,
    l: &Launch,
    id: &str,
    slot_regs: &[String],
) -> Result<Started, (String, Vec<String>)> {
    match register_and_wait(ctx, h, l, id).await {
        Ok(s) => {
            let others: Vec<String> = slot_regs
                .iter()
                .filter(|r| Some(*r) != s.registration.as_ref())
                .cloned()
                .collect();
            deregister_all(h, &others).await;
            Ok(s)
        }
        Err((reason, _)) => {
            let logs = tail_logs(&h.docker, id).await;
            Err((reason, logs))
        }
    }
}

/// Put back every instance in `undo` (newest first per host), health-gated, hosts in parallel.
async fn roll_back(ctx: &Ctx<'_>, hosts: &[Host<'_>], undo: Vec<Undo>) -> (Vec<Step>, Vec<String>) {
    let mut by_host: HashMap<usize, Vec<Undo>> = HashMap::new();
    for u in undo {
        by_host.entry(u.host).or_default().push(u);
    }
    let results = futures_util::future::join_all(hosts.iter().map(|h| {
        let list = by_host.remove(&h.index).unwrap_or_default();
        async move {
            let mut done = Vec::new();
            let mut errors = Vec::new();
            for u in list.into_iter().rev() {
                let host = &h.desired.target.name;
                let tag = format!("{}#{}", u.launch.app, u.launch.instance);
                ctx.emit(host, &format!("{tag} roll back to {}", u.launch.version));
                let t = Instant::now();
                let regs: Vec<String> = u.new.registration.iter().cloned().collect();
                match replace(ctx, h, &u.launch, &u.new.id, &regs, &u.launch.version).await {
                    Ok(s) => done.push(Step {
                        host: host.clone(),
                        app: u.launch.app.clone(),
                        instance: Some(u.launch.instance),
                        action: Action::Replace,
                        from_version: Some(u.new_version.clone()),
                        to_version: Some(u.launch.version.clone()),
                        container: Some(s.id[..12.min(s.id.len())].to_string()),
                        port: s.port,
                        seconds: t.elapsed().as_secs_f64(),
                        health_seconds: s.healthy_after.map(|d| d.as_secs_f64()),
                    }),
                    Err((e, _)) => errors.push(format!("{tag} on {host}: {e}")),
                }
            }
            (done, errors)
        }
    }))
    .await;
    // The rollback's own undo records are not needed.
    ctx.undo.lock().unwrap().clear();
    let mut done = Vec::new();
    let mut errors = Vec::new();
    for (d, e) in results {
        done.extend(d);
        errors.extend(e);
    }
    (done, errors)
}

/// Remove fleet-built images of this host's apps beyond the newest `keep_images` (never one a
/// container uses). Returns how many were removed.
async fn prune_images(ctx: &Ctx<'_>, h: &Host<'_>) -> usize {
    let keep = ctx.opts.keep_images.max(1);
    let used: std::collections::HashSet<String> = h
        .docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.image_id)
        .collect();
    let mut removed = 0;
    for a in ctx.desired.apps.iter().filter(|a| a.build.is_some()) {
        let filters: HashMap<String, Vec<String>> =
            [("reference".to_string(), vec![a.image.clone()])].into();
        let Ok(mut images) = h
            .docker
            .list_images(Some(ListImagesOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
        else {
            continue;
        };
        images.sort_by_key(|i| std::cmp::Reverse(i.created));
        for img in images.into_iter().skip(keep) {
            if used.contains(&img.id) {
                continue;
            }
            let opts = RemoveImageOptions {
                force: false,
                noprune: false,
                ..Default::default()
            };
            for tag in &img.repo_tags {
                if h.docker
                    .remove_image(tag, Some(opts.clone()), None)
                    .await
                    .is_ok()
                {
                    removed += 1;
                }
            }
        }
    }
    removed
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
        };
        let s = f.to_string();
        assert!(s.starts_with("hello#1 on h2 (v3): health check failed"));
        assert!(s.contains("  | boom"));
    }
}
