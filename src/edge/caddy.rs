//! The Caddy 2 JSON config fleet owns on an edge (pure: built and compared without a host).
//!
//! One HTTP server, `fleet`, holds every project's routes; each route carries an `@id`
//! naming its project, environment and app (`fleet.<project>.<env>.<app>`), so a project
//! adds, changes and removes only its own (`.` occurs in no project, environment or app name,
//! so two ids of different owners never share a prefix). TLS automation policies are per
//! project and environment (`fleet.<project>.<env>.tls`), given certificates likewise
//! (`fleet.<project>.<env>.cert`).
//!
//! A route's handler is a `subroute`: the reverse proxy, and among the subroute's error
//! routes the same proxy again for GET and HEAD. Caddy tries a failed request on another
//! upstream only while the config it started under is the running one; a request whose
//! upstream vanished (a host lost) while fleet pushed a new upstream list would fail. The
//! error route sends it once more, to an upstream the passive health check has not marked
//! failed. Both proxies are one object: one PATCH (one reload) changes both upstream lists.
//!
//! The error route's proxy has an error route of its own: the same proxy a third time, with
//! passive checks only. Caddy 2.6 counts an active check that a reload cancels as a failed
//! one, so a push could leave the config that still serves its last requests with no healthy
//! upstream: a GET answered 503 at once (seen on the testbed, reproduced on a local Caddy
//! 2.6.2 with a slow health path: docs/edge.md, *Active checks and reloads*). The third proxy
//! still finds an upstream then; the second keeps the active checks, which know a host that
//! stopped answering (a cut link) before any request has failed there.

use serde_json::{Value, json};

use crate::desired::{DesiredEdge, EdgeTls, Route};

/// The server name in `apps.http.servers`.
pub const SERVER: &str = "fleet";
/// How long past a route's `timeout` a request may still be tried on another upstream: a dial
/// that fails (refused, or 1 s with no answer) is tried again within it too.
const TRY_AFTER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `fleet.<project>.<env>.`: the prefix of every id this environment owns.
pub fn owner_prefix(project: &str, env: &str) -> String {
    format!("fleet.{project}.{env}.")
}

pub fn route_id(project: &str, env: &str, app: &str) -> String {
    format!("{}{app}", owner_prefix(project, env))
}

pub fn tls_id(project: &str, env: &str) -> String {
    format!("{}tls", owner_prefix(project, env))
}

pub fn cert_id(project: &str, env: &str) -> String {
    format!("{}cert", owner_prefix(project, env))
}

/// `host:port` of an upstream, as Caddy's `dial` and `/reverse_proxy/upstreams` write it.
pub fn dial(address: &str, port: u16) -> String {
    format!("{address}:{port}")
}

/// The whole config of a fresh edge: the admin endpoint, the `fleet` server without routes,
/// and the shared settings (`server_settings`).
pub fn skeleton(edge: &DesiredEdge) -> Value {
    let mut http = json!({
        "servers": { SERVER: server(edge, Vec::new()) },
    });
    for (k, v) in http_settings(edge) {
        http[k] = v;
    }
    json!({
        "admin": { "listen": "localhost:2019" },
        "logging": { "logs": { "default": { "level": "INFO" } } },
        "apps": {
            "http": http,
            "tls": { "automation": { "policies": [] } },
            "pki": { "certificate_authorities": { "local": { "install_trust": false } } },
        },
    })
}

/// `http_port` / `https_port` of the http app.
pub fn http_settings(edge: &DesiredEdge) -> Vec<(&'static str, Value)> {
    vec![
        ("http_port", json!(edge.http_port)),
        ("https_port", json!(edge.https_port)),
    ]
}

/// The `fleet` server: listens on the HTTPS port (Caddy then adds the HTTP->HTTPS redirect on
/// the HTTP port by itself), or only on the HTTP port when TLS is off. Access logs on.
pub fn server(edge: &DesiredEdge, routes: Vec<Value>) -> Value {
    let mut s = server_settings(edge);
    s["routes"] = Value::Array(routes);
    s
}

/// The server without its routes: what `~ edge h1: config` compares.
pub fn server_settings(edge: &DesiredEdge) -> Value {
    if edge.tls.on() {
        json!({
            "listen": [format!(":{}", edge.https_port)],
            "logs": {},
        })
    } else {
        json!({
            "listen": [format!(":{}", edge.http_port)],
            "automatic_https": { "disable": true },
            "logs": {},
        })
    }
}

/// Just the settings keys of an observed server (its routes left out).
pub fn settings_of(server: &Value) -> Value {
    let mut s = server.clone();
    if let Some(o) = s.as_object_mut() {
        o.remove("routes");
    }
    s
}

/// One route: host (+ path prefix) matcher, reverse proxy to `upstreams`. Failed dials are
/// tried again on another upstream for up to 5 s (a request never reached an upstream that
/// refused or did not answer the connection); an upstream that fails is left out for 5 s;
/// with an HTTP health check, Caddy also checks each upstream itself at the app's interval.
pub fn route(project: &str, env: &str, r: &Route, upstreams: &[String]) -> Value {
    let mut m = json!({ "host": r.hosts });
    if r.path != "/" {
        m["path"] = json!([r.path.clone(), format!("{}/*", r.path)]);
    }
    let mut health = json!({ "passive": { "fail_duration": "5s" } });
    if let Some(p) = &r.health_path {
        health["active"] = json!({
            "uri": p,
            "interval": humantime::format_duration(r.health_interval).to_string(),
            "timeout": humantime::format_duration(r.health_timeout.max(std::time::Duration::from_secs(2))).to_string(),
        });
    }
    let proxy = |health: Value| {
        json!({
            "handler": "reverse_proxy",
            "upstreams": upstream_list(upstreams),
            "load_balancing": {
                "selection_policy": { "policy": "round_robin" },
                // A GET whose upstream gave no headers within `timeout` may be tried again.
                "try_duration": humantime::format_duration(r.timeout + TRY_AFTER_TIMEOUT).to_string(),
                "retry_match": [{ "method": ["GET", "HEAD"] }],
                "try_interval": "100ms",
            },
            "health_checks": health,
            "transport": { "protocol": "http", "dial_timeout": "1s",
                "response_header_timeout": humantime::format_duration(r.timeout).to_string() },
        })
    };
    let passive_only = json!({ "passive": health["passive"].clone() });
    json!({
        "@id": route_id(project, env, &r.app),
        "match": [m],
        "handle": [{
            "handler": "subroute",
            "routes": [{ "handle": [proxy(health.clone())] }],
            // A GET or HEAD that failed, once more; and if that fails too, once more without
            // active checks (the module's doc).
            "errors": { "routes": [{
                "match": [{ "method": ["GET", "HEAD"] }],
                "handle": [{
                    "handler": "subroute",
                    "routes": [{ "handle": [proxy(health)] }],
                    "errors": { "routes": [{
                        "match": [{ "method": ["GET", "HEAD"] }],
                        "handle": [proxy(passive_only)],
                    }] },
                }],
            }] },
        }],
        "terminal": true,
    })
}

/// Where a route's proxies are: the first, the one of its error route, and the one of that
/// one's error route.
const PROXIES: [&str; 3] = [
    "/handle/0/routes/0/handle/0",
    "/handle/0/errors/routes/0/handle/0/routes/0/handle/0",
    "/handle/0/errors/routes/0/handle/0/errors/routes/0/handle/0",
];

pub fn upstream_list(upstreams: &[String]) -> Value {
    Value::Array(upstreams.iter().map(|d| json!({ "dial": d })).collect())
}

/// A route without its upstreams (which follow Consul, not the manifest): what the plan
/// compares.
pub fn without_upstreams(route: &Value) -> Value {
    let mut r = route.clone();
    for p in PROXIES {
        if let Some(h) = r.pointer_mut(p).and_then(Value::as_object_mut) {
            h.remove("upstreams");
        }
    }
    r
}

/// The upstreams (`dial`s) of an observed route.
pub fn upstreams_of(route: &Value) -> Vec<String> {
    route
        .pointer(&format!("{}/upstreams", PROXIES[0]))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|u| u.get("dial").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The path prefix of an observed route (`/` without a path matcher), for ordering.
pub fn path_of(route: &Value) -> String {
    route
        .pointer("/match/0/path/0")
        .and_then(Value::as_str)
        .unwrap_or("/")
        .to_string()
}

/// The TLS automation policy of an environment's route hosts, or none (Caddy's automatic
/// HTTPS as it is, or a given certificate, or TLS off).
pub fn tls_policy(project: &str, env: &str, edge: &DesiredEdge) -> Option<Value> {
    let subjects: Vec<&str> = edge
        .routes
        .iter()
        .flat_map(|r| r.hosts.iter().map(String::as_str))
        .collect();
    let issuer = match &edge.tls {
        EdgeTls::Internal => json!({ "module": "internal" }),
        EdgeTls::Acme { email }
        | EdgeTls::Auto {
            email: email @ Some(_),
        } => {
            let mut i = json!({ "module": "acme" });
            if let Some(e) = email {
                i["email"] = json!(e);
            }
            i
        }
        _ => return None,
    };
    let subjects: Vec<&str> = match &edge.tls {
        // Caddy's own choice for local names stays: its internal CA for localhost and IPs.
        EdgeTls::Auto { .. } => subjects
            .into_iter()
            .filter(|s| !(*s == "localhost" || s.ends_with(".localhost")))
            .collect(),
        _ => subjects,
    };
    if subjects.is_empty() {
        return None;
    }
    let mut policy = json!({
        "@id": tls_id(project, env),
        "subjects": subjects,
        "issuers": [issuer],
    });
    // Caddy 2.6 (Debian 12, the testbed's edge) makes a new certificate cache on every config
    // load and fills it in the background; a handshake in between finds no certificate and is
    // refused with TLS alert 80 (caddyserver/caddy#5589; 2.7 keeps the cache: #5623). With
    // `on_demand`, a handshake that misses the cache loads the certificate from storage
    // itself. Internal CA only: no public CA is asked during a handshake, and Caddy allows
    // on-demand without an `ask` endpoint for a policy with explicit subjects.
    if edge.tls == EdgeTls::Internal {
        policy["on_demand"] = json!(true);
    }
    Some(policy)
}

/// The ids under `owner_prefix` found anywhere in a config.
pub fn owned_ids(config: &Value, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(id)) = o.get("@id")
                    && id.starts_with(prefix)
                {
                    out.push(id.clone());
                }
                for x in o.values() {
                    walk(x, prefix, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, prefix, out)),
            _ => {}
        }
    }
    walk(config, prefix, &mut out);
    out
}

/// The routes of the `fleet` server in an observed config.
pub fn routes_of(config: &Value) -> Vec<Value> {
    config
        .pointer(&format!("/apps/http/servers/{SERVER}/routes"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Where a route with prefix `path` goes among `existing` ones: before the first with a
/// shorter prefix (Caddy tries routes in order; the most specific must come first).
pub fn insert_index(existing: &[Value], path: &str) -> usize {
    existing
        .iter()
        .position(|r| path_of(r).len() < path.len())
        .unwrap_or(existing.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn edge(tls: EdgeTls) -> DesiredEdge {
        DesiredEdge {
            hosts: vec!["h1".into()],
            image: "caddy:2".into(),
            http_port: 80,
            https_port: 443,
            tls,
            routes: vec![Route {
                app: "app".into(),
                service: "app".into(),
                hosts: vec!["koa.localhost".into()],
                path: "/api".into(),
                health_path: Some("/health".into()),
                health_interval: Duration::from_secs(1),
                health_timeout: Duration::from_secs(1),
                timeout: Duration::from_secs(30),
            }],
        }
    }

    #[test]
    fn a_route_names_its_owner_and_prefix() {
        let e = edge(EdgeTls::Internal);
        let r = route("koa", "prod", &e.routes[0], &["10.0.0.1:3000".into()]);
        assert_eq!(r["@id"], "fleet.koa.prod.app");
        assert_eq!(r["match"][0]["path"], json!(["/api", "/api/*"]));
        assert_eq!(upstreams_of(&r), vec!["10.0.0.1:3000"]);
        assert_eq!(path_of(&r), "/api");
        let bare = without_upstreams(&r);
        for p in PROXIES {
            assert_eq!(r.pointer(p).unwrap()["handler"], "reverse_proxy");
            assert!(bare.pointer(&format!("{p}/upstreams")).is_none());
        }
        assert_eq!(
            r.pointer(PROXIES[0]).unwrap()["health_checks"]["active"]["uri"],
            "/health"
        );
    }

    #[test]
    fn a_failed_get_is_sent_once_more_to_the_same_upstreams() {
        let e = edge(EdgeTls::Internal);
        let r = route("koa", "prod", &e.routes[0], &["10.0.0.1:3000".into()]);
        let errors = &r["handle"][0]["errors"]["routes"][0];
        assert_eq!(errors["match"], json!([{ "method": ["GET", "HEAD"] }]));
        let nested = &errors["handle"][0]["errors"]["routes"][0];
        assert_eq!(nested["match"], json!([{ "method": ["GET", "HEAD"] }]));
        let [first, again, last] = PROXIES.map(|p| r.pointer(p).unwrap());
        assert_eq!(again, first, "the second try is the same proxy");
        assert!(first["health_checks"]["active"].is_object(), "{first}");
        assert!(last["health_checks"].get("active").is_none(), "{last}");
        assert_eq!(
            last["health_checks"]["passive"],
            first["health_checks"]["passive"]
        );
        let mut same = last.clone();
        same["health_checks"] = first["health_checks"].clone();
        assert_eq!(
            &same, first,
            "the third is the same proxy but for its active checks"
        );
    }

    #[test]
    fn a_get_with_no_answer_within_the_timeout_is_tried_again_in_time() {
        let mut e = edge(EdgeTls::Internal);
        e.routes[0].timeout = Duration::from_secs(2);
        let r = route("koa", "prod", &e.routes[0], &[]);
        let h = r.pointer(PROXIES[0]).unwrap();
        assert_eq!(h["transport"]["response_header_timeout"], "2s");
        // Caddy starts the try clock with the request: the retry must fit after the timeout.
        assert_eq!(h["load_balancing"]["try_duration"], "7s");
        assert_eq!(
            h["load_balancing"]["retry_match"],
            json!([{ "method": ["GET", "HEAD"] }])
        );
    }

    #[test]
    fn ids_are_found_by_owner_only() {
        let e = edge(EdgeTls::Internal);
        let mut c = skeleton(&e);
        c["apps"]["http"]["servers"]["fleet"]["routes"] = json!([
            route("koa", "prod", &e.routes[0], &[]),
            route("koa-prod", "x", &e.routes[0], &[]),
        ]);
        assert_eq!(
            owned_ids(&c, &owner_prefix("koa", "prod")),
            vec!["fleet.koa.prod.app"]
        );
    }

    #[test]
    fn tls_off_listens_on_http_only() {
        let s = server_settings(&edge(EdgeTls::Off));
        assert_eq!(s["listen"], json!([":80"]));
        assert_eq!(s["automatic_https"]["disable"], true);
        assert_eq!(
            server_settings(&edge(EdgeTls::Internal))["listen"],
            json!([":443"])
        );
        assert!(tls_policy("p", "e", &edge(EdgeTls::Auto { email: None })).is_none());
        let p = tls_policy("p", "e", &edge(EdgeTls::Internal)).unwrap();
        assert_eq!(p["issuers"][0]["module"], "internal");
        // A handshake during a reload loads the certificate itself (Caddy 2.6's new cache).
        assert_eq!(p["on_demand"], true);
        let acme = tls_policy("p", "e", &edge(EdgeTls::Acme { email: None })).unwrap();
        assert!(acme.get("on_demand").is_none());
    }

    #[test]
    fn longer_prefixes_go_first() {
        let e = edge(EdgeTls::Off);
        let mut root = e.routes[0].clone();
        root.path = "/".into();
        let existing = vec![
            route("a", "b", &e.routes[0], &[]),
            route("a", "c", &root, &[]),
        ];
        assert_eq!(insert_index(&existing, "/api/v2"), 0);
        assert_eq!(insert_index(&existing, "/x"), 1);
        assert_eq!(insert_index(&existing, "/"), 2);
    }
}
