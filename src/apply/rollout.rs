//! The rollout of one host: its slots batch by batch as the plan's `Rollout`s say (create,
//! replace in either order, start, adopt, keep), then what it retires; a leftover that fails
//! its gate falls back to the container that served.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::container::create_body;
use super::context::{Ctx, Failure, Host, Launch, ServiceTemplate, Started, Step, registration_id};
use super::error::{LaunchError, LaunchFailure, MissingSecret};
use super::event::ApplyEvent;
use super::failure::fail_spec;
use super::fault::Phase;
use super::instance::{
    converge_registration, deregister_all, launch_new, old_launch, replace, retire, tail_logs,
};
use super::prune::prune_images;
use crate::errors::chain;
use crate::observe::{ContainerState, short_id};
use crate::plan::rollout::{batches, retirements};
use crate::plan::{Action, ContainerRef, InstanceChange, Plan, Rollout, SlotRollout, Strategy};

/// Every host of a wave at once, up to `parallel`.
pub(super) async fn run_wave(ctx: &Ctx<'_>, hosts: &[&Host<'_>], parallel: usize) {
    futures_util::stream::iter(hosts.iter())
        .map(|h| run_host(ctx, h))
        .buffer_unordered(parallel.max(1))
        .collect::<Vec<()>>()
        .await;
}

/// How to launch a slot's container: its create body (the secrets read now, never kept in the
/// plan) and what its gate needs.
fn launch_for(p: &Plan, slot: &SlotRollout) -> Result<Launch, MissingSecret> {
    let spec = &slot.spec;
    let body = create_body(spec, &|r| crate::manifest::secret::read(r).ok())?;
    Ok(Launch {
        app: spec.app.clone(),
        instance: spec.instance,
        version: spec.version.clone(),
        name: spec.container_name(&p.project, &p.environment),
        image: spec.container.image.clone(),
        body,
        port: spec.container.ports.first().map(|p| (p.container, p.host)),
        service: spec.service.as_ref().map(|s| ServiceTemplate {
            base_id: s.id.clone(),
            name: s.name.clone(),
            tags: s.tags.clone(),
            meta: s.meta.clone(),
            address: s.address.clone(),
        }),
        health: spec.container.health.clone(),
        deadline: slot.health_deadline,
        pm2: slot.pm2,
        min_healthy: slot.min_healthy,
        stop_timeout: spec.container.stop_timeout,
        stop_first: slot.strategy == Strategy::RetireThenStart,
    })
}

async fn run_host(ctx: &Ctx<'_>, h: &Host<'_>) {
    let host = &h.plan.name;
    // The desired slots app by app in manifest order, `batch` at once (`plan::rollout`).
    for chunk in batches(h.plan, &ctx.plan.context) {
        let app = chunk[0].app.as_str();
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
        let results =
            futures_util::future::join_all(chunk.iter().map(|c| run_instance(ctx, h, c))).await;
        if results.iter().any(|r| !r) {
            ctx.stop.store(true, Ordering::SeqCst);
            return;
        }
    }
    // What is no longer desired here: deregister, drain, stop, remove.
    let (retired, regs) = retirements(h.plan);
    let gone: Vec<(String, String, Option<u32>)> = retired
        .iter()
        .filter_map(|c| Some((c.current.as_ref()?.id.clone(), c.app.clone(), c.instance)))
        .collect();
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

/// One desired instance (and its duplicates), as its `SlotRollout` says. False when it failed.
async fn run_instance(ctx: &Ctx<'_>, h: &Host<'_>, c: &InstanceChange) -> bool {
    let host = &h.plan.name;
    let Rollout::Slot(slot) = &c.rollout else {
        return true;
    };
    let spec = &slot.spec;
    let instance = spec.instance;
    let t = Instant::now();
    let tag = format!("{}#{instance}", c.app);
    let launch = match launch_for(ctx.plan, slot) {
        Ok(l) => l,
        Err(e) => {
            fail_spec(ctx, h, spec, LaunchError::from(e).to_string(), Vec::new()).await;
            return false;
        }
    };
    let dup_refs: Vec<&ContainerRef> = slot.duplicates.iter().collect();
    let dups: Vec<String> = dup_refs.iter().map(|r| r.id.clone()).collect();
    let slot_regs = &slot.registrations;

    let result: Result<Started, LaunchFailure> = match slot.strategy {
        Strategy::Create => {
            ctx.emit(ApplyEvent::Create {
                host: host.clone(),
                tag: tag.clone(),
                version: spec.version.clone(),
            });
            launch_new(ctx, h, &launch, &[]).await
        }
        Strategy::StartThenRetire | Strategy::RetireThenStart => {
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
            // The order is the launch's (`stop_first`, from the strategy).
            replace(ctx, h, &launch, &old.id, slot_regs, &spec.version).await
        }
        Strategy::Start | Strategy::Adopt => {
            let cur = c.current.as_ref().expect("start/adopt has a container");
            ctx.set_phase(h, &tag, Phase::Starting);
            if slot.strategy == Strategy::Start {
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
            match converge_registration(ctx, h, &launch, &cur.id, slot_regs).await {
                // A leftover that fails its gate is never promoted over the one that serves.
                Err(LaunchFailure { error, logs }) if !dups.is_empty() => {
                    let kept = fall_back(ctx, h, &launch, &cur.id, &dup_refs, slot_regs).await;
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
        }
        Strategy::Keep => {
            let cur = c.current.as_ref().expect("keep has a container");
            Ok(Started {
                id: cur.id.clone(),
                port: None,
                registration: None,
                healthy_after: None,
            })
        }
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
    let running = dups.iter().filter(|d| d.state == ContainerState::Running);
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
