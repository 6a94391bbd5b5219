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

use crate::acl::{Authz, Resource};
use crate::state::{
    self, CRITICAL, CatalogCheck, Check, KvEntry, NodeSync, PASSING, Service, Session, State,
    WARNING,
};
use crate::{Shared, checks, duration};

type Params = Query<HashMap<String, String>>;
type S = AxState<Arc<Shared>>;

const DATACENTER: &str = "dc1";
/// Consul's KV value limit.
const KV_MAX: usize = 512 * 1024;
const WAIT_DEFAULT: Duration = Duration::from_secs(300);
const WAIT_MAX: Duration = Duration::from_secs(600);

/// The agent's API: its own services and checks; everything else goes to the server.
pub fn agent_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/agent/self", get(agent_self))
        .route("/v1/agent/service/register", put(service_register))
        .route("/v1/agent/service/deregister/{id}", put(service_deregister))
        .route("/v1/agent/services", get(agent_services))
        .route("/v1/agent/service/{id}", get(agent_service))
        .route("/v1/agent/checks", get(agent_checks))
        .route("/v1/agent/check/{verb}/{id}", put(check_ttl))
        .route("/v1/agent/check/deregister/{id}", put(check_deregister))
        .route(
            crate::sync::SYNC_PATH,
            put(|| async { (StatusCode::NOT_FOUND, "404 page not found\n") }),
        )
        .fallback(crate::proxy::forward)
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

/// The server's API: the catalog, health, KV and sessions of the whole cluster.
pub fn server_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/status/leader", get(status_leader))
        .route("/v1/status/peers", get(status_peers))
        .route("/v1/agent/members", get(agent_members))
        .route(crate::members::MEMBER_PATH, put(member_beat))
        .route(crate::sync::SYNC_PATH, put(node_sync))
        .route("/v1/health/service/{name}", get(health_service))
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/catalog/service/{name}", get(catalog_service))
        .route("/v1/catalog/nodes", get(catalog_nodes))
        .route(
            "/v1/kv/",
            get(kv_get_root).put(kv_put_root).delete(kv_delete_root),
        )
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/txn", put(txn))
        .route("/v1/session/create", put(session_create))
        .route("/v1/session/renew/{id}", put(session_renew))
        .route("/v1/session/destroy/{id}", put(session_destroy))
        .route("/v1/session/info/{id}", get(session_info))
        .route("/v1/session/list", get(session_list))
        .route("/v1/session/node/{node}", get(session_node))
        .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found\n") })
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

/// A request's token as given (`None`: it carried none); the gate has checked that it exists.
#[derive(Debug, Clone)]
pub struct Token(pub Option<String>);

type Tok = axum::Extension<Token>;

/// The request's authorizer (everything allowed when ACLs are off).
fn authz<'a>(shared: &'a Shared, token: &Token) -> Authz<'a> {
    match shared.acl() {
        None => Authz::allow_all(),
        Some(acl) => acl
            .resolve(token.0.as_deref())
            .unwrap_or_else(|_| Authz::allow_all()),
    }
}

/// Consul's 403 for a missing permission (`acl/errors.go`, `PermissionDeniedByACL`).
fn denied(token: &Token, resource: Resource, access: &str, name: &str) -> Response {
    let accessor = match &token.0 {
        Some(t) => uuid_from(&format!("accessor:{t}")),
        None => "00000000-0000-0000-0000-000000000002".into(),
    };
    (
        StatusCode::FORBIDDEN,
        format!(
            "Permission denied: token with AccessorID '{accessor}' lacks permission '{}:{access}' on {name:?}",
            resource.name()
        ),
    )
        .into_response()
}

/// Marks a list read that ACLs filtered, as Consul does.
fn filtered(mut response: Response, was: bool) -> Response {
    if was {
        response.headers_mut().insert(
            "X-Consul-Results-Filtered-By-ACLs",
            HeaderValue::from_static("true"),
        );
    }
    response
}

/// Resolves the token on every request (an unknown one is 403 `ACL not found`), checks the
/// datacenter, then optionally logs the request.
async fn gate(AxState(shared): S, mut request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let query: HashMap<String, String> = uri.query().map(url_decode_pairs).unwrap_or_default();
    let given = crate::proxy::request_token(request.headers(), uri.query());
    if let Some(acl) = shared.acl()
        && let Err(message) = acl.resolve(given.as_deref())
    {
        if shared.config.log_requests {
            eprintln!("consul-standin: {method} {uri} -> 403 ({message})");
        }
        return (StatusCode::FORBIDDEN, message).into_response();
    }
    request.extensions_mut().insert(Token(given));
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

pub fn percent_decode(text: &str) -> String {
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

async fn agent_self(AxState(shared): S, axum::Extension(token): Tok) -> Response {
    if !authz(&shared, &token).can_read(Resource::Agent, &shared.config.node) {
        return denied(&token, Resource::Agent, "read", &shared.config.node);
    }
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

async fn status_leader(AxState(shared): S) -> Response {
    let mut members = shared.members.lock().unwrap();
    if members.used() {
        return axum::Json(json!(members.leader_address())).into_response();
    }
    axum::Json(json!(format!("{}:8300", shared.node_address))).into_response()
}

async fn status_peers(AxState(shared): S) -> Response {
    let members = shared.members.lock().unwrap();
    if members.used() {
        return axum::Json(json!(members.peers())).into_response();
    }
    axum::Json(json!([format!("{}:8300", shared.node_address)])).into_response()
}

async fn agent_members(AxState(shared): S) -> Response {
    axum::Json(shared.members.lock().unwrap().list()).into_response()
}

async fn member_beat(
    AxState(shared): S,
    axum::Json(beat): axum::Json<crate::members::Beat>,
) -> Response {
    shared.members.lock().unwrap().beat(beat);
    StatusCode::OK.into_response()
}

/// Pushes a registration change to the catalog before answering, as the agent endpoints do
/// (`syncChanges` in `agent/agent_endpoint.go`).
async fn synced(shared: &Shared) {
    if let Err(e) = crate::sync::sync_now(shared).await {
        eprintln!("consul-standin: sync to the server failed: {e:#}");
    }
}

async fn service_register(
    AxState(shared): S,
    axum::Extension(token): Tok,
    Query(params): Params,
    body: Bytes,
) -> Response {
    let reg = match state::parse_registration(&body, shared.limits()) {
        Ok(reg) => reg,
        Err(message) => return bad_request(message),
    };
    if !authz(&shared, &token).can_write(Resource::Service, &reg.service.name) {
        return denied(&token, Resource::Service, "write", &reg.service.name);
    }
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
    synced(&shared).await;
    StatusCode::OK.into_response()
}

async fn service_deregister(
    AxState(shared): S,
    axum::Extension(token): Tok,
    Path(id): Path<String>,
) -> Response {
    let removed_checks: Vec<String>;
    {
        let mut state = shared.state.lock().unwrap();
        if let Some(service) = state.services.get(&id)
            && !authz(&shared, &token).can_write(Resource::Service, &service.name)
        {
            return denied(&token, Resource::Service, "write", &service.name);
        }
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
    synced(&shared).await;
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

/// The agent's services a token may read (`agent/agent_endpoint.go` filters, never refuses).
async fn agent_services(AxState(shared): S, axum::Extension(token): Tok) -> Response {
    let authz = authz(&shared, &token);
    let state = shared.state.lock().unwrap();
    let mut hidden = false;
    let map: serde_json::Map<String, Value> = state
        .services
        .values()
        .filter(|s| {
            let ok = authz.can_read(Resource::Service, &s.name);
            hidden |= !ok;
            ok
        })
        .map(|s| (s.id.clone(), agent_service_json(s)))
        .collect();
    filtered(axum::Json(Value::Object(map)).into_response(), hidden)
}

async fn agent_service(
    AxState(shared): S,
    axum::Extension(token): Tok,
    Path(id): Path<String>,
) -> Response {
    let state = shared.state.lock().unwrap();
    match state.services.get(&id) {
        Some(s) if !authz(&shared, &token).can_read(Resource::Service, &s.name) => {
            denied(&token, Resource::Service, "read", &s.name)
        }
        Some(s) => axum::Json(agent_service_json(s)).into_response(),
        None => (StatusCode::NOT_FOUND, format!("unknown service ID: {id}")).into_response(),
    }
}

fn check_json(node: &str, state: &State, c: &Check) -> Value {
    catalog_check_json(
        node,
        state.services.get(&c.def.service_id),
        &c.for_catalog(),
    )
}

fn catalog_check_json(node: &str, service: Option<&Service>, c: &CatalogCheck) -> Value {
    json!({
        "Node": node,
        "CheckID": c.id,
        "Name": c.name,
        "Status": c.status,
        "Notes": c.notes,
        "Output": c.output,
        "ServiceID": c.service_id,
        "ServiceName": service.map(|s| s.name.as_str()).unwrap_or(""),
        "ServiceTags": service.map(|s| s.tags.clone()).unwrap_or_default(),
        "Type": c.kind,
        "Interval": c.interval,
        "Timeout": c.timeout,
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": c.create_index,
        "ModifyIndex": c.modify_index,
    })
}

fn serf_health(node: &str, index: u64) -> Value {
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
        "CreateIndex": index,
        "ModifyIndex": index,
    })
}

/// The agent's checks a token may read (filtered, as `agent/agent_endpoint.go` does).
async fn agent_checks(AxState(shared): S, axum::Extension(token): Tok) -> Response {
    let authz = authz(&shared, &token);
    let state = shared.state.lock().unwrap();
    let mut hidden = false;
    let map: serde_json::Map<String, Value> = state
        .checks
        .values()
        .filter(|c| {
            let ok = match state.services.get(&c.def.service_id) {
                Some(s) => authz.can_read(Resource::Service, &s.name),
                None => authz.can_read(Resource::Node, &shared.config.node),
            };
            hidden |= !ok;
            ok
        })
        .map(|c| (c.def.id.clone(), check_json(&shared.config.node, &state, c)))
        .collect();
    filtered(axum::Json(Value::Object(map)).into_response(), hidden)
}

/// Whether the token may write a check: `service:write` on its service, `node:write` else.
fn check_write_denied(shared: &Shared, token: &Token, state: &State, id: &str) -> Option<Response> {
    let check = state.checks.get(id)?;
    let authz = authz(shared, token);
    match state.services.get(&check.def.service_id) {
        Some(s) if !authz.can_write(Resource::Service, &s.name) => {
            Some(denied(token, Resource::Service, "write", &s.name))
        }
        None if !authz.can_write(Resource::Node, &shared.config.node) => {
            Some(denied(token, Resource::Node, "write", &shared.config.node))
        }
        _ => None,
    }
}

async fn ttl_update(
    shared: Arc<Shared>,
    token: Token,
    id: String,
    params: HashMap<String, String>,
    status: &str,
) -> Response {
    {
        let mut state = shared.state.lock().unwrap();
        if let Some(denied) = check_write_denied(&shared, &token, &state, &id) {
            return denied;
        }
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

/// `PUT /v1/agent/check/{pass,warn,fail}/<id>`: a TTL check's status.
async fn check_ttl(
    AxState(shared): S,
    axum::Extension(t): Tok,
    Path((verb, id)): Path<(String, String)>,
    Query(p): Params,
) -> Response {
    let status = match verb.as_str() {
        "pass" => PASSING,
        "warn" => WARNING,
        "fail" => CRITICAL,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ttl_update(shared, t, id, p, status).await
}

async fn check_deregister(
    AxState(shared): S,
    axum::Extension(token): Tok,
    Path(id): Path<String>,
) -> Response {
    let removed = {
        let mut state = shared.state.lock().unwrap();
        if let Some(denied) = check_write_denied(&shared, &token, &state, &id) {
            return denied;
        }
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
    synced(&shared).await;
    StatusCode::OK.into_response()
}

// ---- health and catalog (server) ----------------------------------------------------------

async fn node_sync(AxState(shared): S, axum::Json(sync): axum::Json<NodeSync>) -> Response {
    let changed = shared.state.lock().unwrap().apply_sync(sync);
    if changed {
        shared.committed();
    }
    StatusCode::OK.into_response()
}

fn node_json(name: &str, node: &state::Node) -> Value {
    json!({
        "ID": node.id,
        "Node": name,
        "Address": node.address,
        "Datacenter": DATACENTER,
        "TaggedAddresses": { "lan": node.address, "wan": node.address },
        "Meta": {},
        "CreateIndex": node.create_index,
        "ModifyIndex": node.modify_index,
    })
}

fn has_tags(service: &Service, params: &HashMap<String, String>) -> bool {
    params
        .get("tag")
        .is_none_or(|tag| service.tags.iter().any(|t| t == tag))
}

/// Every `(node name, node, service)` of the catalog named `name` with the query's tag; and
/// whether ACLs hid some (service:read on the service and node:read on the node are needed).
fn instances<'a>(
    state: &'a State,
    authz: &Authz<'_>,
    name: &str,
    params: &HashMap<String, String>,
) -> (Vec<(&'a String, &'a state::Node, &'a Service)>, bool) {
    let mut hidden = false;
    let mut out = Vec::new();
    for (node_name, node) in &state.nodes {
        for service in node
            .services
            .values()
            .filter(|s| s.name == name && has_tags(s, params))
        {
            if authz.can_read(Resource::Service, name) && authz.can_read(Resource::Node, node_name)
            {
                out.push((node_name, node, service));
            } else {
                hidden = true;
            }
        }
    }
    (out, hidden)
}

async fn health_service(
    AxState(shared): S,
    axum::Extension(token): Tok,
    Path(name): Path<String>,
    Query(params): Params,
) -> Response {
    let index = match block(&shared, &params, |s| s.services_index).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let passing_only = flag(&params, "passing");
    let authz = authz(&shared, &token);
    let state = shared.state.lock().unwrap();
    let (found, hidden) = instances(&state, &authz, &name, &params);
    let mut entries = Vec::new();
    for (node_name, node, service) in found {
        let service_checks: Vec<&CatalogCheck> = node
            .checks
            .values()
            .filter(|c| c.service_id == service.id)
            .collect();
        // `?passing` also needs the node's own checks (serfHealth, always passing here).
        if passing_only && service_checks.iter().any(|c| c.status != PASSING) {
            continue;
        }
        let mut checks = vec![serf_health(node_name, node.create_index)];
        checks.extend(
            service_checks
                .iter()
                .map(|c| catalog_check_json(node_name, Some(service), c)),
        );
        let mut service_json = agent_service_json(service);
        service_json["CreateIndex"] = json!(service.create_index);
        service_json["ModifyIndex"] = json!(service.modify_index);
        entries.push(
            json!({ "Node": node_json(node_name, node), "Service": service_json, "Checks": checks }),
        );
    }
    filtered(json_indexed(index, Value::Array(entries)), hidden)
}

async fn catalog_services(
    AxState(shared): S,
    axum::Extension(token): Tok,
    Query(params): Params,
) -> Response {
    let index = match block(&shared, &params, |s| s.services_index).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let authz = authz(&shared, &token);
    let state = shared.state.lock().unwrap();
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut hidden = false;
    // Every real cluster lists its own servers as the `consul` service.
    if authz.can_read(Resource::Service, "consul") {
        map.insert("consul".into(), BTreeSet::new());
    }
    for s in state.nodes.values().flat_map(|n| n.services.values()) {
        if !authz.can_read(Resource::Service, &s.name) {
            hidden = true;
            continue;
        }
        map.entry(s.name.clone())
            .or_default()
            .extend(s.tags.iter().cloned());
    }
    filtered(json_indexed(index, json!(map)), hidden)
}

async fn catalog_service(
    AxState(shared): S,
    axum::Extension(token): Tok,
    Path(name): Path<String>,
    Query(params): Params,
) -> Response {
    let index = match block(&shared, &params, |s| s.services_index).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let authz = authz(&shared, &token);
    let state = shared.state.lock().unwrap();
    let (found, hidden) = instances(&state, &authz, &name, &params);
    let entries: Vec<Value> = found
        .into_iter()
        .map(|(node_name, node, s)| {
            json!({
                "ID": node.id,
                "Node": node_name,
                "Address": node.address,
                "Datacenter": DATACENTER,
                "TaggedAddresses": { "lan": node.address, "wan": node.address },
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
    filtered(json_indexed(index, Value::Array(entries)), hidden)
}

async fn catalog_nodes(
    AxState(shared): S,
    axum::Extension(token): Tok,
    Query(params): Params,
) -> Response {
    let index = match block(&shared, &params, |s| s.services_index).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let authz = authz(&shared, &token);
    let state = shared.state.lock().unwrap();
    let mut hidden = false;
    let nodes: Vec<Value> = state
        .nodes
        .iter()
        .filter(|(name, _)| {
            let ok = authz.can_read(Resource::Node, name);
            hidden |= !ok;
            ok
        })
        .map(|(name, node)| node_json(name, node))
        .collect();
    filtered(json_indexed(index, Value::Array(nodes)), hidden)
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

async fn kv_get_root(s: S, t: Tok, p: Params) -> Response {
    kv_get_inner(s, t, String::new(), p).await
}
async fn kv_get(s: S, t: Tok, Path(key): Path<String>, p: Params) -> Response {
    kv_get_inner(s, t, key, p).await
}

async fn kv_get_inner(
    AxState(shared): S,
    axum::Extension(token): Tok,
    key: String,
    Query(params): Params,
) -> Response {
    let keys_only = params.contains_key("keys");
    let recurse = keys_only || flag(&params, "recurse");
    let authz = authz(&shared, &token);
    // A single key needs key:read; lists are filtered (`FilterDirEnt`).
    if !recurse && !authz.can_read(Resource::Key, &key) {
        return denied(&token, Resource::Key, "read", &key);
    }
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
    let mut hidden = false;
    let in_prefix: Vec<&KvEntry> = state
        .kv
        .range(key.clone()..)
        .take_while(|(k, _)| k.starts_with(key.as_str()))
        .map(|(_, e)| e)
        .filter(|e| {
            let ok = authz.can_read(Resource::Key, &e.key);
            hidden |= !ok;
            ok
        })
        .collect();
    if keys_only {
        let separator = params.get("separator").filter(|s| !s.is_empty());
        let mut keys: Vec<String> = Vec::new();
        for entry in &in_prefix {
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
        // Consul answers an empty list at the root, 404 under any other prefix
        // (`KVSGetKeys` in `agent/kvs_endpoint.go`).
        if keys.is_empty() && !key.is_empty() {
            return filtered(not_found(), hidden);
        }
        return filtered(json_indexed(index, json!(keys)), hidden);
    }
    if recurse {
        let entries: Vec<Value> = in_prefix.iter().map(|e| kv_json(e)).collect();
        if entries.is_empty() {
            return filtered(not_found(), hidden);
        }
        return filtered(json_indexed(index, Value::Array(entries)), hidden);
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

async fn kv_put_root(s: S, t: Tok, p: Params, body: Bytes) -> Response {
    kv_put_inner(s, t, String::new(), p, body).await
}
async fn kv_put(s: S, t: Tok, Path(key): Path<String>, p: Params, body: Bytes) -> Response {
    kv_put_inner(s, t, key, p, body).await
}

/// 400 when more than one of `flags` is given (`conflictingFlags` in `agent/kvs_endpoint.go`),
/// with the query re-encoded as Go's `url.Values.Encode` does (sorted by key).
fn conflicting(params: &HashMap<String, String>, flags: &[&str]) -> Option<Response> {
    if flags.iter().filter(|f| params.contains_key(**f)).count() < 2 {
        return None;
    }
    let sorted: BTreeMap<&String, &String> = params.iter().collect();
    let encoded: Vec<String> = sorted
        .into_iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect();
    Some(bad_request(format!(
        "Conflicting flags: {}",
        encoded.join("&")
    )))
}

fn form_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
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
    axum::Extension(token): Tok,
    key: String,
    Query(params): Params,
    body: Bytes,
) -> Response {
    if let Some(r) = conflicting(&params, &["cas", "acquire", "release"]) {
        return r;
    }
    if key.is_empty() {
        return bad_request("Missing key name");
    }
    if !authz(&shared, &token).can_write(Resource::Key, &key) {
        return denied(&token, Resource::Key, "write", &key);
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
    let changed = {
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
                    state.kv_set(&key, body.to_vec(), flags, None, false)
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
                    state.kv_set(&key, body.to_vec(), flags, Some(None), false)
                }
                _ => return axum::Json(false).into_response(),
            }
        } else {
            state.kv_set(&key, body.to_vec(), flags, None, false)
        }
    };
    if changed {
        shared.committed();
    }
    axum::Json(true).into_response()
}

async fn kv_delete_root(s: S, t: Tok, p: Params) -> Response {
    kv_delete_inner(s, t, String::new(), p).await
}
async fn kv_delete(s: S, t: Tok, Path(key): Path<String>, p: Params) -> Response {
    kv_delete_inner(s, t, key, p).await
}

async fn kv_delete_inner(
    AxState(shared): S,
    axum::Extension(token): Tok,
    key: String,
    Query(params): Params,
) -> Response {
    if let Some(r) = conflicting(&params, &["recurse", "cas"]) {
        return r;
    }
    let recurse = flag(&params, "recurse");
    if key.is_empty() && !recurse {
        return bad_request("Missing key name");
    }
    if !authz(&shared, &token).can_write(Resource::Key, &key) {
        return denied(&token, Resource::Key, "write", &key);
    }
    let cas = match parse_u64(&params, "cas") {
        Ok(v) => v,
        Err(r) => return r,
    };
    {
        let mut state = shared.state.lock().unwrap();
        // A CAS delete of a key that is not there succeeds (`kvsDeleteCASTxn`).
        if let Some(cas) = cas
            && let Some(e) = state.kv.get(&key)
            && e.modify_index != cas
        {
            return axum::Json(false).into_response();
        }
        state.kv_delete(&key, recurse);
    }
    shared.committed();
    axum::Json(true).into_response()
}

// ---- transactions -----------------------------------------------------------------------------

/// `maxTxnOps` in agent/txn_endpoint.go.
const TXN_MAX_OPS: usize = 128;
/// `txn_max_req_len`'s default (the suggested Raft entry size), agent/txn_endpoint.go.
const TXN_MAX_LEN: usize = 512 * 1024;

/// Decodes the body as `convertOps` does: the size first, then the operations (keys in any
/// case), their count, each value's size.
fn txn_ops(body: &[u8]) -> Result<Vec<crate::txn::KvOp>, Response> {
    let too_large = |text: String| (StatusCode::PAYLOAD_TOO_LARGE, text).into_response();
    if body.len() > TXN_MAX_LEN {
        return Err(too_large(format!(
            "Request body too large, max size: {TXN_MAX_LEN} bytes"
        )));
    }
    let parse_error = |e: String| bad_request(format!("Failed to parse body: {e}"));
    let raw: Value = serde_json::from_slice(body).map_err(|e| parse_error(e.to_string()))?;
    let Value::Array(items) = state::normalize_keys(raw) else {
        return Err(parse_error("expected a JSON array of operations".into()));
    };
    if items.len() > TXN_MAX_OPS {
        return Err(too_large(format!(
            "Transaction contains too many operations ({} > {TXN_MAX_OPS})",
            items.len()
        )));
    }
    let mut ops = Vec::new();
    for item in items {
        let Some(Value::Object(kv)) = item.get("kv") else {
            return Err(parse_error(
                "the Consul stand-in models KV operations only".into(),
            ));
        };
        let text = |k: &str| kv.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let number = |k: &str| kv.get(k).and_then(Value::as_u64).unwrap_or(0);
        let value = match kv.get("value") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(v)) => state::b64decode(v)
                .map_err(|e| parse_error(format!("failed to decode value: {e}")))?,
            Some(other) => return Err(parse_error(format!("unexpected value type: {other}"))),
        };
        if value.len() > KV_MAX {
            return Err(too_large(format!(
                "Value for key {:?} is too large ({} > {KV_MAX} bytes)",
                text("key"),
                value.len()
            )));
        }
        ops.push(crate::txn::KvOp {
            verb: text("verb"),
            key: text("key"),
            value,
            flags: number("flags"),
            index: number("index"),
            session: text("session"),
        });
    }
    Ok(ops)
}

/// `PUT /v1/txn`: 200 with the results, or 409 with every failed operation and nothing applied.
/// ACLs are checked per operation, and a denied one fails the transaction like any other
/// (`Permission denied`, agent/consul/txn_endpoint.go `preCheck`).
async fn txn(AxState(shared): S, axum::Extension(token): Tok, body: Bytes) -> Response {
    let ops = match txn_ops(&body) {
        Ok(ops) => ops,
        Err(r) => return r,
    };
    let authz = authz(&shared, &token);
    let denied: Vec<crate::txn::OpError> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| {
            let read_only = op.verb.starts_with("get") || op.verb.starts_with("check");
            if read_only {
                !authz.can_read(Resource::Key, &op.key)
            } else {
                !authz.can_write(Resource::Key, &op.key)
            }
        })
        .map(|(op_index, _)| crate::txn::OpError {
            op_index,
            what: "Permission denied".into(),
        })
        .collect();
    let outcome = if denied.is_empty() {
        shared.state.lock().unwrap().kv_txn(&ops)
    } else {
        Err(denied)
    };
    match outcome {
        Ok(done) => {
            if done.changed {
                shared.committed();
            }
            let results: Vec<Value> = done
                .results
                .iter()
                .map(|e| json!({ "KV": kv_json(e) }))
                .collect();
            axum::Json(json!({ "Results": results, "Errors": null })).into_response()
        }
        Err(errors) => {
            let errors: Vec<Value> = errors
                .iter()
                .map(|e| json!({ "OpIndex": e.op_index, "What": e.what }))
                .collect();
            (
                StatusCode::CONFLICT,
                axum::Json(json!({ "Results": null, "Errors": errors })),
            )
                .into_response()
        }
    }
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

async fn session_create(AxState(shared): S, axum::Extension(token): Tok, body: Bytes) -> Response {
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
            // "0s" means no TTL (`agent/consul/session_endpoint.go` checks only ttl != 0).
            Ok(d) if d.is_zero() => {}
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
    // Agents fill in their own node; the server needs a registered one.
    let node = text("node");
    if node.is_empty() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "Must provide Node").into_response();
    }
    if !authz(&shared, &token).can_write(Resource::Session, &node) {
        return denied(&token, Resource::Session, "write", &node);
    }
    if !shared.state.lock().unwrap().nodes.contains_key(&node) {
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
            node,
            lock_delay,
            behavior,
            expires: None,
            ttl,
            create_index: index,
            modify_index: index,
        };
        let mut session = session;
        session.expires = session.expiry(Instant::now());
        state.sessions.insert(id.clone(), session);
    }
    shared.committed();
    axum::Json(json!({ "ID": id })).into_response()
}

fn session_write_denied(shared: &Shared, token: &Token, id: &str) -> Option<Response> {
    let state = shared.state.lock().unwrap();
    let node = state.sessions.get(id)?.node.clone();
    (!authz(shared, token).can_write(Resource::Session, &node))
        .then(|| denied(token, Resource::Session, "write", &node))
}

async fn session_renew(
    AxState(shared): S,
    axum::Extension(token): Tok,
    Path(id): Path<String>,
) -> Response {
    if let Some(denied) = session_write_denied(&shared, &token, &id) {
        return denied;
    }
    let mut state = shared.state.lock().unwrap();
    match state.sessions.get_mut(&id) {
        Some(session) => {
            session.expires = session.expiry(Instant::now());
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

async fn session_destroy(
    AxState(shared): S,
    axum::Extension(token): Tok,
    Path(id): Path<String>,
) -> Response {
    if let Some(denied) = session_write_denied(&shared, &token, &id) {
        return denied;
    }
    let changed = shared.state.lock().unwrap().invalidate_session(&id);
    if changed {
        shared.committed();
    }
    axum::Json(true).into_response()
}

/// Sessions matching `keep` that the token may read (session:read on their node), filtered.
async fn sessions_where(
    shared: Arc<Shared>,
    token: Token,
    params: HashMap<String, String>,
    keep: impl Fn(&Session) -> bool,
) -> Response {
    let index = match block(&shared, &params, |s| s.sessions_index).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let authz = authz(&shared, &token);
    let state = shared.state.lock().unwrap();
    let mut hidden = false;
    let list: Vec<Value> = state
        .sessions
        .values()
        .filter(|s| keep(s))
        .filter(|s| {
            let ok = authz.can_read(Resource::Session, &s.node);
            hidden |= !ok;
            ok
        })
        .map(session_json)
        .collect();
    filtered(json_indexed(index, Value::Array(list)), hidden)
}

async fn session_info(
    AxState(shared): S,
    axum::Extension(token): Tok,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    sessions_where(shared, token, params, |s| s.id == id).await
}

async fn session_list(
    AxState(shared): S,
    axum::Extension(token): Tok,
    Query(params): Params,
) -> Response {
    sessions_where(shared, token, params, |_| true).await
}

async fn session_node(
    AxState(shared): S,
    axum::Extension(token): Tok,
    Path(node): Path<String>,
    Query(params): Params,
) -> Response {
    sessions_where(shared, token, params, |s| s.node == node).await
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
