//! Consul's request and response bodies, field for field as its API documents them
//! (PascalCase names). Fields Consul may send as `null` (Tags, Meta, ServiceTags) read as empty.
//! The tests at the bottom parse the JSON examples from Consul's own documentation.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};

/// `null` or absent reads as the type's default, as Go's zero values do.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Formats a duration the way Consul parses them (Go syntax): `"10s"`, `"1500ms"`.
pub fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

/// A check's state. Consul's API spells them in lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Passing,
    Warning,
    Critical,
    Maintenance,
}

impl std::fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
            CheckStatus::Maintenance => "maintenance",
        })
    }
}

/// `Weights` of a service (DNS SRV weights by health).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    pub passing: i64,
    pub warning: i64,
}

/// Body of `PUT /v1/agent/service/register`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegistration {
    /// Unique per agent; defaults to `Name`.
    #[serde(rename = "ID", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Keys: letters, digits, `-` and `_` only (Consul rejects others).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_tag_override: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Weights>,
    /// A single check; its ID defaults to `service:<ID>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckDefinition>,
    /// Several checks; their IDs default to `service:<ID>:<n>`, n from 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckDefinition>,
}

/// A check in a service registration. Exactly one of `http`, `tcp`, `ttl` (or `args`) says its kind.
/// Durations are Go duration strings (see [`go_duration`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckDefinition {
    #[serde(rename = "CheckID", default, skip_serializing_if = "Option::is_none")]
    pub check_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// URL to request every `Interval`: 2xx passing, 429 warning, anything else critical.
    #[serde(rename = "HTTP", default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub header: BTreeMap<String, Vec<String>>,
    /// `host:port` to connect to every `Interval`.
    #[serde(rename = "TCP", default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// The check goes critical unless refreshed (`/v1/agent/check/pass/:id`) within this time.
    #[serde(rename = "TTL", default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Script checks; most agents refuse them. Kept so Consul's own examples parse.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Consul removes the service once this check has been critical this long (minimum 1m,
    /// reaped every 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deregister_critical_service_after: Option<String>,
    /// Initial status; without it a new check starts critical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CheckStatus>,
}

/// A service as `GET /v1/agent/services` (and the health endpoint's `Service`) returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService {
    #[serde(rename = "ID")]
    pub id: String,
    /// The service name.
    pub service: String,
    #[serde(default, deserialize_with = "null_default")]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub weights: Option<Weights>,
    #[serde(default)]
    pub enable_tag_override: bool,
    #[serde(default)]
    pub datacenter: Option<String>,
    #[serde(default)]
    pub tagged_addresses: Option<serde_json::Value>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub create_index: Option<u64>,
    #[serde(default)]
    pub modify_index: Option<u64>,
}

/// A check as `GET /v1/agent/checks` and the health endpoint return it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    #[serde(default)]
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    #[serde(default)]
    pub name: String,
    pub status: CheckStatus,
    #[serde(default)]
    pub notes: String,
    /// What the last run saw, e.g. `HTTP GET http://…: 200 OK Output: …`.
    #[serde(default)]
    pub output: String,
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    #[serde(default)]
    pub service_name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub service_tags: Vec<String>,
    /// `http`, `tcp`, `ttl`, … (empty for node checks such as `serfHealth`).
    #[serde(rename = "Type", default)]
    pub kind: String,
    #[serde(default)]
    pub create_index: Option<u64>,
    #[serde(default)]
    pub modify_index: Option<u64>,
}

/// The node part of a health entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthNode {
    #[serde(rename = "ID", default)]
    pub id: String,
    pub node: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default, deserialize_with = "null_default")]
    pub meta: BTreeMap<String, String>,
}

/// One element of `GET /v1/health/service/:name`: a service instance, its node, and every
/// check that bears on it (the node's `serfHealth` included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    pub node: HealthNode,
    pub service: AgentService,
    #[serde(default, deserialize_with = "null_default")]
    pub checks: Vec<HealthCheck>,
}

impl ServiceEntry {
    /// The worst status among the checks (critical > warning > passing), as Consul aggregates.
    pub fn aggregated_status(&self) -> CheckStatus {
        let rank = |s: CheckStatus| match s {
            CheckStatus::Passing => 0,
            CheckStatus::Warning => 1,
            CheckStatus::Critical => 2,
            CheckStatus::Maintenance => 3,
        };
        self.checks
            .iter()
            .map(|c| c.status)
            .max_by_key(|s| rank(*s))
            .unwrap_or(CheckStatus::Passing)
    }
}

/// One element of `GET /v1/catalog/service/:name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogService {
    #[serde(rename = "ID", default)]
    pub id: String,
    pub node: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    #[serde(default)]
    pub service_address: String,
    #[serde(default)]
    pub service_port: u16,
    #[serde(default, deserialize_with = "null_default")]
    pub service_tags: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub service_meta: BTreeMap<String, String>,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

/// A KV entry with its value decoded from base64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KvPair {
    pub key: String,
    /// Raw bytes; `None` when Consul holds no value (`"Value": null`).
    #[serde(
        default,
        deserialize_with = "decode_value",
        serialize_with = "encode_value"
    )]
    pub value: Option<Vec<u8>>,
    #[serde(default)]
    pub flags: u64,
    pub create_index: u64,
    /// The index to pass as `cas` to update this exact version.
    pub modify_index: u64,
    /// How many times the key was acquired as a lock.
    #[serde(default)]
    pub lock_index: u64,
    /// The session holding the lock, if any.
    #[serde(default)]
    pub session: Option<String>,
}

impl KvPair {
    /// The value as UTF-8 text (lossy), empty when absent.
    pub fn value_str(&self) -> String {
        String::from_utf8_lossy(self.value.as_deref().unwrap_or_default()).into_owned()
    }
}

fn decode_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(text) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

fn encode_value<S: serde::Serializer>(value: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        None => s.serialize_none(),
        Some(bytes) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

/// A KV verb of a transaction (api-docs/txn.mdx, "KV Operations").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvVerb {
    Set,
    /// Set only if the key's ModifyIndex is `Index` (0: only if absent).
    Cas,
    Get,
    GetTree,
    CheckIndex,
    CheckNotExists,
    Delete,
    DeleteTree,
    /// Delete only if the key's ModifyIndex is `Index`.
    DeleteCas,
}

/// One operation of `PUT /v1/txn`; fleet sends KV operations only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnOp {
    #[serde(rename = "KV")]
    pub kv: TxnKvOp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnKvOp {
    pub verb: KvVerb,
    pub key: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "decode_value",
        serialize_with = "encode_value"
    )]
    pub value: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
}

impl TxnOp {
    /// Writes `value` if the key's ModifyIndex is `index` (0: if the key is absent).
    pub fn cas(key: &str, value: &[u8], index: u64) -> TxnOp {
        TxnOp::kv(KvVerb::Cas, key, Some(value.to_vec()), Some(index))
    }

    /// Deletes the key if its ModifyIndex is `index`.
    pub fn delete_cas(key: &str, index: u64) -> TxnOp {
        TxnOp::kv(KvVerb::DeleteCas, key, None, Some(index))
    }

    fn kv(verb: KvVerb, key: &str, value: Option<Vec<u8>>, index: Option<u64>) -> TxnOp {
        TxnOp {
            kv: TxnKvOp {
                verb,
                key: key.to_string(),
                value,
                index,
            },
        }
    }

    /// The bytes this operation adds to a request (its value), for the request-size limit.
    pub fn value_len(&self) -> usize {
        self.kv.value.as_ref().map_or(0, Vec::len)
    }
}

/// The body of a `/v1/txn` answer (200 committed, 409 rolled back).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnResponse {
    #[serde(default)]
    pub results: Option<Vec<TxnResult>>,
    #[serde(default)]
    pub errors: Option<Vec<TxnOpError>>,
}

/// One result: the entry a KV `set`/`cas`/`get` left (delete verbs leave none).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TxnResult {
    #[serde(rename = "KV", default)]
    pub kv: Option<KvPair>,
}

/// Why the transaction was rolled back: the operation at `op_index` failed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnOpError {
    pub op_index: usize,
    pub what: String,
}

/// What happens to a session's locks when it is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionBehavior {
    /// Locks are released (the keys stay).
    Release,
    /// Locked keys are deleted.
    Delete,
}

/// Body of `PUT /v1/session/create`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Between 10s and 24h; the session is invalidated unless renewed within it.
    #[serde(rename = "TTL", default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<SessionBehavior>,
    /// After invalidation, no session may acquire the released locks for this long (default 15s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SessionCreated {
    #[serde(rename = "ID")]
    pub id: String,
}

/// A session as `GET /v1/session/info/:id` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionInfo {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub node: String,
    /// Nanoseconds.
    #[serde(default)]
    pub lock_delay: u64,
    pub behavior: SessionBehavior,
    #[serde(rename = "TTL", default)]
    pub ttl: String,
    #[serde(default, deserialize_with = "null_default")]
    pub node_checks: Vec<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/src/consul/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn parses_agent_services_from_consul_docs() {
        let services: BTreeMap<String, AgentService> =
            serde_json::from_str(&fixture("agent_services.json")).unwrap();
        let redis = &services["redis"];
        assert_eq!(redis.service, "redis");
        assert_eq!(redis.port, 8000);
        assert_eq!(redis.meta["redis_version"], "4.0");
        assert_eq!(
            redis.weights,
            Some(Weights {
                passing: 10,
                warning: 1
            })
        );
        assert!(redis.tags.is_empty());
    }

    #[test]
    fn parses_and_reserialises_the_register_payload() {
        let text = fixture("agent_service_register.json");
        let reg: ServiceRegistration = serde_json::from_str(&text).unwrap();
        assert_eq!(reg.id.as_deref(), Some("redis1"));
        assert_eq!(reg.tags, ["primary", "v1"]);
        let check = reg.check.as_ref().unwrap();
        assert_eq!(
            check.deregister_critical_service_after.as_deref(),
            Some("90m")
        );
        assert_eq!(check.interval.as_deref(), Some("10s"));
        // What we send uses Consul's field names exactly.
        let sent: serde_json::Value = serde_json::to_value(&reg).unwrap();
        let original: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(sent, original);
    }

    #[test]
    fn parses_agent_checks_from_consul_docs() {
        let checks: BTreeMap<String, HealthCheck> =
            serde_json::from_str(&fixture("agent_checks.json")).unwrap();
        let check = &checks["service:redis"];
        assert_eq!(check.status, CheckStatus::Passing);
        assert_eq!(check.service_id, "redis");
        assert_eq!(check.service_tags, ["primary"]);
    }

    #[test]
    fn parses_health_service_from_consul_docs() {
        let entries: Vec<ServiceEntry> =
            serde_json::from_str(&fixture("health_service.json")).unwrap();
        assert_eq!(entries.len(), 1);
        let entry = &entries[0];
        assert_eq!(entry.node.node, "foobar");
        assert_eq!(entry.service.id, "redis");
        assert_eq!(entry.checks.len(), 2);
        assert!(entry.checks.iter().any(|c| c.check_id == "serfHealth"));
        assert_eq!(entry.aggregated_status(), CheckStatus::Passing);
    }

    #[test]
    fn aggregated_status_is_the_worst() {
        let mut entries: Vec<ServiceEntry> =
            serde_json::from_str(&fixture("health_service.json")).unwrap();
        entries[0].checks[0].status = CheckStatus::Warning;
        assert_eq!(entries[0].aggregated_status(), CheckStatus::Warning);
        entries[0].checks[1].status = CheckStatus::Critical;
        assert_eq!(entries[0].aggregated_status(), CheckStatus::Critical);
    }

    #[test]
    fn parses_catalog_from_consul_docs() {
        let services: BTreeMap<String, Vec<String>> =
            serde_json::from_str(&fixture("catalog_services.json")).unwrap();
        assert_eq!(services["postgresql"], ["primary", "secondary"]);
        let nodes: Vec<CatalogService> =
            serde_json::from_str(&fixture("catalog_service.json")).unwrap();
        assert_eq!(nodes[0].service_id, "32a2a47f7992:nodea:5000");
        assert_eq!(nodes[0].service_port, 5000);
        assert_eq!(nodes[0].service_meta["web_meta_value"], "baz");
    }

    #[test]
    fn txn_operations_are_sent_as_consul_documents_them() {
        let ops = vec![
            TxnOp::cas("koa/production/app/greeting", b"hello", 22),
            TxnOp::delete_cas("koa/production/app/old", 17),
        ];
        let sent = serde_json::to_value(&ops).unwrap();
        let documented: serde_json::Value =
            serde_json::from_str(&fixture("txn_payload.json")).unwrap();
        assert_eq!(sent, documented);
        let back: Vec<TxnOp> = serde_json::from_value(documented).unwrap();
        assert_eq!(back, ops);
        assert_eq!(ops[0].value_len(), 5);
    }

    #[test]
    fn parses_txn_answers_from_consul_docs() {
        let ok: TxnResponse = serde_json::from_str(&fixture("txn_response.json")).unwrap();
        let kv = ok.results.unwrap()[0].kv.clone().unwrap();
        assert_eq!(kv.key, "koa/production/app/greeting");
        assert_eq!(kv.modify_index, 35);
        assert_eq!(kv.value, None);
        assert!(ok.errors.is_none());
        let no: TxnResponse = serde_json::from_str(&fixture("txn_rolled_back.json")).unwrap();
        let e = &no.errors.unwrap()[0];
        assert_eq!(e.op_index, 1);
        assert!(e.what.contains("index is stale"), "{}", e.what);
    }

    #[test]
    fn parses_kv_from_consul_docs() {
        let pairs: Vec<KvPair> = serde_json::from_str(&fixture("kv_entries.json")).unwrap();
        assert_eq!(pairs[0].value.as_deref(), Some(&b"test"[..]));
        assert_eq!(pairs[0].modify_index, 200);
        assert_eq!(pairs[0].lock_index, 200);
        assert_eq!(
            pairs[0].session.as_deref(),
            Some("adf4238a-882b-9ddc-4a9d-5b6758e4159e")
        );
        let keys: Vec<String> = serde_json::from_str(&fixture("kv_keys.json")).unwrap();
        assert_eq!(keys, ["/web/bar", "/web/foo", "/web/subdir/"]);
        let empty: KvPair = serde_json::from_str(
            r#"{"Key":"k","Value":null,"Flags":0,"CreateIndex":1,"ModifyIndex":1,"LockIndex":0,"Session":null}"#,
        )
        .unwrap();
        assert_eq!(empty.value, None);
    }

    #[test]
    fn parses_sessions_from_consul_docs() {
        let req: SessionRequest = serde_json::from_str(&fixture("session_create.json")).unwrap();
        assert_eq!(req.behavior, Some(SessionBehavior::Release));
        assert_eq!(req.ttl.as_deref(), Some("30s"));
        assert_eq!(req.lock_delay.as_deref(), Some("15s"));
        let created: SessionCreated =
            serde_json::from_str(&fixture("session_create_response.json")).unwrap();
        assert_eq!(created.id, "adf4238a-882b-9ddc-4a9d-5b6758e4159e");
        let info: Vec<SessionInfo> = serde_json::from_str(&fixture("session_info.json")).unwrap();
        assert_eq!(info[0].lock_delay, 15_000_000_000);
        assert_eq!(info[0].node_checks, ["serfHealth"]);
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::from_micros(3)), "3000ns");
    }
}
