//! `fleet restart | stop | start`: the engine's lifecycle calls, wrapped so that Consul never
//! sends traffic to a container that is going away: the registration goes before the stop and
//! comes back after the start (see `registration` for what is registered).
//!
//! Hosts are handled at once; on one host the instances one after another, so an app with
//! several instances on a host is never all down together during a restart.

use bollard::query_parameters::{
    InspectContainerOptions, RestartContainerOptions, StartContainerOptions, StopContainerOptions,
};

use super::status::labels_of;
use super::{Selector, instance_label, managed_services, registration};
use crate::consul::ConsulClient;
use crate::host::HostSession;
use crate::observe::Connected;
use crate::observe::ContainerState;
use crate::observe::read::list_containers;

/// Which lifecycle call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Stop,
    Start,
    Restart,
}

impl Action {
    pub fn verb(self) -> &'static str {
        match self {
            Action::Stop => "stop",
            Action::Start => "start",
            Action::Restart => "restart",
        }
    }
}

/// What happened to one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `api#1@web2`.
    pub instance: String,
    pub container: String,
    /// What was done (`stopped, deregistered api-...`), or why it failed.
    pub result: Result<String, String>,
}

/// Run `action` on every managed container matching `sel`. Returns one outcome per container
/// and one error per host that could not be used.
pub async fn run(cx: &Connected, sel: &Selector, action: Action) -> (Vec<Outcome>, Vec<String>) {
    let edge = edge_sync(cx).await;
    let edge = &edge;
    let per_host = futures_util::future::join_all(cx.hosts().map(|(t, s)| async move {
        if sel.host.as_deref().is_some_and(|h| h != t.name) {
            return Ok(Vec::new());
        }
        let s = s.as_ref().map_err(|e| e.to_string())?;
        on_host(cx, s, sel, action, edge).await
    }))
    .await;
    let mut outcomes = Vec::new();
    let mut errors = Vec::new();
    for h in per_host {
        match h {
            Ok(o) => outcomes.extend(o),
            Err(e) => errors.push(e),
        }
    }
    (outcomes, errors)
}

/// The edges of the environment, when it has public routes: a routed instance is taken out
/// of every edge (with drain evidence) before it stops, and put back once it passes again;
/// one routed instance at a time across all hosts, so a route never loses every upstream.
struct EdgeCx {
    sync: crate::edge::sync::EdgeSync,
    one_at_a_time: tokio::sync::Mutex<()>,
}

async fn edge_sync(cx: &Connected) -> Option<EdgeCx> {
    let edge = cx.desired.edge.clone()?;
    let mut admins = Vec::new();
    let mut consul = None;
    for (t, s) in cx.hosts() {
        let Ok(s) = s else { continue };
        if consul.is_none()
            && let Some(Ok(c)) = cx.consul(s).await
        {
            consul = Some(c);
        }
        if edge.hosts.contains(&t.name)
            && let Ok(a) = crate::edge::Admin::connect(s).await
        {
            admins.push(a);
        }
    }
    Some(EdgeCx {
        sync: crate::edge::sync::EdgeSync::new(
            &cx.desired.project,
            &cx.desired.environment,
            edge,
            admins,
            consul?,
        ),
        one_at_a_time: tokio::sync::Mutex::new(()),
    })
}

/// Wait (up to `within`) until registration `id` of `service` passes in the cluster.
async fn wait_passing(
    consul: &ConsulClient,
    service: &str,
    id: &str,
    within: std::time::Duration,
) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < within {
        if let Ok(e) = consul
            .health_service(service, true, crate::consul::QueryOptions::default())
            .await
            && e.value.iter().any(|e| e.service.id == id)
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    false
}

async fn on_host(
    cx: &Connected,
    s: &HostSession,
    sel: &Selector,
    action: Action,
    edge: &Option<EdgeCx>,
) -> Result<Vec<Outcome>, String> {
    let host = s.target().name.clone();
    let d = &cx.desired;
    let list = list_containers(s, &d.project, &d.environment)
        .await
        .map_err(|f| format!("{} ({}): {}", f.host, f.address, f.message))?;
    let docker = s.docker().await.map_err(|e| e.to_string())?;
    let consul: Option<ConsulClient> = match cx.consul(s).await {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => return Err(format!("{host}: {e}")),
    };
    let mut out = Vec::new();
    for c in list
        .iter()
        .filter(|c| sel.matches(c.app.as_deref(), c.instance, &host))
    {
        let label = instance_label(c.app.as_deref().unwrap_or("?"), c.instance, &host);
        let routed = edge
            .as_ref()
            .filter(|e| c.app.as_deref().is_some_and(|a| e.sync.routes(a)));
        let _turn = match routed {
            Some(e) => Some(e.one_at_a_time.lock().await),
            None => None,
        };
        let result = async {
            let mut done = Vec::new();
            if matches!(action, Action::Stop | Action::Restart)
                && let Some(consul) = &consul
            {
                let services = managed_services(consul, &d.project, &d.environment)
                    .await
                    .map_err(|e| e.to_string())?;
                if let (Some(e), Some(app)) = (routed, c.app.as_deref()) {
                    let dials: Vec<String> = services
                        .iter()
                        .filter(|svc| svc.belongs_to(c))
                        .map(|svc| crate::edge::caddy::dial(&svc.address, svc.port))
                        .collect();
                    match e.sync.retire(app, &dials).await {
                        Ok(t) => done.push(format!("edges drained in {}ms", t.as_millis())),
                        Err(why) => done.push(format!("no drain evidence from the edges: {why}")),
                    }
                }
                for svc in services.iter().filter(|svc| svc.belongs_to(c)) {
                    consul
                        .deregister_service(&svc.id)
                        .await
                        .map_err(|e| e.to_string())?;
                    done.push(format!("deregistered {}", svc.id));
                }
            }
            match action {
                // The engine answers 304 to stopping a stopped or starting a running
                // container; say so instead of failing.
                Action::Stop if !c.state.is_up() => done.push("already stopped".into()),
                Action::Stop => {
                    docker
                        .stop_container(&c.id, None::<StopContainerOptions>)
                        .await
                        .map_err(|e| format!("stop: {e}"))?;
                    done.push("stopped".into());
                }
                Action::Start if c.state == ContainerState::Running => {
                    done.push("already running".into())
                }
                Action::Start => {
                    docker
                        .start_container(&c.id, None::<StartContainerOptions>)
                        .await
                        .map_err(|e| format!("start: {e}"))?;
                    done.push("started".into());
                }
                Action::Restart => {
                    docker
                        .restart_container(&c.id, None::<RestartContainerOptions>)
                        .await
                        .map_err(|e| format!("restart: {e}"))?;
                    done.push("restarted".into());
                }
            }
            if matches!(action, Action::Start | Action::Restart)
                && let Some(consul) = &consul
                && let (Some(app), Some(n)) = (c.app.as_deref(), c.instance)
                && let Some(spec) = cx.desired_instance(&host, app, n)
            {
                let i = docker
                    .inspect_container(&c.id, None::<InspectContainerOptions>)
                    .await
                    .map_err(|e| format!("inspect: {e}"))?;
                let ports = i.network_settings.as_ref().and_then(|n| n.ports.as_ref());
                let port =
                    spec.container.ports.first().and_then(|p| {
                        registration::published_port(ports, p.container, &p.protocol)
                    });
                if let Some(port) = port
                    && let Some(reg) = registration::for_instance(
                        spec,
                        &c.id,
                        port,
                        &s.target().address,
                        &labels_of(&i),
                    )
                {
                    consul
                        .register_service(&reg)
                        .await
                        .map_err(|e| e.to_string())?;
                    let id = reg.id.clone().unwrap_or_default();
                    done.push(format!("registered {id}"));
                    if let Some(e) = routed {
                        let deadline = cx
                            .desired
                            .apps
                            .iter()
                            .find(|a| a.name == app)
                            .map_or(std::time::Duration::from_secs(60), |a| a.health_deadline);
                        if wait_passing(consul, &reg.name, &id, deadline).await {
                            let addr = reg
                                .address
                                .clone()
                                .unwrap_or_else(|| s.target().address.clone());
                            let dial = crate::edge::caddy::dial(&addr, port);
                            for p in e.sync.admit(app, &[dial]).await {
                                done.push(p);
                            }
                            done.push("back on the edges".into());
                        } else {
                            done.push("not passing: left off the edges".into());
                        }
                    }
                }
            }
            Ok::<_, String>(done.join(", "))
        }
        .await;
        out.push(Outcome {
            instance: label,
            container: c.name.clone(),
            result,
        });
    }
    Ok(out)
}
