//! The edge: a Caddy 2 container per host of the environment's edge role, owned by fleet
//! (label `fleet.kind=edge`, shared by every project on the host), on fixed ports, in the
//! host's network. fleet talks to it through Caddy's admin API (`localhost:2019` on the host,
//! reached through the SSH session like the Consul agent) and pushes each route's upstreams:
//! the passing instances of its Consul service on every host. See docs/edge.md.

pub mod caddy;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{CreateContainerOptions, CreateImageOptions};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::consul::{ConsulClient, QueryOptions};
use crate::desired::{DesiredEdge, EdgeTls};
use crate::errors::chain;
use crate::host::HostSession;

/// The edge container's `fleet.kind` (`identity::labels::KIND`): no app instance.
pub const KIND: &str = "edge";
use crate::identity::labels::KIND as KIND_LABEL;
/// A digest of how the container was made (image, command, mounts): another one replaces it.
pub const SPEC_LABEL: &str = "fleet.edge.spec";
pub const CONTAINER: &str = "fleet-edge";
pub const ADMIN_PORT: u16 = 2019;
/// Caddy checks the `Host` of admin requests against its listen address.
const ADMIN_HOST: &str = "localhost:2019";

/// What observe found of the edge on one host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObservedEdge {
    /// The edge container, when there is one.
    pub container: Option<EdgeContainer>,
    /// Its config (`GET /config/`), when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    /// Why the config could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeContainer {
    pub id: String,
    pub image: String,
    pub spec: String,
    pub running: bool,
}

/// One upstream as `GET /reverse_proxy/upstreams` lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UpstreamStatus {
    pub address: String,
    #[serde(default)]
    pub num_requests: i64,
    #[serde(default)]
    pub fails: i64,
}

/// How many times a request to the admin API is tried again after its connection failed.
const ADMIN_TRIES: u32 = 5;

/// The admin API of one host's edge.
#[derive(Clone)]
pub struct Admin {
    pub host: String,
    base: String,
    client: reqwest::Client,
}

impl Admin {
    pub async fn connect(s: &HostSession) -> Result<Admin, String> {
        let addr = s
            .forward_tcp("127.0.0.1", ADMIN_PORT)
            .await
            .map_err(|e| e.to_string())?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(4))
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Admin {
            host: s.target().name.clone(),
            base: format!("http://{addr}"),
            client,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let request = || {
            let r = self
                .client
                .request(method.clone(), format!("{}{path}", self.base))
                .header("Host", ADMIN_HOST);
            match body {
                Some(b) => r.json(b),
                None => r,
            }
        };
        // Caddy restarts its admin server on every config load: a request sent just then
        // finds the connection refused or closed before any answer. GETs are tried again,
        // and the others when the connection was not made (nothing was sent); a timeout (a
        // host lost) is not.
        let mut tries = 0;
        let resp = loop {
            match request().send().await {
                Ok(r) => break r,
                Err(e)
                    if tries < ADMIN_TRIES
                        && !e.is_timeout()
                        && (e.is_connect() || method == reqwest::Method::GET) =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(format!(
                        "edge {}: {method} {path}: {}",
                        self.host,
                        chain(&e)
                    ));
                }
            }
        };
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!(
                "edge {}: {method} {path}: {status}: {}",
                self.host,
                text.trim()
            ));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| format!("edge {}: {path}: {e}", self.host))
    }

    pub async fn config(&self) -> Result<Value, String> {
        self.call(reqwest::Method::GET, "/config/", None).await
    }
    pub async fn load(&self, cfg: &Value) -> Result<(), String> {
        self.call(reqwest::Method::POST, "/load", Some(cfg))
            .await
            .map(|_| ())
    }
    /// PUT at a config path: inserts into an array at an index, creates a missing key.
    pub async fn put(&self, path: &str, v: &Value) -> Result<(), String> {
        self.call(reqwest::Method::PUT, &format!("/config/{path}"), Some(v))
            .await
            .map(|_| ())
    }
    /// POST at a config path: appends to an array, sets a key.
    pub async fn post(&self, path: &str, v: &Value) -> Result<(), String> {
        self.call(reqwest::Method::POST, &format!("/config/{path}"), Some(v))
            .await
            .map(|_| ())
    }
    /// PATCH at a config path (it must exist): replaces it.
    pub async fn patch(&self, path: &str, v: &Value) -> Result<(), String> {
        self.call(reqwest::Method::PATCH, &format!("/config/{path}"), Some(v))
            .await
            .map(|_| ())
    }
    pub async fn patch_id(&self, id: &str, sub: &str, v: &Value) -> Result<(), String> {
        self.call(reqwest::Method::PATCH, &format!("/id/{id}{sub}"), Some(v))
            .await
            .map(|_| ())
    }
    pub async fn delete_id(&self, id: &str) -> Result<(), String> {
        self.call(reqwest::Method::DELETE, &format!("/id/{id}"), None)
            .await
            .map(|_| ())
    }
    pub async fn upstreams(&self) -> Result<Vec<UpstreamStatus>, String> {
        let v = self
            .call(reqwest::Method::GET, "/reverse_proxy/upstreams", None)
            .await?;
        if v.is_null() {
            return Ok(Vec::new());
        }
        serde_json::from_value(v).map_err(|e| format!("edge {}: upstreams: {e}", self.host))
    }
    /// The root certificate (PEM) of Caddy's internal CA.
    pub async fn ca_root(&self) -> Result<String, String> {
        let v = self
            .call(reqwest::Method::GET, "/pki/ca/local", None)
            .await?;
        v.get("root_certificate")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("edge {}: no root_certificate", self.host))
    }
}

/// The digest the edge container carries in `fleet.edge.spec`.
pub fn container_spec(image: &str) -> String {
    let doc = serde_json::json!({ "image": image, "cmd": command(), "v": 1 });
    hex::encode(&Sha256::digest(doc.to_string())[..6])
}

fn command() -> Vec<&'static str> {
    // `--resume`: a restarted (or replaced) edge starts with the config it last had, every
    // project's routes included, saved by Caddy under /config.
    vec!["caddy", "run", "--resume"]
}

/// The edge container on a host (`fleet.kind=edge`), if any.
pub async fn find_container(docker: &Docker) -> Result<Option<EdgeContainer>, String> {
    let list = crate::host::containers_labelled(docker, &[format!("{KIND_LABEL}={KIND}")])
        .await
        .map_err(|e| format!("listing containers: {}", chain(&e)))?;
    Ok(list.into_iter().next().map(|c| {
        let l = c.labels.unwrap_or_default();
        EdgeContainer {
            id: c.id.unwrap_or_default(),
            image: c.image.unwrap_or_default(),
            spec: l.get(SPEC_LABEL).cloned().unwrap_or_default(),
            running: c.state.map(|s| s.to_string()).as_deref() == Some("running"),
        }
    }))
}

/// Observe the edge of one host: its container and, when it runs, its config.
pub async fn observe(s: &HostSession) -> Option<ObservedEdge> {
    let docker = s.docker().await.ok()?;
    let container = find_container(&docker).await.ok()??;
    let mut o = ObservedEdge {
        container: Some(container.clone()),
        ..Default::default()
    };
    if container.running {
        match Admin::connect(s).await {
            Ok(a) => match a.config().await {
                Ok(c) => o.config = Some(c),
                Err(e) => o.error = Some(e),
            },
            Err(e) => o.error = Some(e),
        }
    }
    Some(o)
}

/// Make sure the edge container runs the desired image. Returns what was done, if anything.
pub async fn ensure_container(
    docker: &Docker,
    edge: &DesiredEdge,
    auth: Option<bollard::auth::DockerCredentials>,
) -> Result<Option<String>, String> {
    let spec = container_spec(&edge.image);
    let existing = find_container(docker).await?;
    if let Some(c) = &existing
        && c.spec == spec
    {
        if !c.running {
            start(docker, &c.id).await?;
            return Ok(Some("started".into()));
        }
        return Ok(None);
    }
    if docker.inspect_image(&edge.image).await.is_err() {
        let mut pull = docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(edge.image.clone()),
                ..Default::default()
            }),
            None,
            auth,
        );
        while let Some(r) = pull.next().await {
            r.map_err(|e| format!("pulling {}: {}", edge.image, chain(&e)))?;
        }
    }
    if let Some(c) = &existing {
        crate::host::force_remove(docker, &c.id)
            .await
            .map_err(|e| format!("removing the old edge: {}", chain(&e)))?;
    }
    let labels: HashMap<String, String> = [
        (KIND_LABEL.to_string(), KIND.to_string()),
        (SPEC_LABEL.to_string(), spec),
    ]
    .into();
    let body = ContainerCreateBody {
        image: Some(edge.image.clone()),
        cmd: Some(command().into_iter().map(String::from).collect()),
        env: Some(vec![
            "XDG_DATA_HOME=/data".into(),
            "XDG_CONFIG_HOME=/config".into(),
        ]),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some("host".into()),
            binds: Some(vec![
                "fleet-edge-data:/data".into(),
                "fleet-edge-config:/config".into(),
            ]),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = match docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(CONTAINER.into()),
                platform: String::new(),
            }),
            body,
        )
        .await
    {
        Ok(c) => c,
        // Another project's deploy is creating it at this moment (a shared edge): the same
        // spec is ours too. Docker reserves the name before the container is listed, so
        // look for it a little while.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) if existing.is_none() => return adopt(docker, &container_spec(&edge.image)).await,
        Err(e) => return Err(format!("creating the edge: {}", chain(&e))),
    };
    start(docker, &created.id).await?;
    Ok(Some(if existing.is_some() {
        "replaced".into()
    } else {
        "created".into()
    }))
}

/// After a name conflict: the edge another deploy just created, once it is listed.
async fn adopt(docker: &Docker, spec: &str) -> Result<Option<String>, String> {
    let t0 = Instant::now();
    loop {
        match find_container(docker).await? {
            Some(c) if c.spec == spec => {
                if !c.running {
                    start(docker, &c.id).await?;
                }
                return Ok(None);
            }
            Some(_) => {
                return Err(format!(
                    "creating the edge: another deploy created {CONTAINER} at the same time \
                     with another image; run the deploy again"
                ));
            }
            None if t0.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None => {
                return Err(format!(
                    "creating the edge: a container named {CONTAINER} is there but fleet did \
                     not make it (no {KIND_LABEL}={KIND} label); remove or rename it on that host"
                ));
            }
        }
    }
}

/// Start the edge container; one already started (by another project's deploy) is fine.
async fn start(docker: &Docker, id: &str) -> Result<(), String> {
    match docker.start_container(id, None).await {
        Ok(())
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 304, ..
        }) => Ok(()),
        Err(e) => Err(format!("starting the edge: {}", chain(&e))),
    }
}

/// Wait until the admin API answers (a fresh container), then return its config.
pub async fn wait_admin(a: &Admin, within: Duration) -> Result<Value, String> {
    let t0 = Instant::now();
    loop {
        match a.config().await {
            Ok(c) => return Ok(c),
            Err(e) if t0.elapsed() > within => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The passing instances of `service` on every host, as `dial`s (sorted), minus `excluded`.
pub async fn passing(
    consul: &ConsulClient,
    project: &str,
    env: &str,
    service: &str,
    excluded: &[String],
) -> Result<Vec<String>, String> {
    let (mp, me) = (
        crate::identity::labels::meta_key(crate::identity::labels::PROJECT),
        crate::identity::labels::meta_key(crate::identity::labels::ENV),
    );
    let entries = consul
        .health_service(service, true, QueryOptions::default())
        .await
        .map_err(|e| format!("reading the passing instances of {service}: {e}"))?;
    let mut out: Vec<String> = entries
        .value
        .iter()
        // A service name may be another project's too: only this environment's instances.
        .filter(|e| {
            e.service.meta.get(&mp).map(String::as_str) == Some(project)
                && e.service.meta.get(&me).map(String::as_str) == Some(env)
        })
        .map(|e| {
            let addr = if e.service.address.is_empty() {
                e.node.address.clone()
            } else {
                e.service.address.clone()
            };
            caddy::dial(&addr, e.service.port)
        })
        .filter(|d| !excluded.contains(d))
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Bring one edge's config to this environment's routes (`upstreams` per app), touching only
/// the ids this environment owns. Returns the changes made (`+ route ...`, `~ ...`).
pub async fn converge(
    a: &Admin,
    project: &str,
    env: &str,
    edge: &DesiredEdge,
    upstreams: &HashMap<String, Vec<String>>,
    cert: Option<(String, String)>,
) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    let mut cfg = wait_admin(a, Duration::from_secs(15)).await?;
    let server_path = format!("apps/http/servers/{}", caddy::SERVER);
    if cfg.pointer(&format!("/{server_path}")).is_none() {
        if cfg.is_null() || cfg.get("apps").is_none() {
            a.load(&caddy::skeleton(edge)).await?;
        } else {
            // Someone else's config: add fleet's server and leave the rest.
            let skel = caddy::skeleton(edge);
            for (p, v) in [
                ("apps/http", &skel["apps"]["http"]),
                ("apps/tls", &skel["apps"]["tls"]),
            ] {
                if cfg.pointer(&format!("/{p}")).is_none() {
                    a.put(p, v).await?;
                }
            }
            if cfg.pointer(&format!("/{server_path}")).is_none() {
                a.put(&server_path, &caddy::server(edge, Vec::new()))
                    .await?;
            }
        }
        done.push("config".to_string());
        cfg = a.config().await?;
    }

    // The shared settings: ports and the server's listeners (the last deploy's win).
    let observed_server = cfg
        .pointer(&format!("/{server_path}"))
        .cloned()
        .unwrap_or(Value::Null);
    if caddy::settings_of(&observed_server) != caddy::server_settings(edge)
        || caddy::http_settings(edge)
            .iter()
            .any(|(k, v)| cfg.pointer(&format!("/apps/http/{k}")) != Some(v))
    {
        let mut http = cfg.pointer("/apps/http").cloned().unwrap_or_default();
        for (k, v) in caddy::http_settings(edge) {
            http[k] = v;
        }
        http["servers"][caddy::SERVER] = caddy::server(edge, caddy::routes_of(&cfg));
        a.patch("apps/http", &http).await?;
        done.push("config".to_string());
        cfg = a.config().await?;
    }

    let prefix = caddy::owner_prefix(project, env);
    // Routes.
    for r in &edge.routes {
        let ups = upstreams.get(&r.app).cloned().unwrap_or_default();
        let want = caddy::route(project, env, r, &ups);
        let change = ensure_route(a, &server_path, &caddy::routes_of(&cfg), &r.path, &want).await?;
        match change {
            Change::Created => done.push(format!("+ route {} -> {}", r.label(), r.app)),
            Change::Replaced => done.push(format!("~ route {} -> {}", r.label(), r.app)),
            Change::Patched | Change::Unchanged => {}
        }
        if change != Change::Unchanged {
            cfg = a.config().await?;
        }
    }
    // TLS policy and certificate.
    let policy = caddy::tls_policy(project, env, edge);
    let tid = caddy::tls_id(project, env);
    let have_policy = find_id(&cfg, &tid);
    match (&policy, have_policy) {
        (Some(p), Some(h)) if *p == h => {}
        (Some(p), Some(_)) => a.patch_id(&tid, "", p).await?,
        (Some(p), None) => {
            if cfg.pointer("/apps/tls/automation/policies").is_none() {
                a.put(
                    "apps/tls/automation",
                    &serde_json::json!({ "policies": [] }),
                )
                .await?;
            }
            // Before any catch-all policy of someone else.
            let n = a
                .config()
                .await?
                .pointer("/apps/tls/automation/policies")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if n == 0 {
                a.post("apps/tls/automation/policies", p).await?;
            } else {
                a.put("apps/tls/automation/policies/0", p).await?;
            }
        }
        (None, Some(_)) => a.delete_id(&tid).await?,
        (None, None) => {}
    }
    let cid = caddy::cert_id(project, env);
    let have_cert = find_id(&cfg, &cid);
    match (cert, have_cert) {
        (Some((c, k)), have) => {
            let want = serde_json::json!({ "@id": cid, "certificate": c, "key": k, "tags": [prefix.clone()] });
            if have.as_ref() != Some(&want) {
                if have.is_some() {
                    a.patch_id(&cid, "", &want).await?;
                } else if cfg.pointer("/apps/tls/certificates/load_pem").is_some() {
                    a.post("apps/tls/certificates/load_pem", &want).await?;
                } else if cfg.pointer("/apps/tls/certificates").is_some() {
                    a.put("apps/tls/certificates/load_pem", &serde_json::json!([want]))
                        .await?;
                } else {
                    a.put(
                        "apps/tls/certificates",
                        &serde_json::json!({ "load_pem": [want] }),
                    )
                    .await?;
                }
                done.push("~ certificate".into());
            }
        }
        (None, Some(_)) => a.delete_id(&cid).await?,
        (None, None) => {}
    }
    // Routes of this environment no longer in the manifest.
    let cfg = a.config().await?;
    for id in caddy::owned_ids(&cfg, &prefix) {
        let app = id.strip_prefix(&prefix).unwrap_or_default();
        if app == "tls" || app == "cert" {
            continue;
        }
        if !edge.routes.iter().any(|r| r.app == app) {
            a.delete_id(&id).await?;
            done.push(format!("- route {app}"));
        }
    }
    Ok(done)
}

/// What `ensure_route` did to a route.
#[derive(PartialEq)]
enum Change {
    Unchanged,
    /// Only its upstreams were new.
    Patched,
    Created,
    Replaced,
}

/// Make the route `want` (by its `@id`) one of the server's `routes` (as observed): patched
/// whole when only its upstreams differ (one PATCH, one reload), else replaced or inserted
/// before the first route with a shorter prefix than `path`.
async fn ensure_route(
    a: &Admin,
    server_path: &str,
    routes: &[Value],
    path: &str,
    want: &Value,
) -> Result<Change, String> {
    let id = want["@id"].as_str().unwrap_or_default();
    let change = match routes
        .iter()
        .find(|x| x.get("@id").and_then(Value::as_str) == Some(id))
    {
        Some(have) if have == want => return Ok(Change::Unchanged),
        Some(have) if caddy::without_upstreams(have) == caddy::without_upstreams(want) => {
            a.patch_id(id, "", want).await?;
            return Ok(Change::Patched);
        }
        Some(_) => {
            a.delete_id(id).await?;
            Change::Replaced
        }
        None => Change::Created,
    };
    let rest = match change {
        Change::Replaced => caddy::routes_of(&a.config().await?),
        _ => routes.to_vec(),
    };
    // PUT inserts before an index; POST appends.
    let i = caddy::insert_index(&rest, path);
    if i >= rest.len() {
        a.post(&format!("{server_path}/routes"), want).await?;
    } else {
        a.put(&format!("{server_path}/routes/{i}"), want).await?;
    }
    Ok(change)
}

/// Remove every id of this environment from an edge (destroy, or no public app left).
pub async fn remove_owned(a: &Admin, project: &str, env: &str) -> Result<usize, String> {
    let cfg = a.config().await?;
    let ids = caddy::owned_ids(&cfg, &caddy::owner_prefix(project, env));
    for id in &ids {
        a.delete_id(id).await?;
    }
    Ok(ids.len())
}

/// The object with `@id == id` anywhere in `config`.
pub fn find_id(config: &Value, id: &str) -> Option<Value> {
    match config {
        Value::Object(o) => {
            if o.get("@id").and_then(Value::as_str) == Some(id) {
                return Some(config.clone());
            }
            o.values().find_map(|v| find_id(v, id))
        }
        Value::Array(a) => a.iter().find_map(|v| find_id(v, id)),
        _ => None,
    }
}

/// The given certificate and key of `[edge] tls = { cert, key }`, read now.
pub fn read_cert(
    edge: &DesiredEdge,
) -> Result<Option<(String, String)>, crate::manifest::secret::SecretError> {
    use crate::manifest::secret::read;
    match &edge.tls {
        EdgeTls::Files { cert, key } => Ok(Some((read(cert)?, read(key)?))),
        _ => Ok(None),
    }
}

/// Evidence that no edge sends requests to `dials` any more: each edge's config lists none of
/// them, and Caddy's upstream table has none of them with requests in flight. Polled every
/// 50 ms up to `within`; `Err` names what was still seen.
pub async fn wait_drained(
    admins: &[Admin],
    dials: &[String],
    within: Duration,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    loop {
        let mut busy = Vec::new();
        for a in admins {
            let in_config = match a.config().await {
                Ok(c) => caddy::routes_of(&c)
                    .iter()
                    .flat_map(caddy::upstreams_of)
                    .any(|u| dials.contains(&u)),
                Err(e) => {
                    busy.push(e);
                    continue;
                }
            };
            if in_config {
                busy.push(format!("edge {} still routes to it", a.host));
                continue;
            }
            match a.upstreams().await {
                Ok(ups) => {
                    for u in ups.iter().filter(|u| dials.contains(&u.address)) {
                        if u.num_requests > 0 {
                            busy.push(format!(
                                "edge {}: {} request(s) in flight to {}",
                                a.host, u.num_requests, u.address
                            ));
                        }
                    }
                }
                Err(e) => busy.push(e),
            }
        }
        if busy.is_empty() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() >= within {
            return Err(busy.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub mod lock;
pub mod sync;

/// How long a converge waits for another project's converge of the same edge.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Make the edge of an environment what it should be: the container on each edge host, then
/// the routes (with the passing instances as upstreams), TLS policy and certificate. Hosts in
/// parallel. Returns the sync handle and the changes made per host.
pub async fn setup(
    project: &str,
    env: &str,
    edge: &DesiredEdge,
    sessions: &[&HostSession],
    consul: ConsulClient,
    auth: Option<bollard::auth::DockerCredentials>,
) -> Result<(sync::EdgeSync, Vec<(String, String)>), String> {
    let cert = read_cert(edge).map_err(|e| e.to_string())?;
    let mine: Vec<&HostSession> = sessions
        .iter()
        .copied()
        .filter(|s| edge.hosts.contains(&s.target().name))
        .collect();
    let probe = sync::EdgeSync::new(project, env, edge.clone(), Vec::new(), consul.clone());
    let upstreams = probe.upstreams().await?;
    let results = futures_util::future::join_all(mine.iter().map(|s| {
        let (auth, cert, upstreams, consul) = (auth.clone(), cert.clone(), &upstreams, &consul);
        async move {
            let host = s.target().name.clone();
            let on_host = async {
                let docker = s.docker().await.map_err(|e| e.to_string())?;
                let mut done = Vec::new();
                if let Some(d) = ensure_container(&docker, edge, auth).await? {
                    done.push(format!("container {d} ({})", edge.image));
                }
                let a = Admin::connect(s).await?;
                let holder = format!("{project}/{env}");
                let held = lock::acquire(consul, &s.target().address, &holder, LOCK_WAIT).await?;
                let converged = converge(&a, project, env, edge, upstreams, cert).await;
                if let Some(l) = held {
                    l.release().await;
                }
                done.extend(converged?);
                Ok::<_, String>((a, done))
            };
            let (a, done) = on_host.await.map_err(|e| format!("{host}: {e}"))?;
            Ok::<_, String>((a, host, done))
        }
    }))
    .await;
    let mut admins = Vec::new();
    let mut changes = Vec::new();
    for r in results {
        let (a, host, done) = r?;
        for d in done {
            changes.push((host.clone(), d));
        }
        admins.push(a);
    }
    Ok((
        sync::EdgeSync::new(project, env, edge.clone(), admins, consul),
        changes,
    ))
}

/// One route as `fleet status` shows it: how many upstreams each edge sends it to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteStatus {
    /// `koa.localhost/`.
    pub route: String,
    pub app: String,
    pub edges: Vec<EdgeRouteStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeRouteStatus {
    pub host: String,
    /// Upstreams in the edge's config for this route (`None`: the route is not there).
    pub upstreams: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every route of `edge` on each of its hosts (`sessions`: host name and session).
pub async fn route_status(
    project: &str,
    env: &str,
    edge: &DesiredEdge,
    sessions: Vec<(&str, &HostSession)>,
) -> Vec<RouteStatus> {
    let configs = futures_util::future::join_all(
        sessions
            .into_iter()
            .filter(|(h, _)| edge.hosts.iter().any(|e| e == h))
            .map(|(h, s)| async move {
                let c = async { Admin::connect(s).await?.config().await }.await;
                (h.to_string(), c)
            }),
    )
    .await;
    edge.routes
        .iter()
        .map(|r| {
            let id = caddy::route_id(project, env, &r.app);
            RouteStatus {
                route: r.label(),
                app: r.app.clone(),
                edges: configs
                    .iter()
                    .map(|(h, c)| match c {
                        Ok(c) => EdgeRouteStatus {
                            host: h.clone(),
                            upstreams: find_id(c, &id).map(|r| caddy::upstreams_of(&r).len()),
                            error: None,
                        },
                        Err(e) => EdgeRouteStatus {
                            host: h.clone(),
                            upstreams: None,
                            error: Some(e.clone()),
                        },
                    })
                    .collect(),
            }
        })
        .collect()
}

/// `fleet status`'s edge lines.
pub fn status_lines(routes: &[RouteStatus]) -> String {
    let mut out = String::new();
    if routes.is_empty() {
        return out;
    }
    out.push_str("\nEdge routes (upstreams per edge):\n");
    for r in routes {
        let edges: Vec<String> = r
            .edges
            .iter()
            .map(|e| match (&e.upstreams, &e.error) {
                (Some(n), _) => format!("{} {n}", e.host),
                (None, Some(_)) => format!("{} unreachable", e.host),
                (None, None) => format!("{} no route", e.host),
            })
            .collect();
        out.push_str(&format!(
            "  {} -> {}   {}\n",
            r.route,
            r.app,
            edges.join(", ")
        ));
    }
    out
}

/// The access log of one host's edge (`docker logs fleet-edge`): each line through `line`.
pub async fn logs(
    s: &HostSession,
    tail: Option<u64>,
    since: Option<Duration>,
    follow: bool,
    line: &(dyn Fn(&str, &str) + Sync),
) -> Result<(), String> {
    use bollard::query_parameters::LogsOptions;
    let host = s.target().name.clone();
    let docker = s.docker().await.map_err(|e| e.to_string())?;
    let c = find_container(&docker)
        .await?
        .ok_or_else(|| format!("{host} runs no edge"))?;
    let since = since.map_or(0, |d| {
        (std::time::SystemTime::now() - d)
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |x| x.as_secs() as i32)
    });
    let mut stream = docker.logs(
        &c.id,
        Some(LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            since,
            tail: tail.map_or("all".to_string(), |n| n.to_string()),
            ..Default::default()
        }),
    );
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("{host}: {}", chain(&e)))?;
        for l in chunk.to_string().lines() {
            line(&host, l);
        }
    }
    Ok(())
}
