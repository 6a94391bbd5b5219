//! The steps on one instance's containers, in the order `deploy` uses them: pull, launch the
//! new container, register it and wait for its health check, replace (retire the old one:
//! deregister, drain, stop, remove), and the helpers they share.

use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, LogsOptions, RemoveContainerOptions,
    StopContainerOptions,
};
use futures_util::StreamExt;

use super::deploy::{Ctx, Host, Launch, Started, Undo, registration_id};
use super::health::{self, Unhealthy};
use crate::consul::ServiceRegistration;
use crate::errors::chain;
use crate::labels;

/// Replace `old` by `launch`. Records how to undo it.
pub(super) async fn replace(
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
pub(super) async fn old_launch(h: &Host<'_>, like: &Launch, old: &str) -> Result<Launch, String> {
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

pub(super) async fn stop(h: &Host<'_>, id: &str, t: Duration) -> Result<(), String> {
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

/// Pull when the host lacks the image.
pub(super) async fn pull(ctx: &Ctx<'_>, h: &Host<'_>, image: &str) -> Result<(), String> {
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
pub(super) async fn launch_new(
    ctx: &Ctx<'_>,
    h: &Host<'_>,
    l: &Launch,
    protect: &[String],
) -> Result<Started, (String, Vec<String>)> {
    let plain = |s: String| (s, Vec::new());
    pull(ctx, h, &l.image).await.map_err(plain)?;
    let mut body = l.body.clone();
    super::container::fill_host_gateway(&h.docker, &mut body)
        .await
        .map_err(plain)?;
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
) -> Result<u16, String> {
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
pub(super) async fn register_and_wait(
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
                .map(|hs| health::check_definition(hs, &reg_id, &svc.address, port)),
            ..Default::default()
        };
        consul
            .register_service(&reg)
            .await
            .map_err(|e| (format!("registering {reg_id}: {e}"), None))?;
        let waited = if l.health.is_some() {
            health::wait_consul(consul, &svc.name, &reg_id, &h.docker, id, l.deadline).await
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

pub(super) fn describe(e: Unhealthy) -> String {
    format!("health check failed: {e}")
}

/// Make the registration of running container `id` right (real port, current Meta), wait
/// until it passes, then remove the slot's other registrations.
pub(super) async fn converge_registration(
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
