//! The steps on one instance's containers, in the order `deploy` uses them: pull, launch the
//! new container, register it and wait for its health check, replace (retire the old one:
//! deregister, drain, stop, remove), and the helpers they share.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, LogsOptions, StopContainerOptions,
};
use futures_util::StreamExt;

use super::context::{Ctx, Host, Launch, Started, Undo};
use super::error::{LaunchError, LaunchFailure, OtherOwner};
use super::event::ApplyEvent;
use super::fault::Phase;
use super::health::{self, Unhealthy};
use crate::errors::chain;
use crate::host::force_remove;
use crate::identity::checks::{Service, registration};
use crate::identity::labels;
use crate::observe::short_id;

/// Replace `old` by `launch`. Records how to undo it.
pub(super) async fn replace(
    ctx: &Ctx<'_>,
    h: &Host<'_>,
    launch: &Launch,
    old: &str,
    old_regs: &[String],
    new_version: &str,
) -> Result<Started, LaunchFailure> {
    // How to put the old one back, read before anything changes.
    let undo_launch = match old_launch(h, launch, old).await {
        Ok(l) => Some(l),
        Err(e) => {
            ctx.emit(ApplyEvent::UndoNotRecorded {
                host: h.plan.name.clone(),
                error: e.to_string(),
            });
            None
        }
    };
    let tag = launch.tag();
    let started = if launch.stop_first {
        // The port (or the volume) is the old container's: deregister, drain, stop it first.
        ctx.set_phase(h, &tag, Phase::Draining);
        edge_off(ctx, h, old_regs).await;
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
        ctx.set_phase(h, &tag, Phase::Draining);
        if !regs.is_empty() && h.consul.is_some() {
            ctx.emit(ApplyEvent::Draining {
                host: h.plan.name.clone(),
                tag: tag.clone(),
                drain: ctx.opts.drain,
            });
        }
        retire(ctx, h, &[], &regs, launch.stop_timeout).await;
        ctx.set_phase(h, &tag, Phase::StoppingOld);
        let _ = stop(h, old, launch.stop_timeout).await;
        s
    };
    // Not done until the old container is gone: a host lost while draining or stopping must
    // not be reported as replaced.
    force_remove(&h.docker, old)
        .await
        .map_err(|e| LaunchError::RemoveOld {
            container: short_id(old).to_string(),
            cause: chain(&e),
        })?;
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
pub(super) async fn old_launch(
    h: &Host<'_>,
    like: &Launch,
    old: &str,
) -> Result<Launch, LaunchError> {
    let i = h
        .docker
        .inspect_container(old, None)
        .await
        .map_err(|e| LaunchError::Inspect {
            container: old.to_string(),
            cause: chain(&e),
        })?;
    let config = i.config.ok_or(LaunchError::NoConfig)?;
    let mut body: ContainerCreateBody = serde_json::from_value(serde_json::to_value(&config)?)?;
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

pub(super) async fn deregister_all(h: &Host<'_>, regs: &[String]) {
    if let Some(c) = &h.consul {
        for r in regs {
            let _ = c.deregister_service(r).await;
        }
    }
}

/// Deregister `regs`, wait the drain when any was deregistered, stop and remove `containers`.
pub(super) async fn retire(
    ctx: &Ctx<'_>,
    h: &Host<'_>,
    containers: &[String],
    regs: &[String],
    stop_timeout: Duration,
) {
    edge_off(ctx, h, regs).await;
    deregister_all(h, regs).await;
    if !regs.is_empty() && h.consul.is_some() {
        tokio::time::sleep(ctx.opts.drain).await;
    }
    for c in containers {
        let _ = stop(h, c, stop_timeout).await;
        let _ = force_remove(&h.docker, c).await;
    }
}

/// Take the instances registered as `regs` out of every edge (for the apps that have a
/// route) and wait for the evidence that none of them gets requests any more; says so when
/// it never comes.
pub(super) async fn edge_off(ctx: &Ctx<'_>, h: &Host<'_>, regs: &[String]) {
    let (Some(sync), Some(consul)) = (ctx.edge.get(), &h.consul) else {
        return;
    };
    if regs.is_empty() {
        return;
    }
    let Ok(services) = consul.agent_services().await else {
        return;
    };
    let app_key = labels::meta_key(labels::APP);
    let mut by_app: HashMap<String, Vec<String>> = HashMap::new();
    for r in regs {
        if let Some(s) = services.get(r)
            && let Some(app) = s.meta.get(&app_key)
        {
            let addr = if s.address.is_empty() {
                h.plan.address.clone()
            } else {
                s.address.clone()
            };
            by_app
                .entry(app.clone())
                .or_default()
                .push(crate::edge::caddy::dial(&addr, s.port));
        }
    }
    for (app, dials) in by_app {
        if !sync.routes(&app) {
            continue;
        }
        match sync.retire(&app, &dials).await {
            Ok(took) => ctx.emit(ApplyEvent::EdgesDrained {
                host: h.plan.name.clone(),
                app,
                dials,
                took,
            }),
            Err(error) => ctx.emit(ApplyEvent::NoDrainEvidence {
                host: h.plan.name.clone(),
                app,
                dials,
                within: crate::edge::sync::DRAIN_EVIDENCE,
                error,
            }),
        }
    }
}

pub(super) async fn stop(
    h: &Host<'_>,
    id: &str,
    t: Duration,
) -> Result<(), bollard::errors::Error> {
    h.docker
        .stop_container(
            id,
            Some(StopContainerOptions {
                t: Some(t.as_secs() as i32),
                signal: None,
            }),
        )
        .await
}

pub(super) async fn tail_logs(docker: &Docker, id: &str) -> Vec<String> {
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

/// Pull when the host lacks the image (for instance `tag`, in phase `Pulling` meanwhile).
pub(super) async fn pull(
    ctx: &Ctx<'_>,
    h: &Host<'_>,
    image: &str,
    tag: &str,
) -> Result<(), LaunchError> {
    match h.docker.inspect_image(image).await {
        Ok(_) => return Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => {
            return Err(LaunchError::FindImage {
                image: image.to_string(),
                cause: chain(&e),
            });
        }
    }
    let was = ctx.phase_of(h, tag);
    ctx.set_phase(
        h,
        tag,
        Phase::Pulling {
            image: image.to_string(),
        },
    );
    ctx.emit(ApplyEvent::Pull {
        host: h.plan.name.clone(),
        image: image.to_string(),
    });
    let creds = ctx
        .pull_auth
        .for_image(image)
        .map_err(|e| LaunchError::Pull {
            image: image.to_string(),
            cause: e.to_string(),
        })?;
    let mut s = h.docker.create_image(
        Some(CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        }),
        None,
        creds,
    );
    while let Some(item) = s.next().await {
        item.map_err(|e| LaunchError::Pull {
            image: image.to_string(),
            cause: chain(&e),
        })?;
    }
    ctx.set_phase(h, tag, was);
    Ok(())
}

/// Create and start a container, register it, wait until healthy. On failure everything it
/// did is undone (the container stopped and removed, its registration removed) and the error
/// carries the container's last output lines. `protect`: containers a name clash must not remove.
pub(super) async fn launch_new(
    ctx: &Ctx<'_>,
    h: &Host<'_>,
    l: &Launch,
    protect: &[String],
) -> Result<Started, LaunchFailure> {
    let tag = l.tag();
    ctx.set_phase(h, &tag, Phase::Starting);
    pull(ctx, h, &l.image, &tag).await?;
    super::container::ensure_volumes(&h.docker, &l.body).await?;
    let mut body = l.body.clone();
    if super::container::needs_host_gateway(&body) {
        let gateway = h
            .gateway
            .get_or_try_init(|| super::container::host_gateway(&h.docker))
            .await?;
        super::container::fill_host_gateway(&mut body, gateway);
    }
    // Auto-published ports get a concrete host port, so Docker's restarts keep it (and the
    // Consul registration stays right); a port someone else holds is picked again.
    let mut attempt = 0u64;
    let id = loop {
        attempt += 1;
        let mut body = body.clone();
        let pinned = super::container::pin_auto_ports(&mut body, crate::host::unguessable());
        let (id, name) = create(h, l, body, protect).await?;
        match h.docker.start_container(&id, None).await {
            Ok(()) => break id,
            Err(e) => {
                let why = chain(&e);
                let logs = tail_logs(&h.docker, &id).await;
                let _ = force_remove(&h.docker, &id).await;
                if !(pinned && super::container::is_port_conflict(&why) && attempt < PORT_TRIES) {
                    return Err(LaunchFailure {
                        error: LaunchError::Start { name, cause: why },
                        logs,
                    });
                }
            }
        }
    };
    let cleanup = |reg: Option<String>| {
        let id = id.clone();
        async move {
            let logs = tail_logs(&h.docker, &id).await;
            if let (Some(c), Some(r)) = (&h.consul, reg) {
                let _ = c.deregister_service(&r).await;
            }
            let _ = force_remove(&h.docker, &id).await;
            logs
        }
    };
    match register_and_wait(ctx, h, l, &id).await {
        Ok(s) => {
            // A new container that passed may have the address of one retired earlier in this
            // command (a rollback's, on a freed port): it is routed to again.
            if let (Some(sync), Some(port), Some(svc)) = (ctx.edge.get(), s.port, &l.service) {
                sync.include(&l.app, &[crate::edge::caddy::dial(&svc.address, port)]);
            }
            Ok(s)
        }
        Err(GateFailure {
            error,
            registration,
        }) => {
            let logs = cleanup(registration).await;
            Err(LaunchFailure { error, logs })
        }
    }
}

/// How many host ports a launch tries for its auto-published ports before it gives up.
const PORT_TRIES: u64 = 5;

/// Create the container of `l` from `body` under its name; a name clash is handled as
/// `launch_new` says. Returns the container's ID and the name it got.
async fn create(
    h: &Host<'_>,
    l: &Launch,
    body: ContainerCreateBody,
    protect: &[String],
) -> Result<(String, String), LaunchError> {
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
                body.clone(),
            )
            .await
        {
            Ok(r) => break r.id,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) if tries < 3 => {
                // The name is taken: by the container being replaced (same version, other
                // spec) -> another name; by a leftover of this slot (a killed deploy) -> remove
                // it; by anything else -> leave it alone and fail.
                let existing = h.docker.inspect_container(&name, None).await.ok();
                let eid = existing
                    .as_ref()
                    .and_then(|e| e.id.clone())
                    .unwrap_or_default();
                let theirs = existing
                    .as_ref()
                    .and_then(|e| e.config.as_ref())
                    .and_then(|c| c.labels.clone())
                    .unwrap_or_default();
                if protect.contains(&eid) {
                    name = format!("{}-{}", l.name, &uuid_ish()[..6]);
                } else if let Err(owner) = same_slot(
                    l.body.labels.as_ref().unwrap_or(&Default::default()),
                    &theirs,
                ) {
                    return Err(LaunchError::NameTaken {
                        name,
                        container: short_id(&eid).to_string(),
                        owner,
                    });
                } else {
                    let _ = force_remove(&h.docker, &name).await;
                }
            }
            Err(e) => {
                return Err(LaunchError::Create {
                    name,
                    cause: chain(&e),
                });
            }
        }
    };
    Ok((id, name))
}

/// `Ok` when a container with labels `theirs` belongs to the same instance slot (project,
/// environment, app, instance) as one with labels `ours`, else who it belongs to.
fn same_slot(
    ours: &HashMap<String, String>,
    theirs: &HashMap<String, String>,
) -> Result<(), OtherOwner> {
    const SLOT: [&str; 4] = [labels::PROJECT, labels::ENV, labels::APP, labels::INSTANCE];
    let mine = |k: &str| ours.get(k).filter(|v| !v.is_empty());
    if SLOT
        .iter()
        .all(|k| mine(k).is_some() && mine(k) == theirs.get(*k))
    {
        return Ok(());
    }
    let labels = SLOT
        .iter()
        .filter_map(|k| theirs.get(*k).map(|v| format!("{k}={v}")))
        .collect();
    Err(OtherOwner { labels })
}

pub(super) fn uuid_ish() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:08x}", (n as u64) ^ (std::process::id() as u64) << 32)
}

/// The host port Docker gave `container_port` of a running container.
pub(super) async fn published_port(
    docker: &Docker,
    id: &str,
    container_port: u16,
) -> Result<u16, LaunchError> {
    let i = docker
        .inspect_container(id, None)
        .await
        .map_err(|e| LaunchError::Inspect {
            container: id.to_string(),
            cause: chain(&e),
        })?;
    let ports = i.network_settings.and_then(|n| n.ports).unwrap_or_default();
    ports
        .get(&format!("{container_port}/tcp"))
        .cloned()
        .flatten()
        .unwrap_or_default()
        .iter()
        .find_map(|b| b.host_port.as_deref().and_then(|p| p.parse().ok()))
        .ok_or(LaunchError::NotPublished {
            port: container_port,
        })
}

/// Why `register_and_wait` failed, and the registration it made (to remove), if any.
pub(super) struct GateFailure {
    pub(super) error: LaunchError,
    pub(super) registration: Option<String>,
}

impl From<LaunchError> for GateFailure {
    fn from(error: LaunchError) -> Self {
        GateFailure {
            error,
            registration: None,
        }
    }
}

/// Register a running container (its real port) and wait until its health gate passes.
/// The error carries the registration to remove.
pub(super) async fn register_and_wait(
    ctx: &Ctx<'_>,
    h: &Host<'_>,
    l: &Launch,
    id: &str,
) -> Result<Started, GateFailure> {
    let _ = ctx;
    let port = match l.port {
        Some((cp, _)) => Some(published_port(&h.docker, id, cp).await?),
        None => None,
    };
    if let (Some(consul), Some(svc), Some(port)) = (&h.consul, &l.service, port) {
        let service = Service {
            base_id: &svc.base_id,
            name: &svc.name,
            tags: &svc.tags,
            meta: &svc.meta,
            address: &svc.address,
        };
        let reg = registration(service, id, port, l.health.as_ref());
        let reg_id = reg.id.clone().unwrap_or_default();
        consul
            .register_service(&reg)
            .await
            .map_err(|cause| LaunchError::Register {
                id: reg_id.clone(),
                cause,
            })?;
        let gate = async {
            if l.health.is_some() {
                health::wait_consul(consul, &svc.name, &reg_id, &h.docker, id, l.deadline).await
            } else {
                health::wait_local(h.session, &h.docker, id, None, None, l.deadline).await
            }
        };
        let waited = with_workers(h, l, id, gate)
            .await
            .map_err(|e| GateFailure {
                error: LaunchError::Unhealthy(e),
                registration: Some(reg_id.clone()),
            })?;
        return Ok(Started {
            id: id.to_string(),
            port: Some(port),
            registration: Some(reg_id),
            healthy_after: Some(waited),
        });
    }
    let gate = health::wait_local(
        h.session,
        &h.docker,
        id,
        l.health.as_ref(),
        port,
        l.deadline,
    );
    let waited = with_workers(h, l, id, gate)
        .await
        .map_err(LaunchError::Unhealthy)?;
    Ok(Started {
        id: id.to_string(),
        port,
        registration: None,
        healthy_after: Some(waited),
    })
}

/// `gate`, and at the same time, for a container that runs pm2, the gate of its workers
/// (`health::wait_workers`): healthy when both are, after the longer of the two; the first
/// failure fails it.
async fn with_workers(
    h: &Host<'_>,
    l: &Launch,
    id: &str,
    gate: impl std::future::Future<Output = Result<Duration, Unhealthy>>,
) -> Result<Duration, Unhealthy> {
    let inspect = h
        .docker
        .inspect_container(id, None)
        .await
        .map_err(|e| Unhealthy::Other(format!("inspecting the container: {}", chain(&e))))?;
    let Some(cmd) = crate::observe::pm2::jlist_command(&inspect, l.pm2) else {
        return gate.await;
    };
    let workers = health::wait_workers(&h.docker, id, &cmd, l.min_healthy, l.deadline);
    let (a, b) = tokio::try_join!(gate, workers)?;
    Ok(a.max(b))
}

/// Make the registration of running container `id` right (real port, current Meta), wait
/// until it passes, then remove the slot's other registrations.
pub(super) async fn converge_registration(
    ctx: &Ctx<'_>,
    h: &Host<'_>,
    l: &Launch,
    id: &str,
    slot_regs: &[String],
) -> Result<Started, LaunchFailure> {
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
        Err(GateFailure { error, .. }) => {
            let logs = tail_logs(&h.docker, id).await;
            Err(LaunchFailure { error, logs })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_a_container_of_the_same_slot_may_be_replaced_on_a_name_clash() {
        let ours = labels(&[
            (labels::PROJECT, "shop"),
            (labels::ENV, "eu-prod"),
            (labels::APP, "redis"),
            (labels::INSTANCE, "1"),
            (labels::VERSION, "7"),
            (labels::SPEC, "aaaaaaaaaaaa"),
        ]);
        // Same slot, other version or spec: a leftover of ours.
        let mut leftover = ours.clone();
        leftover.insert(labels::SPEC.into(), "bbbbbbbbbbbb".into());
        leftover.insert(labels::VERSION.into(), "6".into());
        assert_eq!(same_slot(&ours, &leftover), Ok(()));
        // Another project whose dashed names spell the same.
        let mut other = ours.clone();
        other.insert(labels::PROJECT.into(), "shop-eu".into());
        other.insert(labels::ENV.into(), "prod".into());
        let why = same_slot(&ours, &other).unwrap_err().to_string();
        assert!(
            why.contains("fleet.project=shop-eu") && why.contains("fleet.env=prod"),
            "{why}"
        );
        // Another instance of the same app, and a container that is not fleet's at all.
        let mut two = ours.clone();
        two.insert(labels::INSTANCE.into(), "2".into());
        assert!(same_slot(&ours, &two).is_err());
        assert_eq!(
            same_slot(&ours, &labels(&[("maintainer", "me")])),
            Err(OtherOwner { labels: vec![] })
        );
        // A slot without labels (never happens) matches nothing, not even itself.
        assert!(same_slot(&HashMap::new(), &HashMap::new()).is_err());
    }
}
