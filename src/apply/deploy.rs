//! The apply engine: execute a `Plan` on open host sessions, health-gated, with rollback.
//!
//! Per host (hosts in parallel, bounded), app by app in manifest order, `batch` instances at
//! once, as `plan::rollout` decided. A **replace** beside the old (`StartThenRetire`, an auto
//! port) is:
//! pull → create + start the new container beside the old one (its name carries the version) →
//! register it in Consul under its *own* ID (`<base id>-<container id>`) → wait until its check
//! passes → deregister the old registration → drain → stop the old container (SIGTERM,
//! `stop_timeout`) → remove it. With a fixed host port or an accessory (`RetireThenStart`)
//! the old one is deregistered, drained and stopped first (the port is taken), and started again if the new one fails.
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
use std::time::Instant;

use futures_util::StreamExt;
use serde::Serialize;

pub use super::context::{ApplyOptions, Cancel, Events, Failure, Step, registration_id};
use super::context::{Ctx, Host};
use super::error::EdgeError;
use super::event::ApplyEvent;
use super::failure::fail;
use super::instance::pull;
use super::pull_auth::PullAuth;
use super::rollback::roll_back;
use super::rollout::run_wave;
use crate::desired::ConfigOrder;
use crate::host::{AgentError, HostSession};
use crate::plan::rollout::canary_waves;
use crate::plan::{Action, EdgeAction, EdgeKind, HostPlan, Plan};

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

/// Apply `plan` through `sessions` (one per host of the plan): the plan says everything that
/// is done (its changes and their `Rollout`s). KV first, then every host; on a failure, roll
/// back unless told not to.
pub async fn apply(
    plan: &Plan,
    sessions: &[&HostSession],
    opts: &ApplyOptions,
) -> Result<Report, ApplyError> {
    let t0 = Instant::now();
    let pull_auth = PullAuth::new(plan.context.registry.as_ref())
        .map_err(|e| ApplyError::Registry(e.to_string()))?;
    let ctx = Ctx {
        plan,
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
    for (index, hp) in plan.hosts.iter().enumerate() {
        let name = &hp.name;
        let host_error = |cause: String| ApplyError::Host {
            host: name.clone(),
            cause,
        };
        if !hp.observed {
            return Err(host_error("not observed".into()));
        }
        let session = *sessions
            .iter()
            .find(|s| &s.target().name == name)
            .ok_or_else(|| host_error("no session".into()))?;
        let docker = session
            .docker()
            .await
            .map_err(|e| host_error(e.to_string()))?;
        let consul = match &plan.context.consul {
            None => None,
            Some(c) => Some(
                session
                    .consul(c, opts.consul_token.as_deref())
                    .await
                    .map_err(|e| {
                        host_error(match e {
                            // `host_error` names the host already.
                            AgentError::Client { source, .. } => source.to_string(),
                            e => e.to_string(),
                        })
                    })?
                    .clone(),
            ),
        };
        hosts.push(Host {
            index,
            session,
            docker,
            consul,
            plan: hp,
            gateway: Default::default(),
        });
    }

    // The KV writes, one transaction per app, checked against Consul's limits before anything
    // changes.
    let writes = super::kv::writes(plan)?;
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
    if let Err(e) = setup_edge(&ctx, &hosts).await {
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
        let names: Vec<String> = canary.iter().map(|h| h.plan.name.clone()).collect();
        ctx.emit(ApplyEvent::CanaryFirst {
            hosts: names.clone(),
        });
        run_wave(&ctx, &canary, opts.parallel).await;
        if ctx.stop.load(Ordering::SeqCst) {
            not_started = rest.iter().map(|h| h.plan.name.clone()).collect();
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
                        host: kv_host.map(|h| h.plan.name.clone()).unwrap_or_default(),
                        version: ctx.app(&app).map(|a| a.version.clone()),
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
/// environment's routes taken off every edge the plan removes them from.
async fn setup_edge(ctx: &Ctx<'_>, hosts: &[Host<'_>]) -> Result<(), EdgeError> {
    let p = ctx.plan;
    let Some(edge) = &p.context.edge else {
        for h in hosts {
            let removes = p.edge.iter().any(|c| {
                c.kind == EdgeKind::Route
                    && c.action == EdgeAction::Remove
                    && c.hosts.contains(&h.plan.name)
            });
            if removes {
                let a = crate::edge::Admin::connect(h.session).await?;
                let n = crate::edge::remove_owned(&a, &p.project, &p.environment).await?;
                ctx.emit(ApplyEvent::EdgeRoutesRemoved {
                    host: h.plan.name.clone(),
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
        crate::edge::setup(&p.project, &p.environment, edge, &sessions, consul, auth).await?;
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
                        h.plan.name
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
