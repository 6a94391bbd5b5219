//! Operate: what people do with running instances after a deploy (`fleet status`, `info`,
//! `logs`, `restart` / `stop` / `start`, `exec`, `destroy`).
//!
//! Everything here finds fleet's work the way `observe` does (container labels, Consul service
//! Meta, KV prefix), never by name or service ID: a deploy may give a new instance a new
//! container name and a new service ID, while `fleet-app` / `fleet-instance` / `fleet-version`
//! stay the way to tell which registration belongs to which container.
//!
//! The split is the project's usual one: reading the hosts (`observe::Connected`,
//! `status::gather`, `logs::collect`) touches the outside world; turning what was read into rows, lines or a list
//! of removals (`status::rows`, `logs::merge`, `destroy::Inventory`) is plain data and pure
//! functions, tested without hosts.

use crate::host::HostError;

pub mod destroy;
pub mod exec;
pub mod info;
pub mod lifecycle;
pub mod logs;
pub mod registration;
pub mod status;

/// What went wrong in an operate command as a whole (per-host trouble is reported per host).
#[derive(Debug, thiserror::Error)]
pub enum OperateError {
    #[error("cannot read the Consul ACL token: {0}")]
    ConsulToken(#[source] crate::manifest::secret::SecretError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("{host}: Docker: {message}")]
    Docker { host: String, message: String },
    #[error("no instance matches {0}")]
    NoMatch(String),
    #[error("{0} instances match {1}; choose one with --instance and --host")]
    Ambiguous(usize, String),
    #[error("the environment has no host named {0}")]
    UnknownHost(String),
}

/// Which instances a command acts on: all, or those of one app / instance number / host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub app: Option<String>,
    pub instance: Option<u32>,
    pub host: Option<String>,
}

impl Selector {
    pub fn matches(&self, app: Option<&str>, instance: Option<u32>, host: &str) -> bool {
        self.app.as_deref().is_none_or(|a| app == Some(a))
            && self.instance.is_none_or(|n| instance == Some(n))
            && self.host.as_deref().is_none_or(|h| h == host)
    }

    /// For messages: `app api, instance 2, host h1`, or `the environment`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(a) = &self.app {
            parts.push(format!("app {a}"));
        }
        if let Some(n) = self.instance {
            parts.push(format!("instance {n}"));
        }
        if let Some(h) = &self.host {
            parts.push(format!("host {h}"));
        }
        if parts.is_empty() {
            "the environment".into()
        } else {
            parts.join(", ")
        }
    }
}

/// `api#1@web2`: how every operate command names one instance on one host.
pub fn instance_label(app: &str, instance: Option<u32>, host: &str) -> String {
    match instance {
        Some(n) => format!("{app}#{n}@{host}"),
        None => format!("{app}#?@{host}"),
    }
}

pub use crate::observe::short_id;

/// The services of this project and environment on one agent (by Meta), as observe reads them.
pub use crate::observe::consul_read::fleet_services as managed_services;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::observe::{ContainerState, Health, ObservedContainer, ObservedService};

    fn container(app: &str, n: u32, version: &str) -> ObservedContainer {
        ObservedContainer {
            id: "0123456789abcdef".into(),
            name: format!("p-e-{app}-{n}-{version}"),
            app: Some(app.into()),
            instance: Some(n),
            version: Some(version.into()),
            spec_hash: None,
            fields: None,
            image: "img".into(),
            state: ContainerState::Running,
            health: Health::None,
            created: 0,
        }
    }

    fn service(app: &str, n: &str, version: Option<&str>) -> ObservedService {
        let mut meta = BTreeMap::from([
            ("fleet-app".to_string(), app.to_string()),
            ("fleet-instance".to_string(), n.to_string()),
        ]);
        if let Some(v) = version {
            meta.insert("fleet-version".into(), v.into());
        }
        ObservedService {
            id: "any-id-at-all".into(),
            name: app.into(),
            tags: vec![],
            meta,
            address: "10.0.0.1".into(),
            port: 1,
            checks: vec![],
        }
    }

    #[test]
    fn services_match_containers_by_meta_not_by_id() {
        let c = container("api", 2, "v2");
        assert!(service("api", "2", Some("v2")).belongs_to(&c));
        assert!(service("api", "2", None).belongs_to(&c));
        assert!(!service("api", "2", Some("v1")).belongs_to(&c));
        assert!(!service("api", "1", Some("v2")).belongs_to(&c));
        assert!(!service("web", "2", Some("v2")).belongs_to(&c));
    }

    #[test]
    fn selector_matches_and_describes() {
        let s = Selector {
            app: Some("api".into()),
            instance: Some(1),
            host: None,
        };
        assert!(s.matches(Some("api"), Some(1), "h1"));
        assert!(!s.matches(Some("api"), Some(2), "h1"));
        assert!(!s.matches(Some("web"), Some(1), "h1"));
        assert_eq!(s.describe(), "app api, instance 1");
        assert!(Selector::default().matches(None, None, "x"));
        assert_eq!(instance_label("api", Some(1), "web2"), "api#1@web2");
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
    }
}
