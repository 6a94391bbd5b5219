//! `fleet setup ENV`: the Consul agent of every host as a fleet-managed container
//! (`[consul.agent]`), planned first, then applied: new agents on every host at once, changed
//! ones replaced one host at a time (servers first, the leader last, then clients), each step
//! gated on the cluster having a leader and every agent alive again. docs/setup.md.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, RestartPolicy};
use bollard::query_parameters::{CreateContainerOptions, CreateImageOptions, StopContainerOptions};
use futures_util::StreamExt;
use serde::Serialize;

use crate::desired::{AgentSpec, DesiredState, SecretRef};
use crate::errors::chain;
use crate::host::HostSession;
use crate::identity::labels;

pub mod install;

/// The `fleet.kind` of an agent's container.
pub const KIND_AGENT: &str = "agent";

/// What setup does on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Replace,
    Unchanged,
    /// The host cannot be set up (unreachable, its engine down): the message says what to do.
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostStep {
    pub host: String,
    pub role: &'static str,
    pub action: Action,
    pub image: String,
    /// Why a replace (what changed), or the error and its fix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The container running now.
    #[serde(skip)]
    pub current: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetupPlan {
    pub environment: String,
    pub hosts: Vec<HostStep>,
}

impl SetupPlan {
    pub fn changes(&self) -> usize {
        self.hosts
            .iter()
            .filter(|h| matches!(h.action, Action::Create | Action::Replace))
            .count()
    }
    pub fn errors(&self) -> usize {
        self.hosts
            .iter()
            .filter(|h| h.action == Action::Error)
            .count()
    }

    pub fn human(&self) -> String {
        let mut out = format!(
            "Setup of {}: the Consul agent of each host\n",
            self.environment
        );
        for h in &self.hosts {
            let what = match h.action {
                Action::Create => "+ create",
                Action::Replace => "~ replace",
                Action::Unchanged => "  unchanged",
                Action::Error => "! error",
            };
            out.push_str(&format!(
                "  {what:<11} {:<12} {:<7} {}",
                h.host, h.role, h.image
            ));
            if let Some(r) = &h.reason {
                out.push_str(&format!("  ({r})"));
            }
            out.push('\n');
        }
        let (c, r) = (
            self.hosts
                .iter()
                .filter(|h| h.action == Action::Create)
                .count(),
            self.hosts
                .iter()
                .filter(|h| h.action == Action::Replace)
                .count(),
        );
        if c + r == 0 {
            out.push_str("No changes.\n");
        } else {
            out.push_str(&format!(
                "{c} to create, {r} to replace{}.\n",
                if r > 0 {
                    " (one host at a time, each gated on a leader and every agent alive)"
                } else {
                    ""
                }
            ));
        }
        out
    }
}

/// The help for a host whose engine does not answer.
pub fn engine_fix(host: &str) -> String {
    format!(
        "the Docker engine on {host} does not answer; on {host} run `systemctl start docker` \
         (or install it: `apt-get install docker.io` on Debian and Ubuntu, which \
         `fleet setup --install-docker` does)"
    )
}

/// One host's engine, or why it cannot be set up (with the fix).
pub struct Reached<'a> {
    pub spec: &'a AgentSpec,
    pub docker: Result<Docker, String>,
}

/// The engine of a host, checked with a ping.
pub async fn engine(s: &HostSession) -> Result<Docker, String> {
    let d = s.docker().await.map_err(|e| e.cause())?;
    d.ping().await.map_err(|e| chain(&e))?;
    Ok(d)
}

struct Current {
    id: String,
    spec: Option<String>,
    image: String,
    running: bool,
}

async fn current(docker: &Docker, project: &str, env: &str) -> Result<Option<Current>, String> {
    let list = crate::host::containers_labelled(
        docker,
        &[
            format!("{}={project}", labels::PROJECT),
            format!("{}={env}", labels::ENV),
            format!("{}={KIND_AGENT}", labels::KIND),
        ],
    )
    .await
    .map_err(|e| format!("listing containers: {}", chain(&e)))?;
    Ok(list.into_iter().next().map(|c| Current {
        id: c.id.unwrap_or_default(),
        spec: c.labels.as_ref().and_then(|l| l.get(labels::SPEC).cloned()),
        image: c.image.unwrap_or_default(),
        running: c.state.map(|s| s.to_string()) == Some("running".into()),
    }))
}

/// Observes every host and plans.
pub async fn plan(desired: &DesiredState, reached: &[Reached<'_>]) -> SetupPlan {
    let mut hosts = Vec::new();
    for r in reached {
        let a = r.spec;
        let role = if a.server { "server" } else { "client" };
        let mut step = HostStep {
            host: a.host.clone(),
            role,
            action: Action::Create,
            image: a.image.clone(),
            reason: None,
            current: None,
        };
        match &r.docker {
            Err(e) => {
                step.action = Action::Error;
                step.reason = Some(e.clone());
            }
            Ok(d) => match current(d, &desired.project, &desired.environment).await {
                Err(e) => {
                    step.action = Action::Error;
                    step.reason = Some(format!("{e}; {}", engine_fix(&a.host)));
                }
                Ok(None) => {}
                Ok(Some(c)) => {
                    step.current = Some(c.id.clone());
                    if c.spec.as_deref() == Some(a.spec.as_str()) && c.running {
                        step.action = Action::Unchanged;
                    } else {
                        step.action = Action::Replace;
                        step.reason = Some(if c.spec.as_deref() == Some(a.spec.as_str()) {
                            "not running".into()
                        } else if c.image != a.image {
                            format!("image {} -> {}", c.image, a.image)
                        } else {
                            "flags changed".into()
                        });
                    }
                }
            },
        }
        hosts.push(step);
    }
    SetupPlan {
        environment: desired.environment.clone(),
        hosts,
    }
}

fn read_secret(r: &SecretRef) -> Result<String, String> {
    crate::manifest::secret::read(r).map_err(|e| e.to_string())
}

/// The `consul agent` command of one host; `bridge`: its Docker bridge gateway.
pub fn command(a: &AgentSpec, bridge: Option<&str>) -> Result<Vec<String>, String> {
    let mut cmd = vec![
        "agent".to_string(),
        format!("-node={}", a.node),
        format!("-bind={}", a.bind),
        format!("-advertise={}", a.bind),
        format!(
            "-client=127.0.0.1{}",
            bridge.map(|b| format!(" {b}")).unwrap_or_default()
        ),
        "-dns-port=53".into(),
        "-data-dir=/consul/data".into(),
        format!("-datacenter={}", a.datacenter),
    ];
    if a.server {
        cmd.push("-server".into());
        cmd.push(format!("-bootstrap-expect={}", a.bootstrap_expect));
    }
    for j in &a.retry_join {
        cmd.push(format!("-retry-join={j}"));
    }
    if let Some(k) = &a.encrypt {
        cmd.push(format!("-encrypt={}", read_secret(k)?));
    }
    cmd.extend(a.args.iter().cloned());
    Ok(cmd)
}

async fn pull(docker: &Docker, image: &str) -> Result<(), String> {
    match docker.inspect_image(image).await {
        Ok(_) => return Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => return Err(format!("looking for {image}: {}", chain(&e))),
    }
    let mut s = docker.create_image(
        Some(CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        }),
        None,
        None,
    );
    while let Some(item) = s.next().await {
        item.map_err(|e| format!("pulling {image}: {}", chain(&e)))?;
    }
    Ok(())
}

async fn remove(docker: &Docker, id: &str) -> Result<(), String> {
    let _ = docker
        .stop_container(
            id,
            Some(StopContainerOptions {
                t: Some(10),
                signal: None,
            }),
        )
        .await;
    crate::host::force_remove(docker, id)
        .await
        .map_err(|e| format!("removing the old agent: {}", chain(&e)))
}

/// Starts the agent of one host (replacing `old` first: on the host network, two agents
/// cannot share the ports).
async fn run_agent(
    desired: &DesiredState,
    docker: &Docker,
    a: &AgentSpec,
    old: Option<&str>,
) -> Result<(), String> {
    pull(docker, &a.image).await?;
    let bridge = crate::apply::container::host_gateway(docker).await.ok();
    let cmd = command(a, bridge.as_deref())?;
    let mut env = Vec::new();
    if let Some(t) = &a.token {
        let token = read_secret(t)?;
        env.push(format!(
            "CONSUL_LOCAL_CONFIG={}",
            serde_json::json!({ "acl": { "tokens": { "agent": token } } })
        ));
    }
    let labels: HashMap<String, String> = [
        (labels::PROJECT, desired.project.clone()),
        (labels::ENV, desired.environment.clone()),
        (labels::KIND, KIND_AGENT.to_string()),
        (labels::APP, "consul".to_string()),
        (labels::VERSION, a.version.clone()),
        (labels::SPEC, a.spec.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let body = ContainerCreateBody {
        image: Some(a.image.clone()),
        cmd: Some(cmd),
        env: Some(env),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some("host".into()),
            restart_policy: Some(RestartPolicy {
                name: Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            cap_add: Some(vec!["NET_BIND_SERVICE".into()]),
            mounts: Some(vec![Mount {
                target: Some("/consul/data".into()),
                source: Some(a.volume.clone()),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Some(old) = old {
        remove(docker, old).await?;
    }
    // A leftover under the name (a setup killed between remove and create) is ours: remove it.
    if let Ok(c) = docker.inspect_container(&a.container, None).await
        && c.config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(labels::KIND))
            .is_some_and(|k| k == KIND_AGENT)
    {
        remove(docker, &a.container).await?;
    }
    let id = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(a.container.clone()),
                ..Default::default()
            }),
            body,
        )
        .await
        .map_err(|e| format!("creating {}: {}", a.container, chain(&e)))?
        .id;
    docker
        .start_container(&id, None)
        .await
        .map_err(|e| format!("starting {}: {}", a.container, chain(&e)))?;
    Ok(())
}

/// What the cluster looks like through one agent.
#[derive(Debug, Default)]
pub struct Health {
    pub leader: String,
    /// Node name -> alive.
    pub alive: HashMap<String, bool>,
}

async fn health_via(http: &reqwest::Client, base: &str) -> Result<Health, String> {
    let get = |p: &str| {
        let url = format!("{base}{p}");
        async move {
            http.get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .error_for_status()
                .map_err(|e| e.to_string())?
                .json::<serde_json::Value>()
                .await
                .map_err(|e| e.to_string())
        }
    };
    let leader = get("/v1/status/leader").await?;
    let members = get("/v1/agent/members").await?;
    Ok(Health {
        leader: leader.as_str().unwrap_or_default().to_string(),
        alive: members
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                Some((
                    m["Name"].as_str()?.to_string(),
                    m["Status"].as_u64() == Some(1),
                ))
            })
            .collect(),
    })
}

/// The cluster's health through the first agent that answers (skipping `avoid`).
async fn health(
    http: &reqwest::Client,
    agents: &[(String, String)],
    avoid: Option<&str>,
) -> Result<Health, String> {
    let mut last = "no agent to ask".to_string();
    for (host, base) in agents.iter().filter(|(h, _)| Some(h.as_str()) != avoid) {
        match health_via(http, base).await {
            Ok(h) => return Ok(h),
            Err(e) => last = format!("{host}: {e}"),
        }
    }
    Err(last)
}

/// Waits until there is a leader and every node of `nodes` is alive; on timeout, says which not.
async fn wait_healthy(
    http: &reqwest::Client,
    agents: &[(String, String)],
    nodes: &[String],
    avoid: Option<&str>,
    timeout: Duration,
) -> Result<Health, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let why = match health(http, agents, avoid).await {
            Ok(h) => {
                let dead: Vec<&String> = nodes
                    .iter()
                    .filter(|n| h.alive.get(*n) != Some(&true))
                    .collect();
                if !h.leader.is_empty() && dead.is_empty() {
                    return Ok(h);
                }
                let mut why = Vec::new();
                if h.leader.is_empty() {
                    why.push("the cluster has no leader".to_string());
                }
                if !dead.is_empty() {
                    why.push(format!(
                        "not alive: {}",
                        dead.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                why.join("; ")
            }
            Err(e) => format!("no agent answers ({e})"),
        };
        if Instant::now() >= deadline {
            return Err(why);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What happened, per host, and how the cluster ended.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    /// Host -> what was done or what failed.
    pub hosts: Vec<(String, Result<String, String>)>,
    pub leader: Option<String>,
    /// Why the cluster is not healthy, when it is not.
    pub unhealthy: Option<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.unhealthy.is_none() && self.hosts.iter().all(|(_, r)| r.is_ok())
    }
}

/// Applies a plan. `agents`: host -> the base URL of its agent (through SSH). `progress`: one
/// line per step.
pub async fn apply(
    desired: &DesiredState,
    plan: &SetupPlan,
    reached: &[Reached<'_>],
    agents: &[(String, String)],
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> Outcome {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a plain HTTP client builds");
    let mut out = Outcome::default();
    let by_host = |h: &str| reached.iter().find(|r| r.spec.host == h);
    // Creates: every host at once.
    let creates = plan.hosts.iter().filter(|s| s.action == Action::Create);
    let runs = creates.map(|s| {
        let r = by_host(&s.host).expect("a planned host is reached");
        async move {
            progress(&format!(
                "{}: start the Consul {} agent ({})",
                s.host, s.role, s.image
            ));
            let Ok(d) = r.docker.as_ref() else {
                return (s.host.clone(), Err("no engine".to_string()));
            };
            (s.host.clone(), run_agent(desired, d, r.spec, None).await)
        }
    });
    for (host, r) in futures_util::future::join_all(runs).await {
        out.hosts.push((host, r.map(|()| "created".into())));
    }
    for s in plan.hosts.iter().filter(|s| s.action == Action::Error) {
        out.hosts
            .push((s.host.clone(), Err(s.reason.clone().unwrap_or_default())));
    }
    // Every agent fleet runs (or should run) must be alive; hosts in error are reported already.
    let nodes: Vec<String> = plan
        .hosts
        .iter()
        .filter(|s| s.action != Action::Error)
        .filter(|s| !out.hosts.iter().any(|(h, r)| h == &s.host && r.is_err()))
        .map(|s| {
            by_host(&s.host)
                .map(|r| r.spec.node.clone())
                .unwrap_or_default()
        })
        .collect();
    match wait_healthy(&http, agents, &nodes, None, timeout).await {
        Ok(h) => out.leader = Some(h.leader),
        Err(why) => {
            out.unhealthy = Some(why);
            return out;
        }
    }
    // Replaces, one host at a time: servers that do not lead, the leader, then clients
    // (Consul's upgrade guidance, docs/setup.md).
    let replaces: Vec<&HostStep> = plan
        .hosts
        .iter()
        .filter(|s| s.action == Action::Replace)
        .collect();
    let mut order: Vec<&HostStep> = Vec::new();
    let leader_host = |leader: &str| -> Option<String> {
        let ip = leader.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(leader);
        desired
            .agents
            .iter()
            .find(|a| a.bind == ip)
            .map(|a| a.host.clone())
    };
    let leader = out.leader.as_deref().and_then(leader_host);
    order.extend(
        replaces
            .iter()
            .filter(|s| s.role == "server" && Some(&s.host) != leader.as_ref()),
    );
    order.extend(
        replaces
            .iter()
            .filter(|s| s.role == "server" && Some(&s.host) == leader.as_ref()),
    );
    order.extend(replaces.iter().filter(|s| s.role != "server"));
    for s in order {
        let r = by_host(&s.host).expect("a planned host is reached");
        let Ok(d) = r.docker.as_ref() else { continue };
        // Gate: healthy before touching the next host.
        if let Err(why) = wait_healthy(&http, agents, &nodes, None, timeout).await {
            out.unhealthy = Some(format!("before replacing {}: {why}", s.host));
            return out;
        }
        progress(&format!(
            "{}: replace the Consul {} agent ({})",
            s.host,
            s.role,
            s.reason.as_deref().unwrap_or("changed")
        ));
        let result = run_agent(desired, d, r.spec, s.current.as_deref()).await;
        let failed = result.is_err();
        out.hosts
            .push((s.host.clone(), result.map(|()| "replaced".into())));
        if failed {
            return out;
        }
        match wait_healthy(&http, agents, &nodes, None, timeout).await {
            Ok(h) => out.leader = Some(h.leader),
            Err(why) => {
                out.unhealthy = Some(format!("after replacing {}: {why}", s.host));
                return out;
            }
        }
    }
    out
}
