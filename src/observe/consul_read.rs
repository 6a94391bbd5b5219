//! The few Consul agent reads observe needs, with `reqwest` directly.
//!
//! `crate::consul` (the full typed client) is being written in parallel; once merged these
//! three calls should move onto it. Kept tiny and behind plain functions so that swap is local.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use serde::Deserialize;

use super::{ObservedCheck, ObservedService};

#[derive(Debug, thiserror::Error)]
pub enum ConsulReadError {
    #[error("the Consul agent refused the ACL token ({0})")]
    Denied(String),
    #[error("the Consul agent does not answer: {0}")]
    Unreachable(String),
    #[error("the Consul agent answered {status} to {request}: {body}")]
    Status {
        request: String,
        status: u16,
        body: String,
    },
    #[error("cannot read the Consul agent's answer to {request}: {cause}")]
    Decode { request: String, cause: String },
}

impl ConsulReadError {
    pub fn kind(&self) -> &'static str {
        match self {
            ConsulReadError::Denied(_) => "consul-denied",
            ConsulReadError::Unreachable(_) => "consul-unreachable",
            _ => "consul",
        }
    }
}

/// A base URL (`http://127.0.0.1:41234`), an optional token and datacenter.
#[derive(Clone)]
pub struct Agent {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
    pub datacenter: Option<String>,
}

impl Agent {
    async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Option<T>, ConsulReadError> {
        let mut url = reqwest::Url::parse(&format!("{}{path}", self.base)).map_err(|e| {
            ConsulReadError::Unreachable(format!("bad agent URL {}: {e}", self.base))
        })?;
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
            if let Some(dc) = &self.datacenter {
                q.append_pair("dc", dc);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let mut req = self.http.get(url);
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        let request = format!("GET {path}");
        let resp = req.send().await.map_err(|e| {
            let mut s = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(c) = cur {
                s = format!("{s}: {c}");
                cur = c.source();
            }
            ConsulReadError::Unreachable(s)
        })?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        if status == 403 || status == 401 {
            return Err(ConsulReadError::Denied(format!("{request}: {status}")));
        }
        let body = resp.bytes().await.map_err(|e| ConsulReadError::Decode {
            request: request.clone(),
            cause: e.to_string(),
        })?;
        if status != 200 {
            return Err(ConsulReadError::Status {
                request,
                status,
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            });
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| ConsulReadError::Decode {
                request,
                cause: e.to_string(),
            })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentCheck {
    #[serde(rename = "CheckID")]
    check_id: String,
    #[serde(rename = "ServiceID", default)]
    service_id: String,
    status: String,
}

/// Services on the agent whose Meta says they are this project's and environment's, with
/// their checks. Two requests: `/v1/agent/services` and `/v1/agent/checks`.
pub async fn fleet_services(
    agent: &Agent,
    project: &str,
    env: &str,
) -> Result<Vec<ObservedService>, ConsulReadError> {
    let (services, checks) = tokio::join!(
        agent.get::<HashMap<String, AgentService>>("/v1/agent/services", &[]),
        agent.get::<HashMap<String, AgentCheck>>("/v1/agent/checks", &[]),
    );
    let services = services?.unwrap_or_default();
    let checks = checks?.unwrap_or_default();
    Ok(select_services(services, checks, project, env))
}

fn select_services(
    services: HashMap<String, AgentService>,
    checks: HashMap<String, AgentCheck>,
    project: &str,
    env: &str,
) -> Vec<ObservedService> {
    let kp = crate::labels::meta_key(crate::labels::PROJECT);
    let ke = crate::labels::meta_key(crate::labels::ENV);
    let mut out: Vec<ObservedService> = services
        .into_values()
        .filter_map(|s| {
            let meta = s.meta.unwrap_or_default();
            if meta.get(&kp).map(String::as_str) != Some(project)
                || meta.get(&ke).map(String::as_str) != Some(env)
            {
                return None;
            }
            let mut c: Vec<ObservedCheck> = checks
                .values()
                .filter(|c| c.service_id == s.id)
                .map(|c| ObservedCheck {
                    id: c.check_id.clone(),
                    status: c.status.clone(),
                })
                .collect();
            c.sort_by(|a, b| a.id.cmp(&b.id));
            Some(ObservedService {
                id: s.id,
                name: s.service,
                tags: s.tags.unwrap_or_default(),
                meta,
                address: s.address,
                port: s.port,
                checks: c,
            })
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KvEntry {
    key: String,
    #[serde(default)]
    value: Option<String>,
}

/// Keys under `prefix` (recursively) and `value_digest` of each value: one request.
pub async fn kv_digests(
    agent: &Agent,
    prefix: &str,
) -> Result<BTreeMap<String, String>, ConsulReadError> {
    let path = format!("/v1/kv/{prefix}");
    let entries = agent
        .get::<Vec<KvEntry>>(&path, &[("recurse", "true")])
        .await?
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for e in entries {
        let raw = match e.value {
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|err| ConsulReadError::Decode {
                    request: format!("GET {path}"),
                    cause: format!("value of {}: {err}", e.key),
                })?,
            None => Vec::new(),
        };
        out.insert(e.key, super::value_digest(&raw));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of Consul's own `/v1/agent/services` example (api-docs/agent/service.mdx),
    /// plus fields fleet ignores.
    #[test]
    fn selects_fleet_services_with_their_checks() {
        let services: HashMap<String, AgentService> = serde_json::from_str(
            r#"{
              "shop-prod-web-h1-1": {"ID": "shop-prod-web-h1-1", "Service": "shop-web",
                "Tags": ["prod"], "Meta": {"fleet-project": "shop", "fleet-env": "prod", "fleet-app": "web"},
                "Port": 8080, "Address": "10.200.1.2", "EnableTagOverride": false,
                "Weights": {"Passing": 10, "Warning": 1}, "Datacenter": "dc1"},
              "redis": {"ID": "redis", "Service": "redis", "Tags": null, "Meta": null, "Port": 8000, "Address": ""},
              "other-env": {"ID": "other-env", "Service": "shop-web", "Tags": [],
                "Meta": {"fleet-project": "shop", "fleet-env": "staging"}, "Port": 1, "Address": ""}
            }"#,
        )
        .unwrap();
        let checks: HashMap<String, AgentCheck> = serde_json::from_str(
            r#"{"service:shop-prod-web-h1-1": {"Node": "h1", "CheckID": "service:shop-prod-web-h1-1",
                 "Name": "x", "Status": "passing", "ServiceID": "shop-prod-web-h1-1", "ServiceName": "shop-web"},
                "serfHealth": {"CheckID": "serfHealth", "Status": "passing", "ServiceID": ""}}"#,
        )
        .unwrap();
        let got = select_services(services, checks, "shop", "prod");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, "shop-prod-web-h1-1");
        assert_eq!(got[0].checks[0].status, "passing");
        assert_eq!(got[0].tags, vec!["prod"]);
    }

    /// A one-shot HTTP server answering every request with `status` and `body`.
    async fn fake_agent(status: &'static str, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(resp.as_bytes()).await;
            }
        });
        format!("http://{addr}")
    }

    fn agent(base: String) -> Agent {
        Agent {
            http: reqwest::Client::new(),
            base,
            token: Some("wrong".into()),
            datacenter: None,
        }
    }

    #[tokio::test]
    async fn a_refused_token_is_consul_denied() {
        let a = agent(fake_agent("403 Forbidden", "Permission denied").await);
        let e = fleet_services(&a, "p", "e").await.unwrap_err();
        assert_eq!(e.kind(), "consul-denied");
    }

    #[tokio::test]
    async fn a_missing_kv_prefix_is_empty_and_a_dead_agent_unreachable() {
        let a = agent(fake_agent("404 Not Found", "").await);
        assert!(kv_digests(&a, "p/e/").await.unwrap().is_empty());
        let dead = agent("http://127.0.0.1:1".into());
        assert_eq!(
            kv_digests(&dead, "p/e/").await.unwrap_err().kind(),
            "consul-unreachable"
        );
    }
}
