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
use super::{Connected, Selector, instance_label, managed_services, registration};
use crate::consul::ConsulClient;
use crate::host::HostSession;
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
    let per_host = futures_util::future::join_all(cx.hosts().map(|(t, s)| async move {
        if sel.host.as_deref().is_some_and(|h| h != t.name) {
            return Ok(Vec::new());
        }
        let s = s.as_ref().map_err(|e| e.to_string())?;
        on_host(cx, s, sel, action).await
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

async fn on_host(
    cx: &Connected,
    s: &HostSession,
    sel: &Selector,
    action: Action,
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
        let result = async {
            let mut done = Vec::new();
            if matches!(action, Action::Stop | Action::Restart)
                && let Some(consul) = &consul
            {
                let services = managed_services(consul, &d.project, &d.environment)
                    .await
                    .map_err(|e| e.to_string())?;
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
                    done.push(format!("registered {}", reg.id.unwrap_or_default()));
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
