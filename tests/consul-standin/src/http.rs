//! The HTTP surface: Consul's v1 paths, status codes, headers and plain-text errors.

// Handlers return early with a ready `Response` as the error; its size does not matter here.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::{Value, json};

use crate::state::{self, CRITICAL, Check, KvEntry, PASSING, Service, Session, State, WARNING};
use crate::{Shared, checks, duration};

type Params = Query<HashMap<String, String>>;
type S = AxState<Arc<Shared>>;

const DATACENTER: &str = "dc1";
/// Consul's KV value limit.
const KV_MAX: usize = 512 * 1024;
const WAIT_DEFAULT: Duration = Duration::from_secs(300);
const WAIT_MAX: Duration = Duration::from_secs(600);

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/agent/self", get(agent_self))
        .route("/v1/status/leader", get(status_leader))
        .route("/v1/agent/service/register", put(service_register))
        .route("/v1/agent/service/deregister/{id}", put(service_deregister))
        .route("/v1/agent/services", get(agent_services))
        .route("/v1/agent/service/{id}", get(agent_service))
        .route("/v1/agent/checks", get(agent_checks))
        .route("/v1/agent/check/pass/{id}", put(check_pass))
        .route("/v1/agent/check/warn/{id}", put(check_warn))
        .route("/v1/agent/check/fail/{id}", put(check_fail))
        .route("/v1/agent/check/deregister/{id}", put(check_deregister))
        .route("/v1/health/service/{name}", get(health_service))
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/catalog/service/{name}", get(catalog_service))
        .route(
            "/v1/kv/",
            get(kv_get_root).put(kv_put_root).delete(kv_delete_root),
        )
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/session/create", put(session_create))
        .route("/v1/session/renew/{id}", put(session_renew))
        .route("/v1/session/destroy/{id}", put(session_destroy))
        .route("/v1/session/info/{id}", get(session_info))
        .route("/v1/session/list", get(session_list))
        .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found\n") })
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

/// ACL and datacenter checks on every request, then optional request logging.
///
/// Real Consul answers an unknown token with 403 "ACL not found" and filters (rather than
/// refuses) some reads for the anonymous token; the stand-in refuses every request without the
/// configured token with 403 "Permission denied", which fleet's client maps the same way.
async fn gate(AxState(shared): S, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let query: HashMap<String, String> = uri.query().map(url_decode_pairs).unwrap_or_default();
    if let Some(expected) = &shared.config.acl_token {
        let headers = request.headers();
        let given = headers
            .get("X-Consul-Token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                headers
                    .get("Authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::to_string)
            })
            .or_else(|| query.get("token").cloned());
        if given.as_deref() != Some(expected.as_str()) {
            if shared.config.log_requests {
                eprintln!("consul-standin: {method} {uri} -> 403 (token)");
            }
            return (StatusCode::FORBIDDEN, "Permission denied").into_response();
        }
    }
    if let Some(dc) = query.get("dc")
        && !dc.is_empty()
        && dc != DATACENTER
    {
        return (StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter").into_response();
    }
    let response = next.run(request).await;
    if shared.config.log_requests {
        eprintln!(
            "consul-standin: {method} {uri} -> {}",
            response.status().as_u16()
        );
    }
    response
}

fn url_decode_pairs(query: &str) -> HashMap<String, String> {
    serde_urlencoded_like(query)
}

/// Minimal `application/x-www-form-urlencoded` decoding for the gate (handlers use `Query`).
fn serde_urlencoded_like(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn bad_request(message: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, message.into()).into_response()
}

fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params.get(name).is_some_and(|v| v != "false" && v != "0")
}

/// JSON with the headers Consul puts on reads.
fn json_indexed(index: u64, body: Value) -> Response {
    let mut response = axum::Json(body).into_response();
    add_index_headers(response.headers_mut(), index);
    response
}

fn add_index_headers(headers: &mut HeaderMap, index: u64) {
    headers.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    headers.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    headers.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
}

/// Blocking query: with `?index=N`, wait until `current` exceeds N or `wait` runs out.
async fn block(
    shared: &Shared,
    params: &HashMap<String, String>,
    current: impl Fn(&State) -> u64,
) -> Result<u64, Response> {
    let mut rx = shared.changed.subscribe();
    let now_index = current(&shared.state.lock().unwrap());
    let Some(raw) = params.get("index") else {
        return Ok(now_index);
    };
    let target: u64 = raw
        .parse()
        .map_err(|_| bad_request(format!("Invalid index: {raw}")))?;
    if target == 0 || now_index > target {
        return Ok(now_index);
    }
    let wait = match params.get("wait") {
        Some(w) if !w.is_empty() => {
            duration::parse(w).map_err(|e| bad_request(format!("Invalid wait time: {e}")))?
        }
        _ => WAIT_DEFAULT,
    }
    .min(WAIT_MAX);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let index = current(&shared.state.lock().unwrap());
                if index > target {
                    return Ok(index);
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    Ok(current(&shared.state.lock().unwrap()))
}

// ---- agent ------------------------------------------------------------------------------

async fn agent_self(AxState(shared): S) -> Response {
    axum::Json(json!({
        "Config": {
            "Datacenter": DATACENTER,
            "NodeName": shared.config.node,
            "NodeID": shared.node_id,
            "Server": false,
            "Revision": "standin",
            "Version": "1.17.0-standin",
        },
        "Member": { "Name": shared.config.node, "Addr": shared.node_address, "Port": 8301, "Status": 1 },
        "Meta": {},
    }))
    .into_response()
}

async fn status_leader() -> Response {
    axum::Json(json!("127.0.0.1:8300")).into_response()
}

async fn service_register(AxState(shared): S, Query(params): Params, body: Bytes) -> Response {
    let reg = match state::parse_registration(&body, shared.limits()) {
        Ok(reg) => reg,
        Err(message) => return bad_request(message),
    };
    let replace = flag(&params, "replace-existing-checks");
    let (started, removed) = {
        let mut state = shared.state.lock().unwrap();
        let before: BTreeSet<String> = state
            .checks
            .values()
            .filter(|c| c.def.service_id == reg.service.id)
            .map(|c| c.def.id.clone())
            .collect();
        let started = state.apply_registration(reg, replace, Instant::now());
        let removed: Vec<String> = before
            .into_iter()
            .filter(|id| !state.checks.contains_key(id))
            .collect();
        (started, removed)
    };
    for id in removed {
        checks::stop_runner(&shared, &id);
    }
    for id in started {
        checks::spawn_runner(&shared, &id);
    }
    shared.committed();
    StatusCode::OK.into_response()
}

async fn service_deregister(AxState(shared): S, Path(id): Path<String>) -> Response {
    let removed_checks: Vec<String>;
    {
        let mut state = shared.state.lock().unwrap();
        removed_checks = state
            .checks
            .values()
            .filter(|c| c.def.service_id == id)
            .map(|c| c.def.id.clone())
            .collect();
        if !state.deregister_service(&id) {
            return (
                StatusCode::NOT_FOUND,
                format!("Unknown service ID \"{id}\". Ensure that the service ID is passed, not the service name."),
            )
                .into_response();
        }
    }
    for check in removed_checks {
        checks::stop_runner(&shared, &check);
    }
    shared.committed();
    StatusCode::OK.into_response()
}

fn agent_service_json(s: &Service) -> Value {
    let mut value = json!({
        "ID": s.id,
        "Service": s.name,
        "Tags": s.tags,
        "Meta": s.meta,
        "Port": s.port,
        "Address": s.address,
        "Weights": { "Passing": s.weights.0, "Warning": s.weights.1 },
        "EnableTagOverride": s.enable_tag_override,
        "Datacenter": DATACENTER,
    });
    if let Some(tagged) = &s.tagged_addresses {
        value["TaggedAddresses"] = tagged.clone();
    }
    value
}

async fn agent_services(AxState(shared): S) -> Response {
    let state = shared.state.lock().unwrap();
    let map: serde_json::Map<String, Value> = state
        .services
        .values()
        .map(|s| (s.id.clone(), agent_service_json(s)))
        .collect();
    axum::Json(Value::Object(map)).into_response()
}

async fn agent_service(AxState(shared): S, Path(id): Path<String>) -> Response {
    let state = shared.state.lock().unwrap();
    match state.services.get(&id) {
        Some(s) => axum::Json(agent_service_json(s)).into_response(),
        None => (StatusCode::NOT_FOUND, format!("unknown service ID: {id}")).into_response(),
    }
}

fn check_json(node: &str, state: &State, c: &Check) -> Value {
    let service = state.services.get(&c.def.service_id);
    json!({
        "Node": node,
        "CheckID": c.def.id,
        "Name": c.def.name,
        "Status": c.status,
        "Notes": c.def.notes,
        "Output": c.output,
        "ServiceID": c.def.service_id,
        "ServiceName": service.map(|s| s.name.as_str()).unwrap_or(""),
        "ServiceTags": service.map(|s| s.tags.clone()).unwrap_or_default(),
        "Type": c.def.kind(),
        "Interval": c.def.interval.map(duration::format).unwrap_or_default(),
        "Timeout": c.def.timeout.map(duration::format).unwrap_or_default(),
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": c.create_index,
        "ModifyIndex": c.modify_index,
    })
}

fn serf_health(node: &str) -> Value {
    json!({
        "Node": node,
        "CheckID": "serfHealth",
        "Name": "Serf Health Status",
        "Status": PASSING,
        "Notes": "",
        "Output": "Agent alive and reachable",
        "ServiceID": "",
        "ServiceName": "",
        "ServiceTags": [],
        "Type": "",
        "Definition": {},
        "CreateIndex": 1,
        "ModifyIndex": 1,
    })
}

async fn agent_checks(AxState(shared): S) -> Response {
    let state = shared.state.lock().unwrap();
    let map: serde_json::Map<String, Value> = state
        .checks
        .values()
        .map(|c| (c.def.id.clone(), check_json(&shared.config.node, &state, c)))
        .collect();
    axum::Json(Value::Object(map)).into_response()
}

async fn ttl_update(
    shared: Arc<Shared>,
    id: String,
    params: HashMap<String, String>,
    status: &str,
) -> Response {
    {
        let mut state = shared.state.lock().unwrap();
        let Some(check) = state.checks.get_mut(&id) else {
            return (StatusCode::NOT_FOUND, format!("Unknown check ID \"{id}\". Ensure that the check ID is passed, not the check name.")).into_response();
        };
        let Some(ttl) = check.def.ttl else {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("CheckID \"{id}\" does not have associated TTL"),
            )
                .into_response();
        };
        check.ttl_deadline = Some(Instant::now() + ttl);
        let note = params.get("note").cloned().unwrap_or_default();
        state.set_check(&id, None, status, note);
    }
    shared.committed();
    StatusCode::OK.into_response()
}

async fn check_pass(AxState(shared): S, Path(id): Path<String>, Query(p): Params) -> Response {
    ttl_update(shared, id, p, PASSING).await
}
async fn check_warn(AxState(shared): S, Path(id): Path<String>, Query(p): Params) -> Response {
    ttl_update(shared, id, p, WARNING).await
}
async fn check_fail(AxState(shared): S, Path(id): Path<String>, Query(p): Params) -> Response {
    ttl_update(shared, id, p, CRITICAL).await
}

async fn check_deregister(AxState(shared): S, Path(id): Path<String>) -> Response {
    let removed = {
        let mut state = shared.state.lock().unwrap();
        let removed = state.checks.remove(&id).is_some();
        if removed {
            let index = state.bump();
            state.services_index = index;
        }
        removed
    };
    if !removed {
        return (
            StatusCode::NOT_FOUND,
            format!(
                "Unknown check ID \"{id}\". Ensure that the check ID is passed, not the check name."
            ),
        )
            .into_response();
    }
    checks::stop_runner(&shared, &id);
    shared.committed();
    StatusCode::OK.into_response()
}

// ---- health and catalog -------------------------------------------------------------------

fn node_json(shared: &Shared) -> Value {
    json!({
        "ID": shared.node_id,
        "Node": shared.config.node,
        "Address": shared.node_address,
        "Datacenter": DATACENTER,
        "TaggedAddresses": { "lan": shared.node_address, "wan": shared.node_address },
        "Meta": {},
        "CreateIndex": 1,
        "ModifyIndex": 1,
    })
}

fn has_tags(service: &Service, params: &HashMap<String, String>) -> bool {
    params
        .get("tag")
        .is_none_or(|tag| service.tags.iter().any(|t| t == tag))
}

async fn health_service(
    AxState(shared): S,
    Path(name): Path<String>,
    Query(params): Params,
) -> Response {
    let index = match block(&shared, &params, |s| s.services_index).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let passing_only = flag(&params, "passing");
    let state = shared.state.lock().unwrap();
    let node = &shared.config.node;
    let mut entries = Vec::new();
    for service in state
        .services
        .values()
        .filter(|s| s.name == name && has_tags(s, &params))
    {
        let service_checks: Vec<&Check> = state
            .checks
            .values()
            .filter(|c| c.def.service_id == service.id)
            .collect();
        if passing_only && service_checks.iter().any(|c| c.status != PASSING) {
            continue;
        }
        let mut checks = vec![serf_health(node)];
        checks.extend(service_checks.iter().map(|c| check_json(node, &state, c)));
        let mut service_json = agent_service_json(service);
        service_json["CreateIndex"] = json!(service.create_index);
        service_json["ModifyIndex"] = json!(service.modify_index);
        entries
            .push(json!({ "Node": node_json(&shared), "Service": service_json, "Checks": checks }));
    }
    json_indexed(index, Value::Array(entries))
}

async fn catalog_services(AxState(shared): S, Query(params): Params) -> Response {
    let index = match block(&shared, &params, |s| s.services_index).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let state = shared.state.lock().unwrap();
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // Every real cluster lists its own servers as the `consul` service.
    map.insert("consul".into(), BTreeSet::new());
    for s in state.services.values() {
        map.entry(s.name.clone())
            .or_default()
            .extend(s.tags.iter().cloned());
    }
    json_indexed(index, json!(map))
}

async fn catalog_service(
    AxState(shared): S,
    Path(name): Path<String>,
    Query(params): Params,
) -> Response {
    let index = match block(&shared, &params, |s| s.services_index).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let state = shared.state.lock().unwrap();
    let entries: Vec<Value> = state
        .services
        .values()
        .filter(|s| s.name == name && has_tags(s, &params))
        .map(|s| {
            json!({
                "ID": shared.node_id,
                "Node": shared.config.node,
                "Address": shared.node_address,
                "Datacenter": DATACENTER,
                "TaggedAddresses": { "lan": shared.node_address, "wan": shared.node_address },
                "NodeMeta": {},
                "ServiceKind": "",
                "ServiceID": s.id,
                "ServiceName": s.name,
                "ServiceTags": s.tags,
                "ServiceAddress": s.address,
                "ServiceMeta": s.meta,
                "ServicePort": s.port,
                "ServiceWeights": { "Passing": s.weights.0, "Warning": s.weights.1 },
                "ServiceEnableTagOverride": s.enable_tag_override,
                "ServiceTaggedAddresses": s.tagged_addresses.clone().unwrap_or(json!({})),
                "CreateIndex": s.create_index,
                "ModifyIndex": s.modify_index,
            })
        })
        .collect();
    json_indexed(index, Value::Array(entries))
}

// ---- KV -------------------------------------------------------------------------------------

fn kv_json(e: &KvEntry) -> Value {
    json!({
        "LockIndex": e.lock_index,
        "Key": e.key,
        "Flags": e.flags,
        "Value": if e.value.is_empty() { Value::Null } else { Value::String(state::b64encode(&e.value)) },
        "Session": e.session,
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
    })
}

async fn kv_get_root(s: S, p: Params) -> Response {
    kv_get_inner(s, String::new(), p).await
}
async fn kv_get(s: S, Path(key): Path<String>, p: Params) -> Response {
    kv_get_inner(s, key, p).await
}

async fn kv_get_inner(AxState(shared): S, key: String, Query(params): Params) -> Response {
    let keys_only = params.contains_key("keys");
    let recurse = keys_only || flag(&params, "recurse");
    let index = match block(&shared, &params, |s| s.kv_index_of(&key, recurse)).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let state = shared.state.lock().unwrap();
    let not_found = || {
        let mut r = StatusCode::NOT_FOUND.into_response();
        add_index_headers(r.headers_mut(), index);
        r
    };
    let in_prefix = || {
        state
            .kv
            .range(key.clone()..)
            .take_while(|(k, _)| k.starts_with(key.as_str()))
            .map(|(_, e)| e)
    };
    if keys_only {
        let separator = params.get("separator").filter(|s| !s.is_empty());
        let mut keys: Vec<String> = Vec::new();
        for entry in in_prefix() {
            let listed = match separator {
                Some(sep) => match entry.key[key.len()..].find(sep.as_str()) {
                    Some(at) => entry.key[..key.len() + at + sep.len()].to_string(),
                    None => entry.key.clone(),
                },
                None => entry.key.clone(),
            };
            if keys.last() != Some(&listed) {
                keys.push(listed);
            }
        }
        if keys.is_empty() {
            return not_found();
        }
        return json_indexed(index, json!(keys));
    }
    if recurse {
        let entries: Vec<Value> = in_prefix().map(kv_json).collect();
        if entries.is_empty() {
            return not_found();
        }
        return json_indexed(index, Value::Array(entries));
    }
    let Some(entry) = state.kv.get(&key) else {
        return not_found();
    };
    if params.contains_key("raw") {
        let mut r = (StatusCode::OK, entry.value.clone()).into_response();
        r.headers_mut().insert(
            "Content-Type",
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        add_index_headers(r.headers_mut(), index);
        return r;
    }
    json_indexed(index, json!([kv_json(entry)]))
}

async fn kv_put_root(s: S, p: Params, body: Bytes) -> Response {
    kv_put_inner(s, String::new(), p, body).await
}
async fn kv_put(s: S, Path(key): Path<String>, p: Params, body: Bytes) -> Response {
    kv_put_inner(s, key, p, body).await
}

fn parse_u64(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, Response> {
    match params.get(name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| bad_request(format!("Invalid {name} index"))),
    }
}

async fn kv_put_inner(
    AxState(shared): S,
    key: String,
    Query(params): Params,
    body: Bytes,
) -> Response {
    if key.is_empty() {
        return bad_request("Missing key name");
    }
    if body.len() > KV_MAX {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body({} bytes) too large, max size: {KV_MAX} bytes.",
                body.len()
            ),
        )
            .into_response();
    }
    let cas = match parse_u64(&params, "cas") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let flags = match parse_u64(&params, "flags") {
        Ok(v) => v.unwrap_or(0),
        Err(r) => return r,
    };
    let acquire = params.get("acquire").filter(|s| !s.is_empty()).cloned();
    let release = params.get("release").filter(|s| !s.is_empty()).cloned();
    if acquire.is_some() && release.is_some() {
        return bad_request("Conflicting flags: acquire and release");
    }
    let done = {
        let mut state = shared.state.lock().unwrap();
        let existing = state.kv.get(&key).cloned();
        if let Some(cas) = cas {
            let ok = match &existing {
                None => cas == 0,
                Some(e) => cas != 0 && e.modify_index == cas,
            };
            if !ok {
                return axum::Json(false).into_response();
            }
        }
        if let Some(session) = &acquire {
            if !state.sessions.contains_key(session) {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("invalid session \"{session}\""),
                )
                    .into_response();
            }
            if state
                .lock_delays
                .get(&key)
                .is_some_and(|until| *until > Instant::now())
            {
                return axum::Json(false).into_response();
            }
            match existing.as_ref().and_then(|e| e.session.clone()) {
                Some(holder) if &holder == session => {
                    state.kv_set(&key, body.to_vec(), flags, None, false);
                }
                Some(_) => return axum::Json(false).into_response(),
                None => state.kv_set(
                    &key,
                    body.to_vec(),
                    flags,
                    Some(Some(session.clone())),
                    true,
                ),
            }
        } else if let Some(session) = &release {
            match existing.as_ref().and_then(|e| e.session.clone()) {
                Some(holder) if &holder == session => {
                    state.kv_set(&key, body.to_vec(), flags, Some(None), false);
                }
                _ => return axum::Json(false).into_response(),
            }
        } else {
            state.kv_set(&key, body.to_vec(), flags, None, false);
        }
        true
    };
    shared.committed();
    axum::Json(done).into_response()
}

async fn kv_delete_root(s: S, p: Params) -> Response {
    kv_delete_inner(s, String::new(), p).await
}
async fn kv_delete(s: S, Path(key): Path<String>, p: Params) -> Response {
    kv_delete_inner(s, key, p).await
}

async fn kv_delete_inner(AxState(shared): S, key: String, Query(params): Params) -> Response {
    let recurse = flag(&params, "recurse");
    if key.is_empty() && !recurse {
        return bad_request("Missing key name");
    }
    let cas = match parse_u64(&params, "cas") {
        Ok(v) => v,
        Err(r) => return r,
    };
    {
        let mut state = shared.state.lock().unwrap();
        if let Some(cas) = cas {
            let ok = match state.kv.get(&key) {
                None => cas == 0,
                Some(e) => cas != 0 && e.modify_index == cas,
            };
            if !ok {
                return axum::Json(false).into_response();
            }
        }
        state.kv_delete(&key, recurse);
    }
    shared.committed();
    axum::Json(true).into_response()
}

// ---- sessions ---------------------------------------------------------------------------------

fn session_json(s: &Session) -> Value {
    json!({
        "ID": s.id,
        "Name": s.name,
        "Node": s.node,
        "LockDelay": s.lock_delay.as_nanos() as u64,
        "Behavior": s.behavior,
        "TTL": s.ttl,
        "NodeChecks": ["serfHealth"],
        "ServiceChecks": null,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    })
}

async fn session_create(AxState(shared): S, body: Bytes) -> Response {
    let obj = if body.iter().all(|b| b.is_ascii_whitespace()) {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice::<Value>(&body).map(state::normalize_keys) {
            Ok(Value::Object(obj)) => obj,
            Ok(_) => return bad_request("Request decode failed: expected a JSON object"),
            Err(e) => return bad_request(format!("Request decode failed: {e}")),
        }
    };
    let text = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let ttl = text("ttl");
    if !ttl.is_empty() {
        match duration::parse(&ttl) {
            Ok(d) if d >= Duration::from_secs(10) && d <= Duration::from_secs(86400) => {}
            Ok(_) => {
                return bad_request(format!(
                    "Invalid Session TTL '{ttl}', must be between [10s=24h0m0s]"
                ));
            }
            Err(e) => return bad_request(format!("Request decode failed: {e}")),
        }
    }
    let behavior = match text("behavior").as_str() {
        "" | "release" => "release".to_string(),
        "delete" => "delete".to_string(),
        other => return bad_request(format!("Invalid Behavior setting '{other}'")),
    };
    let lock_delay = match obj.get("lockdelay") {
        None | Some(Value::Null) => Duration::from_secs(15),
        Some(Value::String(s)) => match duration::parse(s) {
            Ok(d) => d,
            Err(e) => return bad_request(format!("Request decode failed: {e}")),
        },
        // Consul reads small bare numbers as seconds, larger ones as nanoseconds.
        Some(Value::Number(n)) => {
            let n = n.as_u64().unwrap_or(0);
            if n < 1000 {
                Duration::from_secs(n)
            } else {
                Duration::from_nanos(n)
            }
        }
        Some(other) => return bad_request(format!("Request decode failed: LockDelay: {other}")),
    };
    let node = text("node");
    if !node.is_empty() && node != shared.config.node {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Missing node registration",
        )
            .into_response();
    }
    let id = random_uuid();
    {
        let mut state = shared.state.lock().unwrap();
        let index = state.bump();
        state.sessions_index = index;
        let session = Session {
            id: id.clone(),
            name: text("name"),
            node: shared.config.node.clone(),
            lock_delay,
            behavior,
            expires: if ttl.is_empty() {
                None
            } else {
                duration::parse(&ttl).ok().map(|d| Instant::now() + d)
            },
            ttl,
            create_index: index,
            modify_index: index,
        };
        state.sessions.insert(id.clone(), session);
    }
    shared.committed();
    axum::Json(json!({ "ID": id })).into_response()
}

async fn session_renew(AxState(shared): S, Path(id): Path<String>) -> Response {
    let mut state = shared.state.lock().unwrap();
    match state.sessions.get_mut(&id) {
        Some(session) => {
            session.expires = session.ttl_duration().map(|d| Instant::now() + d);
            let index = state.sessions_index;
            json_indexed(index, json!([session_json(&state.sessions[&id])]))
        }
        None => (
            StatusCode::NOT_FOUND,
            format!("Session id '{id}' not found"),
        )
            .into_response(),
    }
}

async fn session_destroy(AxState(shared): S, Path(id): Path<String>) -> Response {
    let changed = shared.state.lock().unwrap().invalidate_session(&id);
    if changed {
        shared.committed();
    }
    axum::Json(true).into_response()
}

async fn session_info(
    AxState(shared): S,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let index = match block(&shared, &params, |s| s.sessions_index).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let state = shared.state.lock().unwrap();
    let list: Vec<Value> = state
        .sessions
        .get(&id)
        .map(session_json)
        .into_iter()
        .collect();
    json_indexed(index, Value::Array(list))
}

async fn session_list(AxState(shared): S, Query(params): Params) -> Response {
    let index = match block(&shared, &params, |s| s.sessions_index).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let state = shared.state.lock().unwrap();
    json_indexed(
        index,
        Value::Array(state.sessions.values().map(session_json).collect()),
    )
}

// ---- ids ----------------------------------------------------------------------------------------

fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}

/// A number in [0, 1) for check staggering.
pub fn random_fraction() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn format_uuid(hi: u64, lo: u64) -> String {
    let hex = format!("{hi:016x}{lo:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn random_uuid() -> String {
    format_uuid(random_u64(), random_u64())
}

/// A stable node ID derived from the node name (FNV-1a), so it survives restarts.
pub fn uuid_from(name: &str) -> String {
    let mut a: u64 = 0xcbf29ce484222325;
    let mut b: u64 = 0x84222325cbf29ce4;
    for byte in name.bytes() {
        a = (a ^ byte as u64).wrapping_mul(0x100000001b3);
        b = (b ^ byte as u64).wrapping_mul(0x100000001b3).rotate_left(7);
    }
    format_uuid(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_pairs() {
        let q = serde_urlencoded_like("token=a%2Fb&dc=dc1&recurse");
        assert_eq!(q["token"], "a/b");
        assert_eq!(q["dc"], "dc1");
        assert_eq!(q["recurse"], "");
    }

    #[test]
    fn uuids_look_like_uuids() {
        let id = random_uuid();
        assert_eq!(id.len(), 36);
        assert_ne!(id, random_uuid());
        assert_eq!(uuid_from("h1"), uuid_from("h1"));
    }
}
