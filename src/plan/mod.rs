//! The plan: what a deploy would change, computed by the pure `diff(desired, observed)`,
//! rendered as human text (`render::human`), as JSON (`render::json`, schema in
//! `docs/plan-json.md`) or as Markdown for a pull request (`markdown`), and saved with a fingerprint of what was observed (`saved`).

use serde::{Deserialize, Serialize};

use crate::observe::{ContainerState, Fault, Health};

pub mod diff;
mod edge;
pub mod live;
pub mod markdown;
pub mod render;
pub mod rollout;
pub mod saved;

pub use diff::diff;
pub use rollout::{ApplyContext, Rollout, SlotRollout, Strategy};

/// Everything a deploy of one environment would do, host by host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub project: String,
    pub environment: String,
    pub hosts: Vec<HostPlan>,
    /// KV changes (cluster-wide, not per host).
    pub kv: Vec<KvChange>,
    /// Every host (or agent) that could not be read; their part of the plan is unknown.
    pub faults: Vec<Fault>,
    /// Changes of the edge: proxy containers, shared config, this environment's routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edge: Vec<EdgeChange>,
    /// What apply needs beyond the changes (`rollout`); not shown, not saved.
    #[serde(skip)]
    pub context: ApplyContext,
}

/// What happens to a part of the edge (`create`, `remove`, `update` in the plan's JSON).
/// Alphabetical, as plans list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgeAction {
    Create,
    Remove,
    Update,
}

/// Which part of the edge (`config`, `container`, `route` in the plan's JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgeKind {
    /// The shared config: ports, listeners, this environment's TLS policy.
    Config,
    /// The proxy container.
    Container,
    /// One of this environment's routes.
    Route,
}

/// One change of the edge (docs/edge.md, *Plan*).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeChange {
    pub action: EdgeAction,
    pub kind: EdgeKind,
    /// The edge hosts it happens on.
    pub hosts: Vec<String>,
    /// The route (`koa.localhost/`) or the image.
    pub subject: String,
    /// The app a route goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// What differs, when it is an update.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostPlan {
    pub name: String,
    pub address: String,
    /// `false` when the host could not be read: `instances` and `services` are then empty.
    pub observed: bool,
    /// Sorted by app (manifest order, then apps no longer in the manifest), then instance.
    pub instances: Vec<InstanceChange>,
    pub services: Vec<ServiceChange>,
    /// `(app, image)` that this host's built apps run once the plan is applied (what image
    /// pruning keeps); not shown, not saved.
    #[serde(skip)]
    pub images_in_use: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Replace,
    Remove,
    Start,
    Unchanged,
}

impl Action {
    /// `+` create, `±` replace, `-` remove, `~` start (changed in place), blank unchanged.
    pub fn symbol(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Replace => "±",
            Action::Remove => "-",
            Action::Start => "~",
            Action::Unchanged => " ",
        }
    }
}

/// One container slot (app + instance number) on one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceChange {
    pub app: String,
    /// `None` for a managed container whose labels carry no readable instance number.
    pub instance: Option<u32>,
    pub action: Action,
    /// The container there now (for replace, remove, start, unchanged).
    pub current: Option<ContainerRef>,
    /// What should run (for create, replace, start, unchanged).
    pub desired: Option<DesiredRef>,
    pub reasons: Vec<Reason>,
    /// How apply carries it out (`rollout`); not shown, not saved.
    #[serde(skip)]
    pub rollout: Rollout,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRef {
    pub id: String,
    pub name: String,
    pub version: Option<String>,
    pub spec_hash: Option<String>,
    pub state: ContainerState,
    pub health: Health,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredRef {
    pub name: String,
    pub image: String,
    pub version: String,
    pub spec_hash: String,
}

/// Why something changes: a field name and a human explanation that never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub field: String,
    pub detail: String,
}

impl Reason {
    pub fn new(field: &str, detail: impl Into<String>) -> Self {
        Reason {
            field: field.into(),
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceAction {
    Register,
    Update,
    Deregister,
    Unchanged,
}

impl ServiceAction {
    pub fn symbol(self) -> &'static str {
        match self {
            ServiceAction::Register => "+",
            ServiceAction::Update => "~",
            ServiceAction::Deregister => "-",
            ServiceAction::Unchanged => " ",
        }
    }
}

/// One Consul registration on one host's agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceChange {
    pub id: String,
    pub name: String,
    /// The app it belongs to (from the desired state, else from its `fleet-app` Meta).
    pub app: String,
    pub instance: Option<u32>,
    pub action: ServiceAction,
    pub reasons: Vec<Reason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvAction {
    Put,
    Delete,
    Unchanged,
}

/// One KV key. Values are never part of a plan: only whether they change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvChange {
    pub key: String,
    pub action: KvAction,
    /// `new key`, `value changed`, `no longer in the manifest`, or empty when unchanged.
    pub reason: String,
    /// The key's ModifyIndex when the plan read it (0: absent): apply writes with
    /// check-and-set against it, so a key changed since the plan is not overwritten blindly.
    #[serde(default)]
    pub index: u64,
    /// The value a put writes; not shown, not saved (values are never part of what a plan
    /// prints).
    #[serde(skip)]
    pub value: Option<String>,
    /// The value the plan read (what a rollback puts back); not shown, not saved.
    #[serde(skip)]
    pub before: Option<Vec<u8>>,
}

impl KvChange {
    /// The app whose config the key is: the first segment under `<project>/<env>/`.
    pub fn app<'a>(&'a self, project: &str, env: &str) -> Option<&'a str> {
        let rest = self.key.strip_prefix(project)?.strip_prefix('/')?;
        let rest = rest.strip_prefix(env)?.strip_prefix('/')?;
        rest.split('/').next().filter(|a| !a.is_empty())
    }
}

/// Counts for the summary line and the JSON `summary` object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub create: usize,
    pub replace: usize,
    pub remove: usize,
    pub start: usize,
    pub unchanged: usize,
    pub register: usize,
    pub update: usize,
    pub deregister: usize,
    pub kv_put: usize,
    pub kv_delete: usize,
    /// Edge changes (containers, config, routes).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub edge: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Summary {
    pub fn changes(&self) -> usize {
        self.create
            + self.replace
            + self.remove
            + self.start
            + self.register
            + self.update
            + self.deregister
            + self.kv_put
            + self.kv_delete
            + self.edge
    }
}

impl Plan {
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for h in &self.hosts {
            for i in &h.instances {
                match i.action {
                    Action::Create => s.create += 1,
                    Action::Replace => s.replace += 1,
                    Action::Remove => s.remove += 1,
                    Action::Start => s.start += 1,
                    Action::Unchanged => s.unchanged += 1,
                }
            }
            for v in &h.services {
                match v.action {
                    ServiceAction::Register => s.register += 1,
                    ServiceAction::Update => s.update += 1,
                    ServiceAction::Deregister => s.deregister += 1,
                    ServiceAction::Unchanged => {}
                }
            }
        }
        s.edge = self.edge.len();
        for k in &self.kv {
            match k.action {
                KvAction::Put => s.kv_put += 1,
                KvAction::Delete => s.kv_delete += 1,
                KvAction::Unchanged => {}
            }
        }
        s
    }

    /// True when a deploy would change something.
    pub fn has_changes(&self) -> bool {
        self.summary().changes() > 0
    }

    /// The exit code for `--detailed-exitcode`: 1 on any fault, else 2 with changes, else 0.
    pub fn detailed_exit_code(&self) -> u8 {
        if !self.faults.is_empty() {
            1
        } else if self.has_changes() {
            2
        } else {
            0
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures;
