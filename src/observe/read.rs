//! Reading hosts into `ObservedState`: per host one container list (label filter) and, when
//! the project uses Consul, the agent's services and checks; the KV once, through the first
//! host whose agent answered. All hosts at once, bounded.

use futures_util::StreamExt;

use super::consul_read;
use super::{
    ContainerState, Fault, Health, ObservedContainer, ObservedHost, ObservedKv, ObservedState,
};
use crate::consul::{ConsulClient, ConsulError};
use crate::desired::{ConsulTarget, DesiredState, HostTarget};
use crate::host::{AgentError, HostError, HostSession};
use crate::identity::fields::{FIELDS_LABEL, FieldDigests};
use crate::identity::labels;

/// What observe needs besides the sessions.
#[derive(Clone)]
pub struct ObserveOptions {
    pub project: String,
    pub environment: String,
    pub consul: Option<ConsulTarget>,
    /// The ACL token's value (`manifest::secret::consul_token`).
    pub consul_token: Option<String>,
    pub parallel: usize,
}

impl ObserveOptions {
    /// What observing `d` needs: its project, environment and Consul, with the ACL token's
    /// value (`manifest::secret::consul_token`, read by the caller once).
    pub fn new(d: &DesiredState, consul_token: Option<String>, parallel: usize) -> Self {
        ObserveOptions {
            project: d.project.clone(),
            environment: d.environment.clone(),
            consul: d.consul.clone(),
            consul_token,
            parallel,
        }
    }
}

fn fault(t: &HostTarget, kind: &str, message: impl Into<String>) -> Fault {
    Fault {
        host: t.name.clone(),
        address: t.address.clone(),
        kind: kind.into(),
        message: message.into(),
    }
}

/// A host that could not be connected to, as observed data.
pub fn unreachable(t: &HostTarget, e: &HostError) -> ObservedHost {
    ObservedHost {
        name: t.name.clone(),
        address: t.address.clone(),
        fault: Some(fault(t, e.kind(), e.cause())),
        ..Default::default()
    }
}

/// fleet's containers on one host: one `GET /containers/json?all&filters=label...`.
pub async fn list_containers(
    s: &HostSession,
    project: &str,
    env: &str,
) -> Result<Vec<ObservedContainer>, Fault> {
    let t = s.target();
    let docker = s
        .docker()
        .await
        .map_err(|e| fault(t, e.kind(), e.cause()))?;
    let list = crate::host::containers_labelled(
        &docker,
        &[
            format!("{}={project}", labels::PROJECT),
            format!("{}={env}", labels::ENV),
        ],
    )
    .await
    .map_err(|e| fault(t, "docker", format!("listing containers: {e}")))?;
    let mut out: Vec<ObservedContainer> = list
        .into_iter()
        // Agents and accessories are not app instances: no app plan or command touches them.
        .filter(|c| {
            c.labels
                .as_ref()
                .is_none_or(|l| !l.contains_key(labels::KIND))
        })
        .map(|c| {
            let l = c.labels.unwrap_or_default();
            let get = |k: &str| l.get(k).cloned();
            ObservedContainer {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                app: get(labels::APP),
                instance: get(labels::INSTANCE).and_then(|i| i.parse().ok()),
                version: get(labels::VERSION),
                spec_hash: get(labels::SPEC),
                fields: get(FIELDS_LABEL).and_then(|f| FieldDigests::from_label(&f)),
                image: c.image.unwrap_or_default(),
                state: ContainerState::parse(&c.state.map(|s| s.to_string()).unwrap_or_default()),
                health: Health::from_status(c.status.as_deref().unwrap_or("")),
                created: c.created.unwrap_or(0),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.app, a.instance, a.created, &a.id).cmp(&(&b.app, b.instance, b.created, &b.id))
    });
    Ok(out)
}

/// Read one host: containers and (when configured) Consul registrations, concurrently.
/// Returns the agent it reached (the session's client), for the KV read.
pub async fn observe_host<'s>(
    s: &'s HostSession,
    o: &ObserveOptions,
) -> (ObservedHost, Option<&'s ConsulClient>) {
    let t = s.target();
    let consul = async {
        let Some(c) = &o.consul else {
            return (None, None, None);
        };
        let agent_fault = |e: ConsulError| {
            let kind = consul_read::fault_kind(&e);
            fault(t, kind, format!("agent {}: {e}", c.address))
        };
        let agent = match s.consul(c, o.consul_token.as_deref()).await {
            Ok(agent) => agent,
            Err(AgentError::Forward(e)) => {
                return (None, Some(fault(t, e.kind(), e.cause())), None);
            }
            Err(AgentError::Client { source, .. }) => {
                return (None, Some(agent_fault(source)), None);
            }
        };
        match consul_read::fleet_services(agent, &o.project, &o.environment).await {
            Ok(v) => (Some(v), None, Some(agent)),
            Err(e) => (None, Some(agent_fault(e)), None),
        }
    };
    let (containers, (services, consul_fault, agent), edge) = tokio::join!(
        list_containers(s, &o.project, &o.environment),
        consul,
        crate::edge::observe(s)
    );
    let host = match containers {
        Ok(containers) => ObservedHost {
            name: t.name.clone(),
            address: t.address.clone(),
            containers,
            services,
            fault: None,
            consul_fault,
            edge,
        },
        // Without the engine nothing about the host can be planned.
        Err(f) => ObservedHost {
            name: t.name.clone(),
            address: t.address.clone(),
            fault: Some(f),
            ..Default::default()
        },
    };
    (host, agent)
}

/// The KV under `<project>/<env>/`, read through `agent`.
pub async fn observe_kv(
    agent: &ConsulClient,
    via: &str,
    o: &ObserveOptions,
) -> Result<ObservedKv, ConsulError> {
    let prefix = format!("{}/{}/", o.project, o.environment);
    consul_read::kv_read(agent, via, &prefix).await
}

/// Observe every host (sessions from `host::connect_all`, in desired order), at most
/// `o.parallel` at once, then the KV once. `Connected::observe` calls it.
pub async fn observe_all(
    targets: &[HostTarget],
    sessions: &[Result<HostSession, HostError>],
    o: &ObserveOptions,
) -> ObservedState {
    let results: Vec<(ObservedHost, Option<&ConsulClient>)> =
        futures_util::stream::iter(targets.iter().zip(sessions))
            .map(|(t, s)| async move {
                match s {
                    Ok(s) => observe_host(s, o).await,
                    Err(e) => (unreachable(t, e), None),
                }
            })
            .buffered(o.parallel.max(1))
            .collect()
            .await;
    let mut state = ObservedState {
        project: o.project.clone(),
        environment: o.environment.clone(),
        ..Default::default()
    };
    if o.consul.is_some() {
        let first = results
            .iter()
            .find_map(|(h, a)| a.as_ref().map(|a| (h.name.clone(), h.address.clone(), a)));
        match first {
            Some((name, address, agent)) => match observe_kv(agent, &name, o).await {
                Ok(kv) => state.kv = Some(kv),
                Err(e) => {
                    state.kv_fault = Some(Fault {
                        host: name,
                        address,
                        kind: consul_read::fault_kind(&e).into(),
                        message: format!("reading KV: {e}"),
                    })
                }
            },
            None => {
                state.kv_fault = Some(Fault {
                    host: "(all)".into(),
                    address: "-".into(),
                    kind: "consul-unreachable".into(),
                    message: "no host's Consul agent answered: the KV could not be read".into(),
                })
            }
        }
    }
    state.hosts = results.into_iter().map(|(h, _)| h).collect();
    state
}
