//! Operate: what people do with running instances after a deploy (`fleet status`, `info`,
//! `logs`, `restart` / `stop` / `start`, `exec`, `destroy`).
//!
//! Everything here finds fleet's work the way `observe` does (container labels, Consul service
//! Meta, KV prefix), never by name or service ID: a deploy may give a new instance a new
//! container name and a new service ID, while `fleet-app` / `fleet-instance` / `fleet-version`
//! stay the way to tell which registration belongs to which container.
//!
//! The split is the project's usual one: reading the hosts (`Connected`, `status::gather`,
//! `logs::collect`) touches the outside world; turning what was read into rows, lines or a list
//! of removals (`status::rows`, `logs::merge`, `destroy::Inventory`) is plain data and pure
//! functions, tested without hosts.

use crate::consul::{ConsulClient, ConsulError};
use crate::desired::{DesiredState, HostTarget, InstanceSpec};
use crate::host::{ConnectOptions, HostError, HostSession, close_all, connect_all};

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
    #[error("{host}: {source}")]
    Consul {
        host: String,
        #[source]
        source: ConsulError,
    },
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

/// Open sessions to every host of one environment, for the length of one command.
pub struct Connected {
    pub desired: DesiredState,
    pub sessions: Vec<Result<HostSession, HostError>>,
    pub options: ConnectOptions,
    /// The Consul ACL token's value, read once from the manifest's reference.
    pub consul_token: Option<String>,
}

impl Connected {
    /// Connect to every host of `desired` (at most `parallel` at once). A host that fails is kept
    /// as its error: commands report it and go on with the others.
    pub async fn open(
        desired: DesiredState,
        options: ConnectOptions,
        parallel: usize,
    ) -> Result<Self, OperateError> {
        let consul_token = crate::manifest::secret::consul_token(desired.consul.as_ref())
            .map_err(OperateError::ConsulToken)?;
        let targets: Vec<HostTarget> = desired.hosts.iter().map(|h| h.target.clone()).collect();
        let sessions = connect_all(&targets, &options, parallel).await;
        Ok(Connected {
            desired,
            sessions,
            options,
            consul_token,
        })
    }

    /// Close every session and remove the runtime directory.
    pub async fn close(self) {
        close_all(self.sessions, &self.options).await;
    }

    /// Each host's target with its session (or why there is none), in manifest order.
    pub fn hosts(&self) -> impl Iterator<Item = (&HostTarget, &Result<HostSession, HostError>)> {
        self.desired
            .hosts
            .iter()
            .map(|h| &h.target)
            .zip(self.sessions.iter())
    }

    /// The session of the host called `name`.
    pub fn session(&self, name: &str) -> Option<&Result<HostSession, HostError>> {
        self.hosts().find(|(t, _)| t.name == name).map(|(_, s)| s)
    }

    /// The desired instance `app#n` on host `host`, if the manifest wants one.
    pub fn desired_instance(&self, host: &str, app: &str, n: u32) -> Option<&InstanceSpec> {
        self.desired
            .hosts
            .iter()
            .find(|h| h.target.name == host)?
            .instances
            .iter()
            .find(|i| i.app == app && i.instance == n)
    }

    /// A Consul client for the agent of the host behind `session`; `None` when the project does
    /// not use Consul.
    pub async fn consul(
        &self,
        session: &HostSession,
    ) -> Option<Result<ConsulClient, OperateError>> {
        let c = self.desired.consul.as_ref()?;
        let host = session.target().name.clone();
        Some(
            async {
                let url = session.consul_url(&c.address).await?;
                ConsulClient::new(&url, self.consul_token.clone(), c.datacenter.clone())
                    .map(|cl| cl.with_target(format!("{host} (agent {})", c.address)))
                    .map_err(|source| OperateError::Consul { host, source })
            }
            .await,
        )
    }
}

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
