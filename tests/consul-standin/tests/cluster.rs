//! The stand-in as a cluster: one server, agents per host, and the Consul behaviours
//! docs/consul.md lists (each test names the one it pins down).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use consul_standin::acl::Acl;
use consul_standin::{Config, Handle, ServerConfig};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::Value;

struct Cluster {
    _server: Handle,
    agents: Vec<Handle>,
    http: reqwest::Client,
}

async fn cluster(n: usize, acl: Option<Acl>, dns: bool) -> Cluster {
    let server = consul_standin::start_server(ServerConfig {
        acl: acl.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut agents = Vec::new();
    for i in 1..=n {
        let mut config = Config::default().fast_reaper();
        config.server = Some(server.url());
        config.node = format!("h{i}");
        config.acl = acl.clone();
        if dns {
            config.dns_listen = vec!["127.0.0.1:0".parse().unwrap()];
        }
        agents.push(consul_standin::start_agent(config).await.unwrap());
    }
    Cluster {
        _server: server,
        agents,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
    }
}

impl Cluster {
    fn url(&self, agent: usize, path: &str) -> String {
        format!("{}{path}", self.agents[agent].url())
    }
    async fn put(&self, agent: usize, path: &str, body: &str) -> reqwest::Response {
        self.http
            .put(self.url(agent, path))
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }
    async fn get(&self, agent: usize, path: &str) -> reqwest::Response {
        self.http.get(self.url(agent, path)).send().await.unwrap()
    }
    async fn json(&self, agent: usize, path: &str) -> Value {
        self.get(agent, path).await.json().await.unwrap()
    }
}

fn ttl_service(name: &str, id: &str) -> String {
    format!(
        r#"{{"ID":"{id}","Name":"{name}","Address":"10.9.0.1","Port":8080,"Check":{{"TTL":"30s"}}}}"#
    )
}

#[tokio::test]
async fn a_registration_is_in_the_catalog_before_the_call_returns() {
    let c = cluster(2, None, false).await;
    assert_eq!(
        c.put(
            0,
            "/v1/agent/service/register",
            &ttl_service("web", "web-1")
        )
        .await
        .status(),
        200
    );
    // Through the other host's agent, at once.
    let all = c.json(1, "/v1/health/service/web").await;
    assert_eq!(all.as_array().unwrap().len(), 1);
    assert_eq!(all[0]["Node"]["Node"], "h1");
    // Local to h1 only.
    assert!(
        c.json(1, "/v1/agent/services")
            .await
            .as_object()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        c.put(0, "/v1/agent/service/deregister/web-1", "")
            .await
            .status(),
        200
    );
    assert!(
        c.json(1, "/v1/health/service/web")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_check_status_reaches_the_catalog_after_the_sync_delay() {
    let c = cluster(2, None, false).await;
    c.put(
        0,
        "/v1/agent/service/register",
        &ttl_service("api", "api-1"),
    )
    .await;
    let index = c.get(1, "/v1/health/service/api?passing").await.headers()["X-Consul-Index"]
        .to_str()
        .unwrap()
        .to_string();
    let t0 = Instant::now();
    c.put(0, "/v1/agent/check/pass/service:api-1", "").await;
    // The agent knows at once; the catalog does not yet.
    assert_eq!(
        c.json(0, "/v1/agent/checks").await["service:api-1"]["Status"],
        "passing"
    );
    assert!(
        c.json(1, "/v1/health/service/api?passing")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
    // A blocking query through the other agent wakes when the catalog has it.
    let listed = c
        .json(
            1,
            &format!("/v1/health/service/api?passing&index={index}&wait=5s"),
        )
        .await;
    let took = t0.elapsed();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert!(
        took >= Duration::from_millis(250),
        "synced too soon: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "synced too late: {took:?}");
}

#[tokio::test]
async fn kv_and_sessions_are_one_store_for_every_agent() {
    let c = cluster(2, None, false).await;
    assert_eq!(
        c.put(0, "/v1/kv/app/x", "1").await.text().await.unwrap(),
        "true"
    );
    let got = c.json(1, "/v1/kv/app/x").await;
    assert_eq!(got[0]["Value"], "MQ==");
    let session = c
        .put(0, "/v1/session/create", r#"{"TTL":"15s"}"#)
        .await
        .json::<Value>()
        .await
        .unwrap();
    let id = session["ID"].as_str().unwrap();
    let info = c.json(1, &format!("/v1/session/info/{id}")).await;
    assert_eq!(info[0]["Node"], "h1");
    assert_eq!(
        c.put(1, &format!("/v1/kv/lock?acquire={id}"), "held")
            .await
            .text()
            .await
            .unwrap(),
        "true"
    );
    let other = c
        .put(1, "/v1/session/create", "")
        .await
        .json::<Value>()
        .await
        .unwrap();
    let other = other["ID"].as_str().unwrap();
    assert_eq!(
        c.put(0, &format!("/v1/kv/lock?acquire={other}"), "x")
            .await
            .text()
            .await
            .unwrap(),
        "false"
    );
}

#[tokio::test]
async fn kv_details_as_consul() {
    let c = cluster(1, None, false).await;
    // `?keys` at the empty root: 200 []; under a prefix: 404.
    let root = c.get(0, "/v1/kv/?keys").await;
    assert_eq!(root.status(), 200);
    assert_eq!(root.text().await.unwrap(), "[]");
    assert_eq!(c.get(0, "/v1/kv/none/?keys").await.status(), 404);
    // DELETE ?cas of a missing key: true.
    assert_eq!(
        c.http
            .delete(c.url(0, "/v1/kv/missing?cas=5"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "true"
    );
    // Conflicting flags.
    let r = c.put(0, "/v1/kv/a?cas=0&acquire=x", "v").await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().starts_with("Conflicting flags: "));
    let r = c
        .http
        .delete(c.url(0, "/v1/kv/a?recurse&cas=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // An identical write keeps ModifyIndex.
    c.put(0, "/v1/kv/same", "v").await;
    let first = c.json(0, "/v1/kv/same").await[0]["ModifyIndex"].clone();
    c.put(0, "/v1/kv/other", "o").await;
    c.put(0, "/v1/kv/same", "v").await;
    assert_eq!(c.json(0, "/v1/kv/same").await[0]["ModifyIndex"], first);
    c.put(0, "/v1/kv/same", "w").await;
    assert_ne!(c.json(0, "/v1/kv/same").await[0]["ModifyIndex"], first);
    // A missing key answers with the table's index.
    let table = c.json(0, "/v1/kv/same").await[0]["ModifyIndex"]
        .as_u64()
        .unwrap();
    let missing = c.get(0, "/v1/kv/nothing-here").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["X-Consul-Index"].to_str().unwrap(),
        table.to_string()
    );
}

#[tokio::test]
async fn sessions_live_up_to_twice_their_ttl_and_0s_means_none() {
    let c = cluster(1, None, false).await;
    let none = c.put(0, "/v1/session/create", r#"{"TTL":"0s"}"#).await;
    assert_eq!(none.status(), 200);
    let short = c.put(0, "/v1/session/create", r#"{"TTL":"5s"}"#).await;
    assert_eq!(short.status(), 400);
    let s = c
        .put(0, "/v1/session/create", r#"{"TTL":"10s"}"#)
        .await
        .json::<Value>()
        .await
        .unwrap();
    let id = s["ID"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        c.json(0, &format!("/v1/session/info/{id}"))
            .await
            .as_array()
            .unwrap()
            .len(),
        1,
        "invalidated at 1x TTL"
    );
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(
        c.json(0, &format!("/v1/session/info/{id}"))
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn reregistration_keeps_the_check_status_whatever_the_definition() {
    let c = cluster(1, None, false).await;
    c.put(
        0,
        "/v1/agent/service/register",
        &ttl_service("keep", "keep-1"),
    )
    .await;
    c.put(0, "/v1/agent/check/pass/service:keep-1?note=fine", "")
        .await;
    // Same check ID, now an HTTP check against nothing: status and output carry over.
    c.put(
        0,
        "/v1/agent/service/register",
        r#"{"ID":"keep-1","Name":"keep","Check":{"HTTP":"http://127.0.0.1:1/","Interval":"30s"}}"#,
    )
    .await;
    let check = &c.json(0, "/v1/agent/checks").await["service:keep-1"];
    assert_eq!(check["Status"], "passing");
    assert_eq!(check["Output"], "fine");
}

#[tokio::test]
async fn the_critical_clock_starts_at_the_first_critical_result_and_reregistration_resets_it() {
    let c = cluster(1, None, false).await;
    let body =
        r#"{"ID":"dc-1","Name":"dc","Check":{"TTL":"30s","DeregisterCriticalServiceAfter":"1s"}}"#;
    c.put(0, "/v1/agent/service/register", body).await;
    // Critical since registration, but no critical result yet: not reaped.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(c.json(0, "/v1/agent/services").await.get("dc-1").is_some());
    c.put(0, "/v1/agent/check/fail/service:dc-1", "").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.put(0, "/v1/agent/service/register", body).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        c.json(0, "/v1/agent/services").await.get("dc-1").is_some(),
        "re-registration did not reset the clock"
    );
    c.put(0, "/v1/agent/check/fail/service:dc-1", "").await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(
        c.json(0, "/v1/agent/services").await.get("dc-1").is_none(),
        "not reaped"
    );
}

fn acl() -> Acl {
    Acl::from_json(
        r#"{"default_policy":"deny","tokens":{
            "root":{"management":true},
            "web-only":{"rules":{"node_prefix":{"":{"policy":"read"}},"service":{"web":{"policy":"write"}},"key_prefix":{"web/":{"policy":"read"}}}}}}"#,
    )
    .unwrap()
}

#[tokio::test]
async fn acl_reads_are_filtered_and_flagged_writes_refused_unknown_tokens_not_found() {
    let c = cluster(2, Some(acl()), false).await;
    let put = |agent: usize, path: &str, token: &str, body: &str| {
        c.http
            .put(c.url(agent, path))
            .header("X-Consul-Token", token)
            .body(body.to_string())
    };
    for (name, id) in [("web", "web-1"), ("db", "db-1")] {
        let r = put(
            0,
            "/v1/agent/service/register",
            "root",
            &ttl_service(name, id),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
    }
    put(0, "/v1/kv/web/a", "root", "1").send().await.unwrap();
    put(0, "/v1/kv/db/a", "root", "1").send().await.unwrap();
    // Filtered, with the header, through ?token, Bearer and X-Consul-Token alike.
    let r = c.get(0, "/v1/agent/services?token=web-only").await;
    assert_eq!(r.headers()["X-Consul-Results-Filtered-By-ACLs"], "true");
    let services: Value = r.json().await.unwrap();
    assert!(services.get("web-1").is_some() && services.get("db-1").is_none());
    let r = c
        .http
        .get(c.url(1, "/v1/health/service/db"))
        .bearer_auth("web-only")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["X-Consul-Results-Filtered-By-ACLs"], "true");
    assert_eq!(r.text().await.unwrap(), "[]");
    let r = c
        .http
        .get(c.url(1, "/v1/kv/?recurse"))
        .header("X-Consul-Token", "web-only")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["X-Consul-Results-Filtered-By-ACLs"], "true");
    let keys: Value = r.json().await.unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1);
    // Nothing hidden: no header.
    let r = c.get(0, "/v1/health/service/web?token=web-only").await;
    assert!(
        r.headers()
            .get("X-Consul-Results-Filtered-By-ACLs")
            .is_none()
    );
    // A write without the right: 403 naming the permission; an unknown token: ACL not found.
    let r = put(0, "/v1/kv/web/a", "web-only", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("'key:write' on \"web/a\""));
    let r = put(0, "/v1/kv/web/a", "nobody", "2").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.text().await.unwrap(), "ACL not found");
    // No token: anonymous (deny), so filtered.
    let r = c.get(0, "/v1/agent/services").await;
    assert_eq!(r.text().await.unwrap(), "{}");
}

#[tokio::test]
async fn no_token_uses_the_agents_default_token() {
    let mut acl = acl();
    acl.default_token = Some("web-only".into());
    let c = cluster(1, Some(acl), false).await;
    c.http
        .put(c.url(0, "/v1/kv/web/a"))
        .header("X-Consul-Token", "root")
        .body("1")
        .send()
        .await
        .unwrap();
    let r = c.get(0, "/v1/kv/web/a").await;
    assert_eq!(r.status(), 200);
}

async fn dns(addr: SocketAddr, name: &str, rtype: RecordType, tcp: bool) -> Message {
    let mut query = Message::query();
    query.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    let bytes = query.to_vec().unwrap();
    let answer = if tcp {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_u16(bytes.len() as u16).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let len = s.read_u16().await.unwrap();
        let mut buf = vec![0; len as usize];
        s.read_exact(&mut buf).await.unwrap();
        buf
    } else {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&bytes, addr).await.unwrap();
        let mut buf = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        buf.truncate(n);
        buf
    };
    Message::from_vec(&answer).unwrap()
}

#[tokio::test]
async fn dns_answers_passing_instances_only() {
    let c = cluster(2, None, true).await;
    let dns_addr = c.agents[1].dns_addrs()[0];
    c.put(0, "/v1/agent/service/register", r#"{"ID":"app-1","Name":"app","Tags":["v2"],"Address":"10.9.0.1","Port":3000,"Check":{"TTL":"30s"}}"#).await;
    c.put(
        0,
        "/v1/agent/service/register",
        r#"{"ID":"app-2","Name":"app","Address":"10.9.0.2","Port":3001,"Check":{"TTL":"30s"}}"#,
    )
    .await;
    // Critical: not in DNS.
    let m = dns(dns_addr, "app.service.consul.", RecordType::A, false).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    c.put(0, "/v1/agent/check/pass/service:app-1", "").await;
    c.put(0, "/v1/agent/check/pass/service:app-2", "").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let m = dns(dns_addr, "app.service.consul.", RecordType::A, false).await;
    let ips: Vec<String> = m
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert!(ips.contains(&"10.9.0.1".into()) && ips.contains(&"10.9.0.2".into()));
    // SRV over TCP: the port, and the address in the additional section.
    let m = dns(dns_addr, "app.service.consul.", RecordType::SRV, true).await;
    let ports: Vec<u16> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s.port),
            _ => None,
        })
        .collect();
    assert_eq!(ports.len(), 2);
    assert!(ports.contains(&3000) && ports.contains(&3001));
    assert_eq!(m.additionals.len(), 2);
    // Tag filter.
    let m = dns(dns_addr, "v2.app.service.consul.", RecordType::A, false).await;
    assert_eq!(m.answers.len(), 1);
    // A failing check removes the instance.
    c.put(0, "/v1/agent/check/fail/service:app-2", "").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let m = dns(dns_addr, "app.service.consul.", RecordType::A, false).await;
    assert_eq!(m.answers.len(), 1);
    // Unknown consul names: NXDOMAIN; other names: REFUSED.
    let m = dns(dns_addr, "nope.service.consul.", RecordType::A, false).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = dns(dns_addr, "example.com.", RecordType::A, false).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    // The node name.
    let m = dns(dns_addr, "h1.node.consul.", RecordType::A, false).await;
    assert_eq!(m.answers.len(), 1);
}
