//! What is really on the hosts: the containers, Consul registrations and KV keys fleet
//! manages, read through `crate::host` sessions.
//!
//! `ObservedState` is plain data so that `plan::diff` stays a pure function that is tested
//! without hosts. Reading fills it with one round trip per thing per host (container list,
//! agent services, agent checks, KV), all hosts at once (`read`). `Connected` (connected.rs)
//! holds an environment's open sessions: plan, deploy and the operate commands open, observe
//! and close through it.
//!
//! Only fleet's own things are read: containers carrying `fleet.project` + `fleet.env`,
//! services whose Meta carries `fleet-project` + `fleet-env`, KV keys under
//! `<project>/<env>/`. KV values are kept as digests only, so a saved plan or fingerprint never
//! holds a value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod connected;
pub mod consul_read;
pub mod pm2;
pub mod read;

pub use crate::identity::names::short_id;
pub use connected::Connected;
pub use read::{ObserveOptions, observe_all, observe_host};

/// Everything observed for one environment of one project.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObservedState {
    pub project: String,
    pub environment: String,
    /// One entry per host of the desired state, in the same order.
    pub hosts: Vec<ObservedHost>,
    /// KV keys under `<project>/<env>/`, when the project uses Consul and a host answered.
    pub kv: Option<ObservedKv>,
    /// Why the KV could not be read, when it could not.
    pub kv_fault: Option<Fault>,
}

/// What one host runs, or why it could not be read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObservedHost {
    pub name: String,
    pub address: String,
    /// Managed containers (any state), sorted by app, instance, created.
    pub containers: Vec<ObservedContainer>,
    /// fleet's registrations on the host's agent; `None` when Consul is not used or could not
    /// be read (then `consul_fault` says why).
    pub services: Option<Vec<ObservedService>>,
    /// The host could not be read at all (SSH, engine): nothing about it is known.
    pub fault: Option<Fault>,
    /// The host's Consul agent could not be read (containers still are).
    pub consul_fault: Option<Fault>,
    /// The edge on this host (any project's), when it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<crate::edge::ObservedEdge>,
}

/// A failure to read a host, named by host and address, as the plan reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub host: String,
    pub address: String,
    /// A stable word: `unknown-host-key`, `changed-host-key`, `auth-refused`, `unreachable`,
    /// `ssh`, `engine-down`, `engine-too-old`, `forward`, `docker`, `consul-denied`, `consul`.
    pub kind: String,
    pub message: String,
}

/// A managed container as the engine lists it (labels, state; no inspect needed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedContainer {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    pub app: Option<String>,
    pub instance: Option<u32>,
    pub version: Option<String>,
    pub spec_hash: Option<String>,
    /// Per-field digests from the `fleet.fields` label (see `plan::fields`), when present.
    pub fields: Option<crate::identity::fields::FieldDigests>,
    /// The image reference the container was created from.
    pub image: String,
    pub state: ContainerState,
    pub health: Health,
    /// Unix seconds.
    pub created: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Exited,
    Removing,
    Dead,
    Unknown,
}

impl ContainerState {
    pub fn parse(s: &str) -> Self {
        match s {
            "created" => Self::Created,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "restarting" => Self::Restarting,
            "exited" => Self::Exited,
            "removing" => Self::Removing,
            "dead" => Self::Dead,
            _ => Self::Unknown,
        }
    }

    /// Running as far as the plan is concerned (a restarting container is the engine's job).
    pub fn is_up(self) -> bool {
        matches!(self, Self::Running | Self::Restarting | Self::Paused)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Restarting => "restarting",
            Self::Exited => "exited",
            Self::Removing => "removing",
            Self::Dead => "dead",
            Self::Unknown => "unknown",
        }
    }
}

/// The engine's health check result, read from the list's status text (`Up 3s (healthy)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    None,
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    /// From the `Status` text of `GET /containers/json`, which is the only place the list
    /// carries health in API 1.41.
    pub fn from_status(status: &str) -> Self {
        if status.contains("(healthy)") {
            Self::Healthy
        } else if status.contains("(unhealthy)") {
            Self::Unhealthy
        } else if status.contains("(health: starting)") {
            Self::Starting
        } else {
            Self::None
        }
    }
}

/// A service fleet registered on a host's agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedService {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub address: String,
    pub port: u16,
    pub checks: Vec<ObservedCheck>,
}

impl ObservedService {
    fn meta(&self, label: &str) -> Option<&str> {
        self.meta
            .get(&crate::identity::labels::meta_key(label))
            .map(String::as_str)
    }
    pub fn app(&self) -> Option<&str> {
        self.meta(crate::identity::labels::APP)
    }
    pub fn instance(&self) -> Option<u32> {
        self.meta(crate::identity::labels::INSTANCE)
            .and_then(|s| s.parse().ok())
    }
    pub fn version(&self) -> Option<&str> {
        self.meta(crate::identity::labels::VERSION)
    }

    /// Whether this registration belongs to container `c`: same app and instance, and the same
    /// version when the registration says one (a deploy may run old and new side by side).
    pub fn belongs_to(&self, c: &ObservedContainer) -> bool {
        self.app() == c.app.as_deref()
            && self.instance() == c.instance
            && self
                .version()
                .is_none_or(|v| c.version.as_deref().is_none_or(|cv| cv == v))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedCheck {
    pub id: String,
    /// `passing`, `warning` or `critical`.
    pub status: String,
}

/// KV keys and digests of their values; the values themselves are kept in memory only (a
/// failed deploy writes them back) and are never printed or saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedKv {
    /// The host whose agent answered.
    pub via_host: String,
    /// Full key -> `value_digest(value)`.
    pub entries: BTreeMap<String, String>,
    /// Full key -> its ModifyIndex when read: what a check-and-set writes against.
    #[serde(default)]
    pub indexes: BTreeMap<String, u64>,
    /// Full key -> its value when read.
    #[serde(skip)]
    pub values: BTreeMap<String, Vec<u8>>,
}

impl ObservedKv {
    /// From the entries of one recursive read.
    pub fn read(via_host: &str, pairs: Vec<crate::consul::KvPair>) -> ObservedKv {
        let mut kv = ObservedKv {
            via_host: via_host.to_string(),
            entries: BTreeMap::new(),
            indexes: BTreeMap::new(),
            values: BTreeMap::new(),
        };
        for p in pairs {
            let value = p.value.unwrap_or_default();
            kv.entries.insert(p.key.clone(), value_digest(&value));
            kv.indexes.insert(p.key.clone(), p.modify_index);
            kv.values.insert(p.key, value);
        }
        kv
    }
}

/// The digest a KV value is compared by: hex SHA-256.
pub fn value_digest(value: &[u8]) -> String {
    hex::encode(Sha256::digest(value))
}

impl ObservedState {
    /// A digest of what a deploy would act on: container ids, names, labels and run state,
    /// registrations and KV digests. Health and check status are left out on purpose: they
    /// move by themselves and do not make a saved plan wrong.
    pub fn fingerprint(&self) -> String {
        #[derive(Serialize)]
        struct C<'a> {
            id: &'a str,
            name: &'a str,
            app: &'a Option<String>,
            instance: Option<u32>,
            version: &'a Option<String>,
            spec: &'a Option<String>,
            up: bool,
        }
        #[derive(Serialize)]
        struct S<'a> {
            id: &'a str,
            name: &'a str,
            tags: &'a [String],
            meta: &'a BTreeMap<String, String>,
            address: &'a str,
            port: u16,
        }
        #[derive(Serialize)]
        struct H<'a> {
            name: &'a str,
            address: &'a str,
            read: bool,
            containers: Vec<C<'a>>,
            services: Option<Vec<S<'a>>>,
        }
        let hosts: Vec<H<'_>> = self
            .hosts
            .iter()
            .map(|h| {
                let mut containers: Vec<C<'_>> = h
                    .containers
                    .iter()
                    .map(|c| C {
                        id: &c.id,
                        name: &c.name,
                        app: &c.app,
                        instance: c.instance,
                        version: &c.version,
                        spec: &c.spec_hash,
                        up: c.state.is_up(),
                    })
                    .collect();
                containers.sort_by(|a, b| a.id.cmp(b.id));
                let services = h.services.as_ref().map(|ss| {
                    let mut v: Vec<S<'_>> = ss
                        .iter()
                        .map(|s| S {
                            id: &s.id,
                            name: &s.name,
                            tags: &s.tags,
                            meta: &s.meta,
                            address: &s.address,
                            port: s.port,
                        })
                        .collect();
                    v.sort_by(|a, b| a.id.cmp(b.id));
                    v
                });
                H {
                    name: &h.name,
                    address: &h.address,
                    read: h.fault.is_none(),
                    containers,
                    services,
                }
            })
            .collect();
        let doc = serde_json::json!({
            "project": self.project,
            "environment": self.environment,
            "hosts": hosts,
            "kv": self.kv.as_ref().map(|k| &k.entries),
        });
        format!("sha256:{}", hex::encode(Sha256::digest(doc.to_string())))
    }

    /// Every fault: per host (SSH/engine, then Consul), then KV.
    pub fn faults(&self) -> Vec<&Fault> {
        let mut out = Vec::new();
        for h in &self.hosts {
            out.extend(h.fault.iter());
            out.extend(h.consul_fault.iter());
        }
        out.extend(self.kv_fault.iter());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_from_status_text() {
        assert_eq!(
            Health::from_status("Up 3 seconds (healthy)"),
            Health::Healthy
        );
        assert_eq!(Health::from_status("Up 1s (unhealthy)"), Health::Unhealthy);
        assert_eq!(
            Health::from_status("Up 1s (health: starting)"),
            Health::Starting
        );
        assert_eq!(
            Health::from_status("Exited (0) 2 minutes ago"),
            Health::None
        );
    }

    #[test]
    fn fingerprint_ignores_health_but_not_state() {
        let c = ObservedContainer {
            id: "abc".into(),
            name: "p-e-web-1-v1".into(),
            app: Some("web".into()),
            instance: Some(1),
            version: Some("v1".into()),
            spec_hash: Some("s1".into()),
            fields: None,
            image: "img:v1".into(),
            state: ContainerState::Running,
            health: Health::Healthy,
            created: 1,
        };
        let mut o = ObservedState {
            project: "p".into(),
            environment: "e".into(),
            hosts: vec![ObservedHost {
                name: "h1".into(),
                address: "10.0.0.1".into(),
                containers: vec![c],
                ..Default::default()
            }],
            ..Default::default()
        };
        let f0 = o.fingerprint();
        o.hosts[0].containers[0].health = Health::Unhealthy;
        assert_eq!(f0, o.fingerprint());
        o.hosts[0].containers[0].state = ContainerState::Exited;
        assert_ne!(f0, o.fingerprint());
    }
}
