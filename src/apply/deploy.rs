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

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use super::container::create_body;
pub use super::context::{ApplyOptions, Cancel, Events, Failure, Step, registration_id};
use super::context::{Ctx, Host, Launch, ServiceTemplate, Started, Undo};
use super::error::{AgentError, EdgeError, LaunchError, LaunchFailure, MissingSecret};
use super::event::ApplyEvent;
use super::fault::{HostFault, Phase, diagnose};
use super::instance::{
    converge_registration, deregister_all, launch_new, old_launch, pull, replace, retire, tail_logs,
};
use super::prune::prune_images;
use super::pull_auth::PullAuth;
use crate::consul::ConsulClient;
use crate::desired::{ConfigOrder, DesiredHost, DesiredState, InstanceSpec};
use crate::errors::chain;
use crate::host::HostSession;
use crate::identity::fields::{FIELDS_LABEL, label_value};
use crate::identity::labels;
use crate::observe::{ContainerState, ObservedHost, ObservedService, ObservedState, short_id};
use crate::plan::{Action, ContainerRef, HostPlan, InstanceChange, Plan, ServiceAction};

/// What an apply did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub steps: Vec<Step>,
    /// Every instance that failed (normally one: the others stop after it).
    pub failures: Vec<Failure>,
    /// Instances returned to their old version after a failure.
    pub rolled_back: Vec<Step>,
    pub rollback_errors: Vec<String>,
    /// Hosts left untouched because a canary host failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_started: Vec<String>,
    pub kv: super::kv::KvOutcome,
    pub images_removed: usize,
    pub seconds: f64,
    /// Time spent waiting for the edges to let go of retired instances (drain evidence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_drain_seconds: Option<f64>,
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

/// A Consul client for a host's agent, through its session.
pub async fn consul_for(
    session: &HostSession,
    desired: &DesiredState,
    token: Option<String>,
) -> Result<Option<ConsulClient>, AgentError> {
    let Some(c) = &desired.consul else {
        return Ok(None);
    };
    let url = session.consul_url(&c.address).await?;
    let client = ConsulClient::new(&url, token, c.datacenter.clone())?.with_target(format!(
        "{} (agent {})",
        session.target().name,
        c.address
    ));
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
    let pull_auth = PullAuth::new(desired.registry.as_ref())
        .map_err(|e| ApplyError::Registry(e.to_string()))?;
    let ctx = Ctx {
        desired,
        opts,
        pull_auth,
        stop: AtomicBool::new(false),
        cancelled: AtomicBool::new(false),
        steps: Mutex::new(Vec::new()),
        failures: Mutex::new(Vec::new()),
        undo: Mutex::new(Vec::new()),
        images_removed: Mutex::new(0),
        phases: Mutex::new(HashMap::new()),
        lost: Mutex::new(HashSet::new()),
        edge: tokio::sync::OnceCell::new(),
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
            .map_err(|e| ApplyError::Host {
                host: name.clone(),
                cause: e.to_string(),
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
            gateway: Default::default(),
        });
    }

    // The KV writes, one transaction per app, checked against Consul's limits before anything
    // changes.
    let writes = super::kv::writes(desired, observed.kv.as_ref(), &plan.kv)?;
    // KV goes through the first host whose agent is configured.
    let kv_host = hosts.iter().find(|h| h.consul.is_some());
    let consul = kv_host.and_then(|h| h.consul.as_ref());

    // Every image first, on every host, before anything changes: a registry that is down or
    // refuses, or a host lost while pulling, fails the deploy with nothing changed anywhere.
    if !pull_first(&ctx, &hosts, opts.parallel).await {
        return Ok(Report {
            failures: std::mem::take(&mut *ctx.failures.lock().unwrap()),
            seconds: t0.elapsed().as_secs_f64(),
            ..Default::default()
        });
    }

    // The edge: its container on each edge host, this environment's routes (upstreams: the
    // instances passing now), before any instance changes.
    if let Err(e) = setup_edge(&ctx, &hosts, observed).await {
        return Err(ApplyError::Host {
            host: "edge".into(),
            cause: e.to_string(),
        });
    }

    // The config of `first` apps before their containers: new instances read it when they
    // start. A failed write puts back what it wrote and stops the deploy, nothing else changed.
    let mut kv = super::kv::KvOutcome::default();
    let mut written = Vec::new();
    if let Some(c) = consul {
        let first: Vec<_> = writes
            .iter()
            .filter(|w| w.order == ConfigOrder::First)
            .collect();
        if !first.is_empty() {
            match super::kv::write_all(c, &first, &mut kv).await {
                Ok(w) => written = w,
                Err((e, not_restored)) => {
                    for r in not_restored {
                        ctx.emit(ApplyEvent::KvNotRestored {
                            error: r.to_string(),
                        });
                    }
                    return Err(e.into());
                }
            }
            ctx.emit(ApplyEvent::KvWritten {
                put: kv.put,
                deleted: kv.deleted,
            });
        }
    }

    let plans: Vec<&HostPlan> = hosts.iter().map(|h| h.plan).collect();
    let (canary, rest) = canary_waves(&plans, opts.canary);
    let canary: Vec<&Host> = canary.into_iter().map(|i| &hosts[i]).collect();
    let rest: Vec<&Host> = rest.into_iter().map(|i| &hosts[i]).collect();
    let mut not_started = Vec::new();
    if !canary.is_empty() {
        let names: Vec<String> = canary
            .iter()
            .map(|h| h.desired.target.name.clone())
            .collect();
        ctx.emit(ApplyEvent::CanaryFirst {
            hosts: names.clone(),
        });
        run_wave(&ctx, &canary, opts.parallel).await;
        if ctx.stop.load(Ordering::SeqCst) {
            not_started = rest.iter().map(|h| h.desired.target.name.clone()).collect();
            if !not_started.is_empty() {
                // A lost lock stops the canary wave too; that is no verdict on the version.
                ctx.emit(ApplyEvent::CanaryNotStarted {
                    lock_lost: ctx.cancelled.load(Ordering::SeqCst),
                    not_started: not_started.clone(),
                });
            }
        } else if !rest.is_empty() {
            ctx.emit(ApplyEvent::CanaryPassed {
                hosts: names,
                more: rest.len(),
            });
        }
    }
    if not_started.is_empty() {
        run_wave(&ctx, &rest, opts.parallel).await;
    }

    // The config of `last` apps once every instance passed its gate.
    if let Some(c) = consul
        && ctx.failures.lock().unwrap().is_empty()
        && !ctx.stop.load(Ordering::SeqCst)
    {
        let last: Vec<_> = writes
            .iter()
            .filter(|w| w.order == ConfigOrder::Last)
            .collect();
        if !last.is_empty() {
            match super::kv::write_all(c, &last, &mut kv).await {
                Ok(w) => {
                    written.extend(w);
                    ctx.emit(ApplyEvent::KvWritten {
                        put: kv.put,
                        deleted: kv.deleted,
                    });
                }
                Err((e, not_restored)) => {
                    let app = e.app().to_string();
                    let mut reason = e.to_string();
                    for r in not_restored {
                        reason.push_str(&format!("; {r}"));
                    }
                    ctx.failures.lock().unwrap().push(Failure {
                        host: kv_host
                            .map(|h| h.desired.target.name.clone())
                            .unwrap_or_default(),
                        version: desired
                            .apps
                            .iter()
                            .find(|a| a.name == app)
                            .map(|a| a.version.clone()),
                        app,
                        instance: None,
                        reason,
                        logs: Vec::new(),
                        fault: None,
                        left: None,
                    });
                }
            }
        }
    }

    let mut report = Report {
        kv,
        not_started,
        ..Default::default()
    };
    report.failures = std::mem::take(&mut *ctx.failures.lock().unwrap());
    if !report.failures.is_empty() && opts.rollback && !ctx.cancelled.load(Ordering::SeqCst) {
        // The old config first, in one transaction per app: the old containers, which serve
        // everywhere the rollout did not reach, read it at once; then the containers.
        if let Some(c) = consul {
            let (restored, errors) = super::kv::restore_all(c, &written).await;
            report.kv.restored = restored;
            if restored > 0 {
                ctx.emit(ApplyEvent::KvRestored { keys: restored });
            }
            report
                .rollback_errors
                .extend(errors.iter().map(|e| e.to_string()));
        }
        let undo = std::mem::take(&mut *ctx.undo.lock().unwrap());
        let (done, errors) = roll_back(&ctx, &hosts, undo).await;
        report.rolled_back = done;
        report.rollback_errors.extend(errors);
    }
    if let Some(sync) = ctx.edge.get() {
        // Every route to what passes now (new instances in, nothing retired).
        for p in sync.push(None).await {
            ctx.emit(ApplyEvent::EdgeProblem { problem: p });
        }
        report.edge_drain_seconds = Some(sync.drained.lock().unwrap().as_secs_f64());
    }
    report.steps = std::mem::take(&mut *ctx.steps.lock().unwrap());
    report.images_removed = *ctx.images_removed.lock().unwrap();
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// The edge of the environment (`crate::edge::setup`), or, with no public app left, this
/// environment's routes taken off every edge that has them.
async fn setup_edge(
    ctx: &Ctx<'_>,
    hosts: &[Host<'_>],
    observed: &ObservedState,
) -> Result<(), EdgeError> {
    let d = ctx.desired;
    let Some(edge) = &d.edge else {
        let prefix = crate::edge::caddy::owner_prefix(&d.project, &d.environment);
        for h in hosts {
            let owned = observed
                .hosts
                .iter()
                .find(|o| o.name == h.desired.target.name)
                .and_then(|o| o.edge.as_ref())
                .and_then(|e| e.config.as_ref())
                .is_some_and(|c| !crate::edge::caddy::owned_ids(c, &prefix).is_empty());
            if owned {
                let a = crate::edge::Admin::connect(h.session).await?;
                let n = crate::edge::remove_owned(&a, &d.project, &d.environment).await?;
                ctx.emit(ApplyEvent::EdgeRoutesRemoved {
                    host: h.desired.target.name.clone(),
                    routes: n,
                });
            }
        }
        return Ok(());
    };
    let consul = hosts
        .iter()
        .find_map(|h| h.consul.clone())
        .ok_or(EdgeError::NoConsul)?;
    let auth = ctx.pull_auth.for_image(&edge.image)?;
    let sessions: Vec<&HostSession> = hosts.iter().map(|h| h.session).collect();
    let (sync, changes) =
        crate::edge::setup(&d.project, &d.environment, edge, &sessions, consul, auth).await?;
    for (host, c) in changes {
        ctx.emit(ApplyEvent::EdgeChange { host, change: c });
    }
    let _ = ctx.edge.set(sync);
    Ok(())
}

/// Pulls, on each host (up to `parallel` at once), every image it lacks for the instances it
/// will create or replace. False when a pull failed (each failure recorded).
async fn pull_first(ctx: &Ctx<'_>, hosts: &[Host<'_>], parallel: usize) -> bool {
    let ok = futures_util::stream::iter(hosts.iter())
        .map(|h| async move {
            let mut pulled: Vec<&str> = Vec::new();
            for c in &h.plan.instances {
                let (Some(d), Some(instance)) = (&c.desired, c.instance) else {
                    continue;
                };
                if !matches!(c.action, Action::Create | Action::Replace)
                    || pulled.contains(&d.image.as_str())
                {
                    continue;
                }
                pulled.push(d.image.as_str());
                let tag = format!("{}#{instance}", c.app);
                if let Err(e) = pull(ctx, h, &d.image, &tag).await {
                    let reason = format!(
                        "{e}; nothing was changed on any host (does the registry answer, from {}, \
                         with these credentials?)",
                        h.desired.target.name
                    );
                    fail(ctx, h, &c.app, instance, &d.version, reason, Vec::new()).await;
                    return false;
                }
            }
            true
        })
        .buffer_unordered(parallel.max(1))
        .collect::<Vec<bool>>()
        .await;
    ok.into_iter().all(|b| b)
}

/// Every host of a wave at once, up to `parallel`.
async fn run_wave(ctx: &Ctx<'_>, hosts: &[&Host<'_>], parallel: usize) {
    futures_util::stream::iter(hosts.iter())
        .map(|h| run_host(ctx, h))
        .buffer_unordered(parallel.max(1))
        .collect::<Vec<()>>()
        .await;
}

/// Splits hosts (by index) into the canary wave, the first `canary` hosts in manifest order
/// whose plan changes an instance, and the rest. A host with nothing to change proves nothing,
/// so it is no canary.
pub(crate) fn canary_waves(plans: &[&HostPlan], canary: usize) -> (Vec<usize>, Vec<usize>) {
    let mut first = Vec::new();
    let mut rest = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        let changes = p.instances.iter().any(|c| c.action != Action::Unchanged);
        if first.len() < canary && changes {
            first.push(i);
        } else {
            rest.push(i);
        }
    }
    (first, rest)
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

fn launch_for(
    d: &DesiredState,
    host: &DesiredHost,
    spec: &InstanceSpec,
) -> Result<Launch, MissingSecret> {
    let mut spec = spec.clone();
    spec.container
        .labels
        .insert(FIELDS_LABEL.to_string(), label_value(&spec.container));
    let body = create_body(&spec, &|r| crate::manifest::secret::read(r).ok())?;
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
        pm2: app.and_then(|a| a.pm2),
        min_healthy: app
            .map(|a| a.min_healthy)
            .unwrap_or(crate::desired::DEFAULT_MIN_HEALTHY),
        stop_timeout: spec.container.stop_timeout,
        stop_first: spec.container.ports.first().is_some_and(|p| p.host != 0)
            || app.is_some_and(|a| a.accessory),
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
                        ..Default::default()
                    });
                }
                ctx.stop.store(true, Ordering::SeqCst);
                ctx.emit(ApplyEvent::Cancelled {
                    host: host.clone(),
                    reason,
                });
                return;
            }
            if ctx.stop.load(Ordering::SeqCst) {
                ctx.emit(ApplyEvent::Halted { host: host.clone() });
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
            ctx.emit(ApplyEvent::Removed {
                host: host.clone(),
                tag: format!("{app}#{}", instance.unwrap_or(0)),
            });
            ctx.steps.lock().unwrap().push(Step {
                host: host.clone(),
                app,
                instance,
                action: Action::Remove,
                from_version: None,
                to_version: None,
                container: Some(short_id(&id).to_string()),
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
        Err(e) => {
            fail_spec(ctx, h, spec, LaunchError::from(e).to_string(), Vec::new()).await;
            return false;
        }
    };
    let dup_refs: Vec<&ContainerRef> = leftovers
        .iter()
        .filter(|l| l.app == c.app && l.instance == Some(instance))
        .filter_map(|l| l.current.as_ref())
        .collect();
    let dups: Vec<String> = dup_refs.iter().map(|r| r.id.clone()).collect();
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

    let result: Result<Started, LaunchFailure> = match c.action {
        Action::Create => {
            ctx.emit(ApplyEvent::Create {
                host: host.clone(),
                tag: tag.clone(),
                version: spec.version.clone(),
            });
            launch_new(ctx, h, &launch, &[]).await
        }
        Action::Replace => {
            let old = c
                .current
                .as_ref()
                .expect("a replace has a current container");
            ctx.emit(ApplyEvent::Replace {
                host: host.clone(),
                tag: tag.clone(),
                from: old.version.clone(),
                to: spec.version.clone(),
            });
            replace(ctx, h, &launch, &old.id, &slot_regs, &spec.version).await
        }
        Action::Start | Action::Unchanged => {
            let cur = c.current.as_ref().expect("start/unchanged has a container");
            ctx.set_phase(h, &tag, Phase::Starting);
            if c.action == Action::Start {
                ctx.emit(ApplyEvent::Start {
                    host: host.clone(),
                    tag: tag.clone(),
                });
                if let Err(e) = h.docker.start_container(&cur.id, None).await {
                    let logs = tail_logs(&h.docker, &cur.id).await;
                    let error = LaunchError::StartExisting { cause: chain(&e) };
                    fail_spec(ctx, h, spec, error.to_string(), logs).await;
                    return false;
                }
            }
            if c.action == Action::Start || !service_unchanged || !dups.is_empty() {
                match converge_registration(ctx, h, &launch, &cur.id, &slot_regs).await {
                    // A leftover that fails its gate is never promoted over the one that serves.
                    Err(LaunchFailure { error, logs }) if !dups.is_empty() => {
                        let kept = fall_back(ctx, h, &launch, &cur.id, &dup_refs, &slot_regs).await;
                        Err(LaunchFailure {
                            error: LaunchError::FellBack {
                                error: Box::new(error),
                                kept,
                            },
                            logs,
                        })
                    }
                    other => other,
                }
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
                ctx.emit(ApplyEvent::DuplicatesRemoved {
                    host: host.clone(),
                    tag: tag.clone(),
                    count: dups.len(),
                });
            }
            if c.action != Action::Unchanged || !dups.is_empty() {
                ctx.emit(ApplyEvent::Converged {
                    host: host.clone(),
                    tag: tag.clone(),
                    action: c.action,
                    took: t.elapsed(),
                    healthy_after: started.healthy_after,
                });
            }
            ctx.steps.lock().unwrap().push(Step {
                host: host.clone(),
                app: c.app.clone(),
                instance: Some(instance),
                action: c.action,
                from_version: c.current.as_ref().and_then(|r| r.version.clone()),
                to_version: Some(spec.version.clone()),
                container: Some(short_id(&started.id).to_string()),
                port: started.port,
                seconds: t.elapsed().as_secs_f64(),
                health_seconds: started.healthy_after.map(|d| d.as_secs_f64()),
            });
            true
        }
        Err(LaunchFailure { error, logs }) => {
            fail_spec(ctx, h, spec, error.to_string(), logs).await;
            false
        }
    }
}

/// The desired instance in the slot of `kept` (a leftover of a killed deploy: the desired
/// spec, not yet proven) failed its health gate. Put a duplicate that the plan saw running
/// (the container it was to replace) back in charge, health-gated, then remove `kept`. Says
/// what was done.
async fn fall_back(
    ctx: &Ctx<'_>,
    h: &Host<'_>,
    launch: &Launch,
    kept: &str,
    dups: &[&ContainerRef],
    slot_regs: &[String],
) -> String {
    let running = dups
        .iter()
        .filter(|d| d.state == ContainerState::Running.as_str());
    for d in running.map(|d| d.id.as_str()) {
        let Ok(old) = old_launch(h, launch, d).await else {
            continue;
        };
        if converge_registration(ctx, h, &old, d, slot_regs)
            .await
            .is_ok()
        {
            // Its own registration too, which the failed gate may have just made.
            let own: Vec<String> = launch
                .service
                .iter()
                .map(|s| registration_id(&s.base_id, kept))
                .collect();
            deregister_all(h, &own).await;
            retire(ctx, h, &[kept.to_string()], &[], launch.stop_timeout).await;
            return format!(
                "the unproven container {} was removed; {} ({}) keeps serving",
                short_id(kept),
                short_id(d),
                old.version
            );
        }
    }
    "no running container of the slot passes its health check either; both are left".into()
}

/// Records that instance `spec` failed on `h` (see [`fail`]).
async fn fail_spec(
    ctx: &Ctx<'_>,
    h: &Host<'_>,
    spec: &InstanceSpec,
    reason: String,
    logs: Vec<String>,
) {
    fail(
        ctx,
        h,
        &spec.app,
        spec.instance,
        &spec.version,
        reason,
        logs,
    )
    .await;
}

/// Records that instance `app#instance` (to `version`) failed on `h`, and stops the rollout.
/// When the host itself is at fault (SSH lost, engine or agent down), the failure says so and
/// what the instance was doing, instead of the step's own error.
async fn fail(
    ctx: &Ctx<'_>,
    h: &Host<'_>,
    app: &str,
    instance: u32,
    version: &str,
    reason: String,
    logs: Vec<String>,
) {
    ctx.stop.store(true, Ordering::SeqCst);
    let host = &h.desired.target.name;
    let tag = format!("{app}#{instance}");
    let mut f = Failure {
        host: host.clone(),
        app: app.to_string(),
        instance: Some(instance),
        version: Some(version.to_string()),
        reason,
        logs,
        ..Default::default()
    };
    if let Some(fault) = diagnose(h).await {
        let phase = ctx.phase_of(h, &tag);
        tracing::debug!(
            "{host}: {tag} failed ({}); the host is at fault: {fault:?}",
            f.reason
        );
        f.reason = fault.reason(&phase.doing(&tag), &h.desired.target.address);
        f.fault = Some(fault.kind());
        f.left = Some(phase.left(host, &tag));
        if matches!(fault, HostFault::Lost(_)) {
            ctx.lost.lock().unwrap().insert(h.index);
        }
        ctx.emit(ApplyEvent::Failed {
            host: host.clone(),
            tag: None,
            reason: f.reason.clone(),
        });
    } else {
        ctx.emit(ApplyEvent::Failed {
            host: host.clone(),
            tag: Some(tag),
            reason: f.reason.clone(),
        });
    }
    ctx.failures.lock().unwrap().push(f);
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
            let lost = ctx.lost.lock().unwrap().contains(&h.index);
            for u in list.into_iter().rev() {
                let host = &h.desired.target.name;
                let tag = u.launch.tag();
                if lost {
                    errors.push(format!(
                        "{tag} on {host}: not rolled back, the connection to {host} is lost \
                         (it runs {}, healthy; the next deploy converges it)",
                        u.new_version
                    ));
                    continue;
                }
                ctx.emit(ApplyEvent::RollBack {
                    host: host.clone(),
                    tag: tag.clone(),
                    version: u.launch.version.clone(),
                });
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
                        container: Some(short_id(&s.id).to_string()),
                        port: s.port,
                        seconds: t.elapsed().as_secs_f64(),
                        health_seconds: s.healthy_after.map(|d| d.as_secs_f64()),
                    }),
                    Err(e) => errors.push(format!("{tag} on {host}: {e}")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_wave_is_the_first_hosts_with_changes() {
        let d = crate::plan::fixtures::desired();
        let mut o = crate::plan::fixtures::deployed(&d);
        // h1 unchanged, h2 loses a container (so changes), h3 does not exist here.
        o.hosts[1].containers.clear();
        let plan = crate::plan::diff(&d, &o);
        let plans: Vec<&HostPlan> = plan.hosts.iter().collect();
        assert_eq!(canary_waves(&plans, 1), (vec![1], vec![0]));
        assert_eq!(canary_waves(&plans, 0), (vec![], vec![0, 1]));
        assert_eq!(canary_waves(&plans, 5), (vec![1], vec![0]));
    }
}
