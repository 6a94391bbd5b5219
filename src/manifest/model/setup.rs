//! `[consul.agent]`: what `fleet setup` runs on every host (docs/setup.md), decoded with spans,
//! and resolved per host into `desired::AgentSpec`s.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::desired::{AgentDef, AgentSpec, HostTarget, SecretRef};
use crate::manifest::diag::Cx;
use crate::manifest::keys::CONSUL_AGENT_KEYS;
use crate::manifest::node::{Node, Span};

pub use crate::manifest::keys::DEFAULT_AGENT_IMAGE;

/// Decodes `[consul.agent]` (or an environment's merged one). Secrets it names are pushed to
/// `secrets` with their spans.
pub fn decode_agent(
    cx: &mut Cx,
    n: &Node,
    dir: &Path,
    secrets: &mut Vec<(SecretRef, Span)>,
) -> Option<AgentDef> {
    let t = cx.table(n, "[consul.agent]", CONSUL_AGENT_KEYS)?;
    let get = |k: &str| t.get(k);
    let image = match get("image") {
        Some(i) => cx.text(i)?,
        None => DEFAULT_AGENT_IMAGE.into(),
    };
    let servers = match get("servers") {
        Some(s) => {
            let list = cx.str_list(s)?;
            if list.is_empty() {
                cx.err(
                    &s.span,
                    "[consul.agent] has no servers",
                    "empty",
                    Some("name the hosts that run Consul servers: `servers = [\"web1\", \"web2\", \"web3\"]` (3 or 5)".into()),
                );
                return None;
            }
            list
        }
        None => {
            cx.err(
                &n.span,
                "[consul.agent] has no `servers`",
                "missing `servers`",
                Some("name the hosts that run Consul servers: `servers = [\"web1\", \"web2\", \"web3\"]`".into()),
            );
            return None;
        }
    };
    let mut secret = |cx: &mut Cx, k: &str| {
        let node = get(k)?;
        let r = super::secret_ref(cx, node, dir)?;
        secrets.push((r.clone(), node.span.clone()));
        Some(r)
    };
    let encrypt = secret(cx, "encrypt");
    let token = secret(cx, "token");
    let args = match get("args") {
        Some(a) => cx
            .str_list(a)?
            .into_iter()
            .map(|(s, _)| s)
            .collect::<Vec<_>>(),
        None => Vec::new(),
    };
    Some(AgentDef {
        image,
        servers: servers.iter().map(|(s, _)| s.clone()).collect(),
        server_spans: servers.into_iter().map(|(_, sp)| sp).collect(),
        datacenter: get("datacenter").and_then(|d| cx.text(d)),
        encrypt,
        token,
        args,
    })
}

/// Every server must be a host of the environment.
pub fn check_servers(cx: &mut Cx, agent: &AgentDef, env: &str, hosts: &[String]) {
    for (s, span) in agent.servers.iter().zip(&agent.server_spans) {
        if !hosts.contains(s) {
            let known = hosts.join(", ");
            cx.err(
                span,
                format!("Consul server `{s}` is not a host of environment `{env}`"),
                "not a host here",
                Some(format!("the servers are hosts of the environment: {known}")),
            );
        }
    }
}

/// The catalog / bind address of a host: its address when it is an IP, else Consul's
/// go-sockaddr template for the host's private IP.
fn bind_address(h: &HostTarget) -> String {
    if h.is_local() {
        "127.0.0.1".into()
    } else if h.address.parse::<std::net::IpAddr>().is_ok() {
        h.address.clone()
    } else {
        "{{ GetPrivateIP }}".into()
    }
}

/// One agent per host of the environment, servers first in the order of `servers`.
pub fn resolve_agents(
    project: &str,
    env: &str,
    agent: &AgentDef,
    dc: Option<&str>,
    hosts: &[&HostTarget],
) -> Vec<AgentSpec> {
    let datacenter = agent
        .datacenter
        .clone()
        .or(dc.map(str::to_string))
        .unwrap_or_else(|| "dc1".into());
    let server_addrs: Vec<String> = agent
        .servers
        .iter()
        .filter_map(|s| hosts.iter().find(|h| &h.name == s))
        .map(|h| bind_address(h))
        .collect();
    let version = super::parse_image(&agent.image).1;
    hosts
        .iter()
        .map(|h| {
            let server = agent.servers.contains(&h.name);
            let mut spec = AgentSpec {
                host: h.name.clone(),
                server,
                image: agent.image.clone(),
                version: version.clone(),
                container: format!("{project}.{env}.consul"),
                volume: format!("{project}.{env}.consul-data"),
                node: h.name.clone(),
                bind: bind_address(h),
                bootstrap_expect: if server {
                    agent.servers.len() as u32
                } else {
                    0
                },
                retry_join: server_addrs
                    .iter()
                    .filter(|a| **a != bind_address(h))
                    .cloned()
                    .collect(),
                datacenter: datacenter.clone(),
                encrypt: agent.encrypt.clone(),
                token: agent.token.clone(),
                args: agent.args.clone(),
                spec: String::new(),
            };
            spec.spec = agent_hash(&spec);
            spec
        })
        .collect()
}

/// The spec hash of an agent: everything its container is made of (secret references, not
/// values), so a changed image tag or flag is a replace.
fn agent_hash(a: &AgentSpec) -> String {
    let json = serde_json::json!({
        "image": a.image, "server": a.server, "node": a.node, "bind": a.bind,
        "bootstrap_expect": a.bootstrap_expect, "retry_join": a.retry_join,
        "datacenter": a.datacenter, "encrypt": a.encrypt, "token": a.token, "args": a.args,
    });
    hex::encode(Sha256::digest(json.to_string()))[..12].to_string()
}

#[cfg(test)]
mod tests {
    use crate::manifest::{Format, load_str};
    use std::path::Path;

    const BASE: &str = "[project]\nname = \"p\"\n[hosts.b1]\naddress = \"10.201.1.2\"\n[hosts.b2]\naddress = \"10.201.2.2\"\n[hosts.b3]\naddress = \"10.201.3.2\"\n[hosts.b4]\naddress = \"10.201.4.2\"\n[apps]\n[consul]\naddress = \"http://127.0.0.1:8500\"\n[consul.agent]\n";

    #[test]
    fn servers_expect_their_count_and_join_the_others() {
        let src = format!(
            "{BASE}servers = [\"b1\", \"b2\", \"b3\"]\nimage = \"x/consul:2\"\n[environments.production]\n"
        );
        let m = load_str(&src, Format::Toml, "m.toml", Path::new("/p")).unwrap();
        let d = m.resolve("production", &m.placeholder_versions()).unwrap();
        assert_eq!(d.agents.len(), 4);
        let b1 = &d.agents[0];
        assert!(b1.server);
        assert_eq!(b1.bootstrap_expect, 3);
        assert_eq!(b1.retry_join, ["10.201.2.2", "10.201.3.2"]);
        assert_eq!(b1.version, "2");
        let b4 = &d.agents[3];
        assert!(!b4.server);
        assert_eq!(b4.bootstrap_expect, 0);
        assert_eq!(b4.retry_join.len(), 3);
        assert_ne!(b1.spec, d.agents[1].spec);
    }

    #[test]
    fn an_unknown_server_is_refused_at_its_line() {
        let src = format!("{BASE}servers = [\"b1\", \"b9\"]\n[environments.production]\n");
        let e = load_str(&src, Format::Toml, "m.toml", Path::new("/p")).unwrap_err();
        let text = format!("{e:?}");
        assert!(text.contains("b9"), "{text}");
        let src = format!("{BASE}image = \"x\"\n[environments.production]\n");
        let e = load_str(&src, Format::Toml, "m.toml", Path::new("/p")).unwrap_err();
        assert!(format!("{e:?}").contains("servers"));
    }
}
