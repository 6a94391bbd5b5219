//! The Consul reads observe needs, on `crate::consul`'s typed client: the agent's services and
//! checks (fleet's own, found by Meta) and digests of the KV under a prefix.

use std::collections::BTreeMap;

use super::{ObservedCheck, ObservedService};
use crate::consul::{AgentService, ConsulClient, ConsulError, HealthCheck, QueryOptions};

/// The fault kind a Consul error is reported under (`plan --json` faults, docs/plan-json.md).
pub fn fault_kind(e: &ConsulError) -> &'static str {
    match e {
        ConsulError::AclDenied { .. } | ConsulError::Filtered { .. } => "consul-denied",
        ConsulError::Unreachable { .. } => "consul-unreachable",
        _ => "consul",
    }
}

/// Services on the agent whose Meta says they are this project's and environment's, with
/// their checks. Two requests: `/v1/agent/services` and `/v1/agent/checks`.
pub async fn fleet_services(
    agent: &ConsulClient,
    project: &str,
    env: &str,
) -> Result<Vec<ObservedService>, ConsulError> {
    let (services, checks) = tokio::join!(agent.agent_services(), agent.agent_checks());
    Ok(select_services(services?, checks?, project, env))
}

fn select_services(
    services: BTreeMap<String, AgentService>,
    checks: BTreeMap<String, HealthCheck>,
    project: &str,
    env: &str,
) -> Vec<ObservedService> {
    let kp = crate::identity::labels::meta_key(crate::identity::labels::PROJECT);
    let ke = crate::identity::labels::meta_key(crate::identity::labels::ENV);
    let mut out: Vec<ObservedService> = services
        .into_values()
        .filter_map(|s| {
            if s.meta.get(&kp).map(String::as_str) != Some(project)
                || s.meta.get(&ke).map(String::as_str) != Some(env)
            {
                return None;
            }
            let mut c: Vec<ObservedCheck> = checks
                .values()
                .filter(|c| c.service_id == s.id)
                .map(|c| ObservedCheck {
                    id: c.check_id.clone(),
                    status: c.status.to_string(),
                })
                .collect();
            c.sort_by(|a, b| a.id.cmp(&b.id));
            Some(ObservedService {
                id: s.id,
                name: s.service,
                tags: s.tags,
                meta: s.meta,
                address: s.address,
                port: s.port,
                checks: c,
            })
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Keys under `prefix` (recursively) with their digests, indexes and values: one request.
pub async fn kv_read(
    agent: &ConsulClient,
    via: &str,
    prefix: &str,
) -> Result<super::ObservedKv, ConsulError> {
    let entries = agent.kv_list(prefix, QueryOptions::default()).await?.value;
    Ok(super::ObservedKv::read(via, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of Consul's own `/v1/agent/services` example (api-docs/agent/service.mdx),
    /// plus fields fleet ignores.
    #[test]
    fn selects_fleet_services_with_their_checks() {
        let services: BTreeMap<String, AgentService> = serde_json::from_str(
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
        let checks: BTreeMap<String, HealthCheck> = serde_json::from_str(
            r#"{"service:shop-prod-web-h1-1": {"Node": "h1", "CheckID": "service:shop-prod-web-h1-1",
                 "Name": "x", "Status": "passing", "ServiceID": "shop-prod-web-h1-1", "ServiceName": "shop-web"},
                "serfHealth": {"Node": "h1", "CheckID": "serfHealth", "Name": "Serf Health Status",
                 "Status": "passing", "ServiceID": ""}}"#,
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

    fn agent(base: String) -> ConsulClient {
        ConsulClient::new(&base, Some("wrong".into()), None).unwrap()
    }

    #[tokio::test]
    async fn a_refused_token_is_consul_denied() {
        let a = agent(fake_agent("403 Forbidden", "Permission denied").await);
        let e = fleet_services(&a, "p", "e").await.unwrap_err();
        assert_eq!(fault_kind(&e), "consul-denied");
    }

    #[tokio::test]
    async fn a_missing_kv_prefix_is_empty_and_a_dead_agent_unreachable() {
        let a = agent(fake_agent("404 Not Found", "").await);
        assert!(kv_read(&a, "h1", "p/e/").await.unwrap().entries.is_empty());
        let dead = agent("http://127.0.0.1:1".into());
        let e = kv_read(&dead, "h1", "p/e/").await.unwrap_err();
        assert_eq!(fault_kind(&e), "consul-unreachable");
    }
}
