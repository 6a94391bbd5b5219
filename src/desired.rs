//! The desired state: what the manifest says should run, per host and per instance.
//!
//! Plain data. `resolve` (manifest + environment -> `DesiredState`) lives in
//! `manifest::resolve`; everything downstream (plan, apply, status) reads only these types.
//!
//! Secrets stay references here (`EnvValue::Secret`): their values are read at apply time
//! only (`manifest::secret::read`), and the spec hash covers the reference, never the value
//! (see `manifest::resolve` for exactly what the hash covers).

use std::collections::BTreeMap;
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// Everything one environment of one project should look like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    pub project: String,
    pub environment: String,
    /// Hosts of this environment, in manifest order.
    pub hosts: Vec<DesiredHost>,
    /// Per app facts that are not per instance (image to build, KV config).
    pub apps: Vec<DesiredApp>,
    /// How to reach the Consul agent on each host, when the project uses Consul.
    pub consul: Option<ConsulTarget>,
    pub registry: Option<RegistryTarget>,
    /// The environment's canary: how many hosts with changes a deploy converges first, before
    /// any other host starts (0: every host at once, up to `--parallel`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub canary: usize,
    /// Commands run on the machine fleet runs on, before and after a deploy.
    #[serde(default, skip_serializing_if = "Hooks::is_empty")]
    pub hooks: Hooks,
    /// The edge proxy and the public routes, when an app is public (docs/edge.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<DesiredEdge>,
    /// The Consul agent of each host (`[consul.agent]`), for `fleet setup`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<AgentSpec>,
}

/// The edge: which hosts run the proxy, how, and this environment's routes on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredEdge {
    /// Host names (manifest order) that run the proxy.
    pub hosts: Vec<String>,
    pub image: String,
    pub http_port: u16,
    pub https_port: u16,
    pub tls: EdgeTls,
    /// Most specific first (longer paths before shorter ones).
    pub routes: Vec<Route>,
}

/// How the edge gets certificates for the route hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum EdgeTls {
    /// Caddy's automatic HTTPS: ACME for public names, its internal CA for localhost and IPs.
    Auto { email: Option<String> },
    /// ACME (Let's Encrypt) only.
    Acme { email: Option<String> },
    /// The proxy's own CA.
    Internal,
    /// A given certificate and key.
    Files { cert: SecretRef, key: SecretRef },
    /// HTTP only.
    Off,
}

impl EdgeTls {
    pub fn on(&self) -> bool {
        !matches!(self, EdgeTls::Off)
    }
}

/// One app's public route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub app: String,
    /// The Consul service whose passing instances are the upstreams.
    pub service: String,
    pub hosts: Vec<String>,
    /// `/` or a prefix (`/api`).
    pub path: String,
    /// The app's HTTP health path, checked by the proxy too (`None` for a TCP check).
    pub health_path: Option<String>,
    #[serde(with = "humantime_serde_compat")]
    pub health_interval: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub health_timeout: Duration,
    /// How long the proxy waits for the response headers (`public.timeout`). A GET with none
    /// by then is tried on another instance (one on a lost host never answers).
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
}

impl Route {
    /// `koa.localhost/`, `a.example.com,b.example.com/api`.
    pub fn label(&self) -> String {
        format!("{}{}", self.hosts.join(","), self.path)
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// `pre_deploy` / `post_deploy` commands (each run with `sh -c`, in order), after the
/// environment's override (an environment that sets a hook replaces the project's list).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hooks {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_deploy: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_deploy: Vec<String>,
}

impl Hooks {
    pub fn is_empty(&self) -> bool {
        self.pre_deploy.is_empty() && self.post_deploy.is_empty()
    }
}

/// How fleet reaches a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostTarget {
    /// The manifest's name for the host (`web1`).
    pub name: String,
    /// `local` for the machine fleet runs on (no SSH), else an address or ssh_config alias.
    pub address: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<String>,
    /// Path of the Docker socket on the host. Default `/run/docker.sock`.
    pub docker_socket: String,
    pub roles: Vec<String>,
}

impl HostTarget {
    pub fn is_local(&self) -> bool {
        self.address == "local"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredHost {
    pub target: HostTarget,
    /// Every instance this host should run, ordered by app (manifest order) then instance number.
    pub instances: Vec<InstanceSpec>,
}

/// App level facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredApp {
    pub name: String,
    /// The image reference without tag (`10.200.1.1:5000/shop/api`) or with one for
    /// apps that use a prebuilt `image`.
    pub image: String,
    /// The version (image tag) that should run.
    pub version: String,
    /// Present when fleet builds the image itself.
    pub build: Option<BuildSpec>,
    /// KV keys (full paths, `<project>/<env>/<app>/<key>`) and their values.
    pub config: BTreeMap<String, String>,
    /// Whether a deploy writes `config` before or after the app's containers.
    #[serde(default)]
    pub config_order: ConfigOrder,
    /// How many instances a rollout replaces at once.
    pub batch: u32,
    /// How long a new instance may take to become healthy before the deploy fails.
    #[serde(with = "humantime_serde_compat")]
    pub health_deadline: Duration,
    /// How long every pm2 worker of a new container must stay online, without a restart,
    /// before the container counts as healthy (`health.min_healthy`). Not in the spec hash.
    #[serde(with = "humantime_serde_compat", default = "default_min_healthy")]
    pub min_healthy: Duration,
    /// Whether the containers run pm2 (`pm2` in the manifest): `None` looks at the main
    /// process (`pm2-runtime`), `Some(false)` never reads workers. Not in the spec hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pm2: Option<bool>,
    /// An `[accessories.NAME]`: its old container is stopped before the new one starts (the
    /// plan says so), and `fleet rollback` leaves it as the manifest says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accessory: bool,
}

/// How long every pm2 worker of a new container must stay online without a restart (the
/// manifest's `health.min_healthy` default; also what a spec recorded without it means).
pub const DEFAULT_MIN_HEALTHY: Duration = Duration::from_secs(3);

fn default_min_healthy() -> Duration {
    DEFAULT_MIN_HEALTHY
}

/// When a deploy writes an app's `config` (docs/deploy.md, "Config and containers").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigOrder {
    /// Before the app's containers are replaced: new containers start with their config and
    /// the health gate checks the pair; the old ones see it while they still serve. A failed
    /// deploy writes the old config back.
    #[default]
    First,
    /// After every instance of every app passed its health gate: the old containers never see
    /// the new config; the new ones start with the old and see the new config only if they
    /// read it on the fly.
    Last,
}

/// What `fleet build` needs to build an app's image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSpec {
    /// Absolute path of the build context.
    pub context: std::path::PathBuf,
    /// Dockerfile path relative to the context.
    pub dockerfile: String,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
}

/// One container that should run on one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub app: String,
    /// 1-based instance number on this host.
    pub instance: u32,
    /// The version (image tag) this instance runs.
    pub version: String,
    /// Hash of everything that, when changed, needs a new container (hex, 12 chars).
    pub spec_hash: String,
    pub container: ContainerSpec,
    /// The Consul service to register for this instance, if the app has one.
    pub service: Option<ServiceSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Full image reference with tag.
    pub image: String,
    /// Replaces the image's entrypoint command arguments (`CMD`), when set.
    pub command: Option<Vec<String>>,
    pub env: IndexMap<String, EnvValue>,
    pub ports: Vec<PortSpec>,
    /// Labels from the manifest plus fleet's own (`labels::ALL`).
    pub labels: BTreeMap<String, String>,
    pub volumes: Vec<String>,
    pub network: Option<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub restart: RestartPolicy,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU limit in cores.
    pub cpus: Option<f64>,
    #[serde(with = "humantime_serde_compat")]
    pub stop_timeout: Duration,
    pub health: Option<HealthSpec>,
    /// `/etc/hosts` entries (`name:ip`); `name:host-gateway` is Docker's own word for the
    /// host's bridge gateway (the host as seen from its containers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// DNS servers for the container (IPs). `host-gateway` is replaced, when the container is
    /// created, by the host's Docker bridge gateway (read from the engine), as in `extra_hosts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

/// The word that stands for the host's Docker bridge gateway in `extra_hosts` and `dns`.
pub const HOST_GATEWAY: &str = "host-gateway";

/// An environment value: literal, or a reference to a secret read at apply time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EnvValue {
    Plain(String),
    Secret(SecretRef),
}

/// Where a secret's value comes from. Never holds the value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretRef {
    Env(String),
    File(FileRef),
}

/// A `{ file = ".." }` secret: the file to read, and its path as the manifest writes it.
/// Serialized as the path alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct FileRef {
    /// Absolute (a relative path is relative to the manifest's directory): what is read.
    pub path: String,
    /// As written, normalized (`secrets/db`, `/run/pw`): the same in every checkout of the
    /// manifest, so it is what the spec hash counts.
    pub written: String,
}

impl FileRef {
    /// A reference written as the absolute `path`.
    pub fn at(path: impl Into<String>) -> FileRef {
        let path = path.into();
        FileRef {
            written: path.clone(),
            path,
        }
    }
}

impl From<String> for FileRef {
    fn from(path: String) -> FileRef {
        FileRef::at(path)
    }
}

impl From<FileRef> for String {
    fn from(f: FileRef) -> String {
        f.path
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::Env(v) => write!(f, "(secret from env {v})"),
            SecretRef::File(r) => write!(f, "(secret from file {})", r.path),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// Port inside the container.
    pub container: u16,
    /// Port on the host. `0` (`published = "auto"`): Docker picks a free port when the
    /// container starts, so a new container can run beside the old one during a replace.
    pub host: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
}

fn tcp() -> String {
    "tcp".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    Always,
    UnlessStopped,
    OnFailure { max_retries: Option<u32> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    pub check: HealthCheck,
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Consul's DeregisterCriticalServiceAfter.
    #[serde(with = "humantime_serde_compat::option")]
    pub deregister_after: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheck {
    /// HTTP GET of this path on the instance's published port; 2xx is healthy.
    Http(String),
    /// TCP connect to the instance's published port.
    Tcp,
}

/// The Consul service registered for one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Stable per project, environment, app, instance and host: `<project>-<env>-<app>-<host>-<n>`.
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    /// Manifest meta plus fleet's own (`fleet-project`, ...), see `labels::meta_key`.
    pub meta: BTreeMap<String, String>,
    /// Address the service is reached at (the host's address).
    pub address: String,
    /// The registered port. `0`: the instance's auto port, read back from the running container
    /// by apply (and never drift for the plan).
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsulTarget {
    /// Address of the agent as seen from each host, e.g. `http://127.0.0.1:8500`.
    pub address: String,
    pub token: Option<SecretRef>,
    pub datacenter: Option<String>,
    /// `[consul] container_address`: the agent as seen from the host's containers, when the
    /// user sets it; else `manifest::resolve::container_consul_address` derives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_address: Option<String>,
    /// `[consul.agent]`: the agents `fleet setup` runs (docs/setup.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentDef>,
}

/// `[consul.agent]` as written (after the environment's overlay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentDef {
    pub image: String,
    /// The hosts that run Consul servers, by name.
    pub servers: Vec<String>,
    /// Where each server is named, for errors.
    #[serde(skip)]
    pub server_spans: Vec<std::ops::Range<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypt: Option<SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// The Consul agent of one host, as `fleet setup` runs it: a container on the host's network
/// (label `fleet.kind = agent`), its data on a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSpec {
    pub host: String,
    pub server: bool,
    pub image: String,
    /// The image's tag.
    pub version: String,
    pub container: String,
    pub volume: String,
    pub node: String,
    /// `-bind` and `-advertise`.
    pub bind: String,
    /// `-bootstrap-expect` (servers: the number of servers; clients 0).
    pub bootstrap_expect: u32,
    /// `-retry-join`: the other servers.
    pub retry_join: Vec<String>,
    pub datacenter: String,
    pub encrypt: Option<SecretRef>,
    pub token: Option<SecretRef>,
    /// More flags, as written.
    pub args: Vec<String>,
    /// The spec hash (`fleet.spec`): a change is a (rolling) replace.
    pub spec: String,
}

/// Durations as humantime strings (`5s`, `1m 30s`) in JSON, so `fleet show --json` reads well.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

/// The registry that built images are pushed to and pulled from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryTarget {
    /// `host:port` of the registry, as used in image references.
    pub server: String,
    pub username: Option<String>,
    pub password: Option<SecretRef>,
    /// `insecure = true`: as Docker's `insecure-registries`, HTTPS without checking the
    /// certificate, else plain HTTP.
    #[serde(default)]
    pub insecure: bool,
}

/// What `fleet build` needs for one app (no environment involved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildTarget {
    pub app: String,
    /// Image repository without tag, e.g. `10.200.1.1:5000/shop/api`.
    pub repository: String,
    pub build: BuildSpec,
}

/// The version (image tag) of each built app, from `build::content_tag`; apps with a
/// prebuilt `image` take the tag of that reference and do not appear here.
pub type Versions = BTreeMap<String, String>;
