//! The stand-in's data: services and their checks, KV, sessions, and the raft-like index every
//! write advances. Plain data guarded by one mutex in [`crate::Shared`]; nothing here does I/O
//! except [`State::save`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::duration;

pub const PASSING: &str = "passing";
pub const WARNING: &str = "warning";
pub const CRITICAL: &str = "critical";

/// A service as registered through `/v1/agent/service/register`, kept exactly as given.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u64,
    pub meta: BTreeMap<String, String>,
    pub enable_tag_override: bool,
    pub weights: (i64, i64),
    pub tagged_addresses: Option<Value>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A check's definition: what persists across a restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckDef {
    pub id: String,
    pub name: String,
    pub notes: String,
    pub service_id: String,
    pub http: Option<String>,
    pub method: String,
    pub header: BTreeMap<String, Vec<String>>,
    pub body: String,
    pub tcp: Option<String>,
    pub ttl: Option<Duration>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub deregister_critical_after: Option<Duration>,
    pub initial_status: Option<String>,
}

impl CheckDef {
    pub fn kind(&self) -> &'static str {
        if self.http.is_some() {
            "http"
        } else if self.tcp.is_some() {
            "tcp"
        } else {
            "ttl"
        }
    }
}

/// A check with its live state.
#[derive(Debug, Clone)]
pub struct Check {
    pub def: CheckDef,
    pub status: String,
    pub output: String,
    /// When the check last entered `critical` (drives DeregisterCriticalServiceAfter).
    pub critical_since: Option<Instant>,
    /// For TTL checks: when the check goes critical unless refreshed.
    pub ttl_deadline: Option<Instant>,
    /// Bumped on every (re)registration so an old runner task knows to stop.
    pub generation: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvEntry {
    pub key: String,
    #[serde(with = "b64")]
    pub value: Vec<u8>,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    pub session: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub name: String,
    pub node: String,
    pub lock_delay: Duration,
    pub behavior: String,
    pub ttl: String,
    pub create_index: u64,
    pub modify_index: u64,
    #[serde(skip)]
    pub expires: Option<Instant>,
}

impl Session {
    pub fn ttl_duration(&self) -> Option<Duration> {
        if self.ttl.is_empty() {
            None
        } else {
            duration::parse(&self.ttl).ok().filter(|d| !d.is_zero())
        }
    }

    /// When the session is invalidated unless renewed: Consul's servers arm the timer with
    /// `TTL * SessionTTLMultiplier` (2), so a session lives up to twice its TTL
    /// (`agent/consul/session_ttl.go`).
    pub fn expiry(&self, from: Instant) -> Option<Instant> {
        self.ttl_duration().map(|ttl| from + ttl * 2)
    }
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(value))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// What the data dir holds: definitions and data, not live check status (a real agent also
/// starts checks afresh after a restart).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    index: u64,
    services: Vec<(Service, Vec<CheckDef>)>,
    kv: Vec<KvEntry>,
    sessions: Vec<Session>,
    #[serde(default)]
    nodes: BTreeMap<String, Node>,
}

/// A check as the catalog holds it: what the agent last synced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CatalogCheck {
    pub id: String,
    pub name: String,
    pub notes: String,
    pub service_id: String,
    pub kind: String,
    pub interval: String,
    pub timeout: String,
    pub status: String,
    pub output: String,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Check {
    /// What the catalog keeps of this check (indexes are the catalog's own).
    pub fn for_catalog(&self) -> CatalogCheck {
        CatalogCheck {
            id: self.def.id.clone(),
            name: self.def.name.clone(),
            notes: self.def.notes.clone(),
            service_id: self.def.service_id.clone(),
            kind: self.def.kind().into(),
            interval: self.def.interval.map(duration::format).unwrap_or_default(),
            timeout: self.def.timeout.map(duration::format).unwrap_or_default(),
            status: self.status.clone(),
            output: self.output.clone(),
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }
}

/// A node of the catalog with the services and checks its agent synced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub address: String,
    pub services: BTreeMap<String, Service>,
    pub checks: BTreeMap<String, CatalogCheck>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// What an agent's anti-entropy sends the server: the node's whole local state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSync {
    pub node: String,
    pub id: String,
    pub address: String,
    pub services: Vec<Service>,
    pub checks: Vec<CatalogCheck>,
}

fn same_service(a: &Service, b: &Service) -> bool {
    let strip = |s: &Service| {
        let mut s = s.clone();
        s.create_index = 0;
        s.modify_index = 0;
        serde_json::to_value(s).unwrap_or_default()
    };
    strip(a) == strip(b)
}

fn same_check(a: &CatalogCheck, b: &CatalogCheck) -> bool {
    let mut b = b.clone();
    b.create_index = a.create_index;
    b.modify_index = a.modify_index;
    *a == b
}

#[derive(Debug, Default)]
pub struct State {
    /// The raft-like index: advanced by every write, never goes back.
    pub index: u64,
    /// Index of the last write to each table, for `X-Consul-Index` on reads.
    pub kv_index: u64,
    pub services_index: u64,
    pub sessions_index: u64,
    pub services: BTreeMap<String, Service>,
    pub checks: BTreeMap<String, Check>,
    pub kv: BTreeMap<String, KvEntry>,
    /// Index at which a key was deleted, so a blocking query on a prefix sees deletions.
    pub tombstones: BTreeMap<String, u64>,
    pub sessions: BTreeMap<String, Session>,
    /// Keys whose lock was released by an invalidated session: no acquire before this instant.
    pub lock_delays: HashMap<String, Instant>,
    pub next_generation: u64,
    /// The catalog (server): nodes with their synced services and checks.
    pub nodes: BTreeMap<String, Node>,
}

/// A parsed registration, ready to apply.
#[derive(Debug, Clone)]
pub struct Registration {
    pub service: Service,
    pub checks: Vec<CheckDef>,
}

impl State {
    pub fn bump(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    pub fn load(path: &Path) -> anyhow::Result<Option<State>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let persisted: Persisted = serde_json::from_str(&text)?;
        let mut state = State {
            index: persisted.index,
            kv_index: persisted.index,
            services_index: persisted.index,
            sessions_index: persisted.index,
            ..State::default()
        };
        for entry in persisted.kv {
            state.kv.insert(entry.key.clone(), entry);
        }
        let now = Instant::now();
        for mut session in persisted.sessions {
            session.expires = session.expiry(now);
            state.sessions.insert(session.id.clone(), session);
        }
        state.nodes = persisted.nodes;
        for (service, checks) in persisted.services {
            state.apply_registration(Registration { service, checks }, false, now);
        }
        Ok(Some(state))
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let persisted = Persisted {
            index: self.index,
            services: self
                .services
                .values()
                .map(|s| {
                    let checks = self
                        .checks
                        .values()
                        .filter(|c| c.def.service_id == s.id)
                        .map(|c| c.def.clone())
                        .collect();
                    (s.clone(), checks)
                })
                .collect(),
            kv: self.kv.values().cloned().collect(),
            sessions: self.sessions.values().cloned().collect(),
            nodes: self.nodes.clone(),
        };
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&persisted)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Registers (or replaces) a service. Checks of the same ID keep their status, as Consul
    /// carries status over on re-registration; with `replace_existing_checks`, checks not in the
    /// new definition are removed. Returns the IDs of checks whose runner must (re)start.
    pub fn apply_registration(
        &mut self,
        reg: Registration,
        replace_existing_checks: bool,
        now: Instant,
    ) -> Vec<String> {
        let index = self.bump();
        self.services_index = index;
        let mut service = reg.service;
        service.create_index = self
            .services
            .get(&service.id)
            .map(|s| s.create_index)
            .unwrap_or(index);
        service.modify_index = index;
        let new_ids: Vec<&str> = reg.checks.iter().map(|c| c.id.as_str()).collect();
        if replace_existing_checks {
            let stale: Vec<String> = self
                .checks
                .values()
                .filter(|c| c.def.service_id == service.id && !new_ids.contains(&c.def.id.as_str()))
                .map(|c| c.def.id.clone())
                .collect();
            for id in stale {
                self.checks.remove(&id);
            }
        }
        let mut started = Vec::new();
        for def in reg.checks {
            self.next_generation += 1;
            let previous = self.checks.remove(&def.id);
            // Consul's addServiceInternal carries an existing check's status and output over
            // to its new definition, whatever that is; the DeregisterCriticalServiceAfter clock
            // starts again at the next critical result.
            let (status, output, create_index) = match &previous {
                Some(prev) => (prev.status.clone(), prev.output.clone(), prev.create_index),
                None => (
                    def.initial_status
                        .clone()
                        .unwrap_or_else(|| CRITICAL.into()),
                    String::new(),
                    index,
                ),
            };
            let critical_since = None;
            let ttl_deadline = def.ttl.map(|ttl| now + ttl);
            started.push(def.id.clone());
            self.checks.insert(
                def.id.clone(),
                Check {
                    def,
                    status,
                    output,
                    critical_since,
                    ttl_deadline,
                    generation: self.next_generation,
                    create_index,
                    modify_index: index,
                },
            );
        }
        self.services.insert(service.id.clone(), service);
        started
    }

    /// An agent keeps only its local services and checks: KV, sessions and the catalog live on
    /// the server.
    pub fn forget_server_data(&mut self) {
        self.kv.clear();
        self.tombstones.clear();
        self.sessions.clear();
        self.nodes.clear();
    }

    /// Applies an agent's anti-entropy sync to the catalog. Indexes move only for what changed,
    /// so blocking queries wake only on real changes. Returns whether anything changed.
    pub fn apply_sync(&mut self, sync: NodeSync) -> bool {
        let index = self.index + 1;
        let mut changed = false;
        let node = self.nodes.entry(sync.node.clone()).or_insert_with(|| {
            changed = true;
            Node {
                create_index: index,
                modify_index: index,
                ..Node::default()
            }
        });
        if node.id != sync.id || node.address != sync.address {
            node.id = sync.id;
            node.address = sync.address;
            node.modify_index = index;
            changed = true;
        }
        let wanted: Vec<&str> = sync.services.iter().map(|s| s.id.as_str()).collect();
        let before = node.services.len();
        node.services.retain(|id, _| wanted.contains(&id.as_str()));
        changed |= node.services.len() != before;
        for mut service in sync.services {
            match node.services.get(&service.id) {
                Some(old) if same_service(old, &service) => {}
                old => {
                    service.create_index = old.map(|o| o.create_index).unwrap_or(index);
                    service.modify_index = index;
                    node.services.insert(service.id.clone(), service);
                    changed = true;
                }
            }
        }
        let wanted: Vec<&str> = sync.checks.iter().map(|c| c.id.as_str()).collect();
        let before = node.checks.len();
        node.checks.retain(|id, _| wanted.contains(&id.as_str()));
        changed |= node.checks.len() != before;
        for mut check in sync.checks {
            match node.checks.get(&check.id) {
                Some(old) if same_check(old, &check) => {}
                old => {
                    check.create_index = old.map(|o| o.create_index).unwrap_or(index);
                    check.modify_index = index;
                    node.checks.insert(check.id.clone(), check);
                    changed = true;
                }
            }
        }
        if changed {
            self.index = index;
            self.services_index = index;
        }
        changed
    }

    /// Removes a service and its checks. Returns false when it was not registered.
    pub fn deregister_service(&mut self, id: &str) -> bool {
        if self.services.remove(id).is_none() {
            return false;
        }
        self.checks.retain(|_, c| c.def.service_id != id);
        let index = self.bump();
        self.services_index = index;
        true
    }

    /// Sets a check's result; advances the index only when something visible changed.
    pub fn set_check(
        &mut self,
        id: &str,
        generation: Option<u64>,
        status: &str,
        output: String,
    ) -> bool {
        let now = Instant::now();
        let Some(check) = self.checks.get_mut(id) else {
            return false;
        };
        if generation.is_some_and(|g| g != check.generation) {
            return false;
        }
        // The DeregisterCriticalServiceAfter clock runs from the first critical result.
        if status == CRITICAL {
            check.critical_since.get_or_insert(now);
        } else {
            check.critical_since = None;
        }
        if check.status == status && check.output == output {
            return true;
        }
        check.status = status.to_string();
        check.output = output;
        self.index += 1;
        let index = self.index;
        if let Some(check) = self.checks.get_mut(id) {
            check.modify_index = index;
        }
        self.services_index = index;
        true
    }

    /// The index of a key, or of a prefix (the highest of its entries and tombstones), falling
    /// back on the table's index as Consul does for a key or prefix with nothing in it.
    pub fn kv_index_of(&self, key: &str, prefix: bool) -> u64 {
        let found = if prefix {
            let entries = self
                .kv
                .range(key.to_string()..)
                .take_while(|(k, _)| k.starts_with(key))
                .map(|(_, e)| e.modify_index);
            let tombs = self
                .tombstones
                .range(key.to_string()..)
                .take_while(|(k, _)| k.starts_with(key))
                .map(|(_, i)| *i);
            entries.chain(tombs).max().unwrap_or(0)
        } else {
            // A missing key answers with the table's index (`kvsGetTxn`).
            self.kv.get(key).map(|e| e.modify_index).unwrap_or(0)
        };
        if found == 0 {
            self.kv_index.max(1)
        } else {
            found
        }
    }

    fn kv_write(&mut self) -> u64 {
        let index = self.bump();
        self.kv_index = index;
        index
    }

    /// Writes a key; returns false (and moves no index) when nothing would change, as
    /// `kvsSetTxn` skips an identical write.
    pub fn kv_set(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: Option<Option<String>>,
        lock_bump: bool,
    ) -> bool {
        if let Some(e) = self.kv.get(key)
            && !lock_bump
            && e.value == value
            && e.flags == flags
            && session.as_ref().is_none_or(|s| *s == e.session)
        {
            return false;
        }
        let index = self.kv_write();
        self.tombstones.remove(key);
        let entry = self.kv.entry(key.to_string()).or_insert_with(|| KvEntry {
            key: key.to_string(),
            value: Vec::new(),
            flags: 0,
            create_index: index,
            modify_index: index,
            lock_index: 0,
            session: None,
        });
        entry.value = value;
        entry.flags = flags;
        entry.modify_index = index;
        if lock_bump {
            entry.lock_index += 1;
        }
        if let Some(session) = session {
            entry.session = session;
        }
        true
    }

    pub fn kv_delete(&mut self, key: &str, recurse: bool) {
        let keys: Vec<String> = if recurse {
            self.kv
                .range(key.to_string()..)
                .take_while(|(k, _)| k.starts_with(key))
                .map(|(k, _)| k.clone())
                .collect()
        } else if self.kv.contains_key(key) {
            vec![key.to_string()]
        } else {
            Vec::new()
        };
        let index = self.kv_write();
        for k in keys {
            self.kv.remove(&k);
            self.tombstones.insert(k, index);
        }
    }

    /// Invalidates a session (destroy or TTL expiry): its locks are released (or the keys
    /// deleted, with behavior `delete`) and the lock-delay starts on each.
    pub fn invalidate_session(&mut self, id: &str) -> bool {
        let Some(session) = self.sessions.remove(id) else {
            return false;
        };
        let held: Vec<String> = self
            .kv
            .values()
            .filter(|e| e.session.as_deref() == Some(id))
            .map(|e| e.key.clone())
            .collect();
        let now = Instant::now();
        for key in held {
            if session.lock_delay > Duration::ZERO {
                self.lock_delays
                    .insert(key.clone(), now + session.lock_delay);
            }
            if session.behavior == "delete" {
                self.kv_delete(&key, false);
            } else {
                let index = self.kv_write();
                if let Some(entry) = self.kv.get_mut(&key) {
                    entry.session = None;
                    entry.modify_index = index;
                }
            }
        }
        let index = self.bump();
        self.sessions_index = index;
        true
    }
}

// ---- registration parsing ----------------------------------------------------------------

/// Consul decodes request bodies case-insensitively and accepts snake_case aliases; we
/// normalise keys to lowercase-without-underscores, except inside user-keyed maps.
pub fn normalize_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let nk: String = k.to_lowercase().replace('_', "");
                let v = if matches!(
                    nk.as_str(),
                    "meta" | "header" | "taggedaddresses" | "nodemeta"
                ) {
                    v
                } else {
                    normalize_keys(v)
                };
                out.insert(nk, v);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(normalize_keys).collect()),
        other => other,
    }
}

fn get_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "Request decode failed: {key}: expected a string, got {other}"
        )),
    }
}

fn get_duration(obj: &Map<String, Value>, key: &str) -> Result<Option<Duration>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => duration::parse(s)
            .map(Some)
            .map_err(|e| format!("Request decode failed: {e}")),
        Some(Value::Number(n)) => Ok(n.as_u64().map(Duration::from_nanos)),
        Some(other) => Err(format!(
            "Request decode failed: {key}: expected a duration, got {other}"
        )),
    }
}

fn valid_meta_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Limits that Consul relaxes nowhere but which tests want smaller: see `Config`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub min_check_interval: Duration,
    pub deregister_critical_min: Duration,
}

/// Parses a `/v1/agent/service/register` body the way Consul validates it; errors are the
/// plain-text 400 bodies.
pub fn parse_registration(body: &[u8], limits: Limits) -> Result<Registration, String> {
    let raw: Value =
        serde_json::from_slice(body).map_err(|e| format!("Request decode failed: {e}"))?;
    let Value::Object(obj) = normalize_keys(raw) else {
        return Err("Request decode failed: expected a JSON object".into());
    };
    let name = get_str(&obj, "name")?.unwrap_or_default();
    if name.is_empty() {
        return Err("Missing service name".into());
    }
    let id = get_str(&obj, "id")?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| name.clone());
    let tags = match obj.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| format!("Request decode failed: Tags: {e}"))?,
    };
    let meta: BTreeMap<String, String> = match obj.get("meta") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| format!("Request decode failed: Meta: {e}"))?,
    };
    if meta.len() > 64 {
        return Err(
            "Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs"
                .into(),
        );
    }
    for (k, v) in &meta {
        if !valid_meta_key(k) {
            return Err(format!(
                "Invalid Service Meta: Key contains invalid characters: {k:?}"
            ));
        }
        if k.len() > 128 {
            return Err(format!(
                "Invalid Service Meta: Key is too long (limit: 128 characters): {k:?}"
            ));
        }
        if v.len() > 512 {
            return Err(format!(
                "Invalid Service Meta: Value is too long (limit: 512 characters): {k:?}"
            ));
        }
    }
    let port = match obj.get("port") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or("Request decode failed: Port: expected an unsigned integer")?,
        Some(other) => {
            return Err(format!(
                "Request decode failed: Port: expected a number, got {other}"
            ));
        }
    };
    let weights = match obj.get("weights") {
        Some(Value::Object(w)) => (
            w.get("passing").and_then(Value::as_i64).unwrap_or(1),
            w.get("warning").and_then(Value::as_i64).unwrap_or(1),
        ),
        _ => (1, 1),
    };
    let service = Service {
        id: id.clone(),
        name: name.clone(),
        tags,
        address: get_str(&obj, "address")?.unwrap_or_default(),
        port,
        meta,
        enable_tag_override: obj
            .get("enabletagoverride")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        weights,
        tagged_addresses: obj.get("taggedaddresses").cloned().filter(|v| !v.is_null()),
        create_index: 0,
        modify_index: 0,
    };
    let mut raw_checks: Vec<Map<String, Value>> = Vec::new();
    if let Some(Value::Object(check)) = obj.get("check") {
        raw_checks.push(check.clone());
    }
    if let Some(Value::Array(list)) = obj.get("checks") {
        for item in list {
            if let Value::Object(check) = item {
                raw_checks.push(check.clone());
            }
        }
    }
    let several = raw_checks.len() > 1;
    let mut checks = Vec::new();
    for (n, raw) in raw_checks.iter().enumerate() {
        let default_id = if several {
            format!("service:{id}:{}", n + 1)
        } else {
            format!("service:{id}")
        };
        checks.push(parse_check(raw, &id, &name, default_id, limits)?);
    }
    Ok(Registration { service, checks })
}

fn parse_check(
    obj: &Map<String, Value>,
    service_id: &str,
    service_name: &str,
    default_id: String,
    limits: Limits,
) -> Result<CheckDef, String> {
    let id = get_str(obj, "checkid")?
        .or(get_str(obj, "id")?)
        .filter(|s| !s.is_empty())
        .unwrap_or(default_id);
    let name = get_str(obj, "name")?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("Service '{service_name}' check"));
    let http = get_str(obj, "http")?.filter(|s| !s.is_empty());
    let tcp = get_str(obj, "tcp")?.filter(|s| !s.is_empty());
    let ttl = get_duration(obj, "ttl")?;
    let has_args =
        matches!(obj.get("args").or(obj.get("scriptargs")), Some(Value::Array(a)) if !a.is_empty());
    let mut interval = get_duration(obj, "interval")?;
    if has_args {
        return Err("Scripts are disabled on this agent; to enable, configure 'enable_script_checks' or 'enable_local_script_checks' to true".into());
    }
    if http.is_none() && tcp.is_none() && ttl.is_none() {
        return Err("Invalid check: TTL must be > 0 for TTL checks".into());
    }
    if http.is_some() || tcp.is_some() {
        match interval {
            None | Some(Duration::ZERO) => {
                return Err("Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP or UDP checks".into());
            }
            Some(d) if d < limits.min_check_interval => interval = Some(limits.min_check_interval),
            _ => {}
        }
    }
    let status = get_str(obj, "status")?.filter(|s| !s.is_empty());
    if let Some(s) = &status
        && ![PASSING, WARNING, CRITICAL].contains(&s.as_str())
    {
        return Err(format!("Invalid check status: {s:?}"));
    }
    let header: BTreeMap<String, Vec<String>> = match obj.get("header") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| format!("Request decode failed: Header: {e}"))?,
    };
    let dcsa = get_duration(obj, "deregistercriticalserviceafter")?
        .filter(|d| !d.is_zero())
        .map(|d| d.max(limits.deregister_critical_min));
    Ok(CheckDef {
        id,
        name,
        notes: get_str(obj, "notes")?.unwrap_or_default(),
        service_id: service_id.to_string(),
        http,
        method: get_str(obj, "method")?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "GET".into()),
        header,
        body: get_str(obj, "body")?.unwrap_or_default(),
        tcp,
        ttl,
        interval,
        timeout: get_duration(obj, "timeout")?.filter(|d| !d.is_zero()),
        deregister_critical_after: dcsa,
        initial_status: status,
    })
}

pub fn b64encode(value: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(value)
}

pub fn b64decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD.decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        min_check_interval: Duration::from_secs(1),
        deregister_critical_min: Duration::from_secs(60),
    };

    #[test]
    fn check_ids_follow_consul() {
        let one = br#"{"Name":"web","ID":"web-1","Check":{"HTTP":"http://x/","Interval":"10s"}}"#;
        let reg = parse_registration(one, LIMITS).unwrap();
        assert_eq!(reg.checks[0].id, "service:web-1");
        assert_eq!(reg.checks[0].name, "Service 'web' check");
        let two =
            br#"{"Name":"web","Checks":[{"TTL":"10s"},{"TCP":"127.0.0.1:1","Interval":"1s"}]}"#;
        let reg = parse_registration(two, LIMITS).unwrap();
        assert_eq!(reg.service.id, "web");
        assert_eq!(reg.checks[0].id, "service:web:1");
        assert_eq!(reg.checks[1].id, "service:web:2");
    }

    #[test]
    fn keys_are_case_insensitive_and_meta_is_kept_verbatim() {
        let body = br#"{"name":"web","meta":{"fleet-Project":"x"},"check":{"ttl":"5s","deregister_critical_service_after":"10s"}}"#;
        let reg = parse_registration(body, LIMITS).unwrap();
        assert_eq!(reg.service.meta["fleet-Project"], "x");
        assert_eq!(reg.checks[0].ttl, Some(Duration::from_secs(5)));
        // Consul's 1-minute minimum applies.
        assert_eq!(
            reg.checks[0].deregister_critical_after,
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn rejects_what_consul_rejects() {
        assert_eq!(
            parse_registration(br#"{"Port":1}"#, LIMITS).unwrap_err(),
            "Missing service name"
        );
        assert!(parse_registration(br#"{"Name":"a","Meta":{"a.b":"x"}}"#, LIMITS).is_err());
        assert!(
            parse_registration(br#"{"Name":"a","Check":{"HTTP":"http://x/"}}"#, LIMITS).is_err()
        );
        assert!(
            parse_registration(
                br#"{"Name":"a","Check":{"Args":["x"],"Interval":"1s"}}"#,
                LIMITS
            )
            .is_err()
        );
    }

    #[test]
    fn kv_prefix_index_sees_deletes() {
        let mut s = State::default();
        s.kv_set("a/1", b"x".to_vec(), 0, None, false);
        s.kv_set("b", b"x".to_vec(), 0, None, false);
        let before = s.kv_index_of("a/", true);
        assert_eq!(before, 1);
        s.kv_delete("a/1", false);
        assert!(s.kv_index_of("a/", true) > before);
    }
}
