//! The typed manifest, decoded from the spanned tree with every problem recorded.
//!
//! Environments are decoded by overlaying their app tables on the base apps first (see
//! `node::overlay` and docs/manifest.md "Environments"), then decoding the merged tree like any
//! app, so an overlay gets exactly the same checks, at its own spans.

mod app;
mod consul;
mod edge;
mod env;
pub mod setup;

use app::decode_app;
use consul::decode_consul;
use edge::decode_edge;
use env::decode_env;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;

use super::diag::{Cx, did_you_mean};
use super::keys::{
    ACCESSORY_KEYS, APP_KEYS, BUILD_KEYS, BUILDER_KEYS, CONSUL_KEYS, EDGE_KEYS, EDGE_TLS_KEYS,
    ENV_KEYS, HEALTH_KEYS, HOST_KEYS, LIMIT_KEYS, NOT_IN_OVERLAY, PROJECT_KEYS, PUBLIC_KEYS,
    REGISTRY_KEYS, SECRET_KEYS, SERVICE_KEYS, TOP_KEYS,
};
use super::node::{Key, Node, Span, Table, Value};
use crate::desired::{
    BuildSpec, ConfigOrder, ConsulTarget, EdgeTls, EnvValue, FileRef, HealthCheck, HealthSpec,
    Hooks, HostTarget, RegistryTarget, RestartPolicy, SecretRef,
};

/// Defaults, documented in docs/manifest.md (those the key table shows are in `keys`).
pub use super::keys::{DEFAULT_DOCKER_SOCKET, DEFAULT_EDGE_IMAGE, MAX_CANARY, MAX_INSTANCES};
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// `public.timeout`: how long the edge waits for an app's response headers.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_HEALTH_DEADLINE: Duration = Duration::from_secs(60);
pub use crate::desired::DEFAULT_MIN_HEALTHY;
/// Consul refuses anything shorter for DeregisterCriticalServiceAfter.
pub const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Manifest {
    /// Directory of the manifest file; build contexts are relative to it.
    pub dir: PathBuf,
    pub project: String,
    pub registry: Option<RegistryTarget>,
    /// Registry user name / password references, where they are written.
    pub registry_secrets: Vec<(SecretRef, Span)>,
    pub hosts: Vec<HostDef>,
    /// Apps as written, before any environment.
    pub apps: Vec<AppDef>,
    pub environments: Vec<EnvDef>,
    /// `[project] pre_deploy` / `post_deploy`.
    pub hooks: Hooks,
    /// `[builder] host`: the host whose Docker engine builds and pushes (over SSH); `None`,
    /// the local engine.
    pub builder: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HostDef {
    pub target: HostTarget,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct EnvDef {
    pub name: String,
    pub span: Span,
    /// Host names, manifest order.
    pub hosts: Vec<String>,
    /// Apps with this environment's overlays applied.
    pub apps: Vec<AppDef>,
    pub consul: Option<ConsulTarget>,
    /// Every secret reference this environment uses, where it is written.
    pub secrets: Vec<(SecretRef, Span)>,
    /// Hooks this environment sets; each replaces the project's list of the same kind.
    pub pre_deploy: Option<Vec<String>>,
    pub post_deploy: Option<Vec<String>>,
    /// Hosts a deploy converges first; the others start only after they all pass (0: none).
    pub canary: u32,
    /// The edge proxy: `[edge]` with this environment's `edge` merged in.
    pub edge: EdgeDef,
}

/// `[edge]`: the proxy of the apps' `public` routes (docs/edge.md).
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeDef {
    /// Hosts with one of these roles run it; empty: every host that runs a public app.
    pub roles: Vec<String>,
    pub image: String,
    pub http: u16,
    pub https: u16,
    pub tls: EdgeTls,
}

impl Default for EdgeDef {
    fn default() -> Self {
        EdgeDef {
            roles: Vec::new(),
            image: DEFAULT_EDGE_IMAGE.into(),
            http: 80,
            https: 443,
            tls: EdgeTls::Auto { email: None },
        }
    }
}

/// An app's `public = { host, path }`.
#[derive(Debug, Clone, PartialEq)]
pub struct PublicDef {
    pub hosts: Vec<String>,
    /// `/` or a prefix without a trailing `/` (`/api`).
    pub path: String,
    /// `timeout`: how long the edge waits for the response headers.
    pub timeout: Duration,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum Source {
    Build(BuildSpec),
    /// A prebuilt image: repository with tag, and the tag.
    Image {
        reference: String,
        tag: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Host port = container port + instance - 1.
    Auto,
    /// The same host port for every instance (so at most one instance per host).
    Fixed(u16),
    /// Not published on the host.
    No,
}

#[derive(Debug, Clone)]
pub struct ServiceDef {
    pub name: String,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
}

/// What a `[apps.NAME]` or `[accessories.NAME]` table describes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kind {
    /// One of the project's apps: built or prebuilt, rolled out with a health gate.
    #[default]
    App,
    /// A service the apps use (database, cache): a prebuilt image, one container per host,
    /// stopped before its replacement starts (its volume and fixed port are not shared), and
    /// converged before the apps.
    Accessory,
}

impl Kind {
    /// "app" or "accessory", for messages.
    pub fn word(self) -> &'static str {
        match self {
            Kind::App => "app",
            Kind::Accessory => "accessory",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AppDef {
    pub name: String,
    pub span: Span,
    pub kind: Kind,
    pub source: Option<Source>,
    /// Where the build context is named (`build.context`, else `build`), for errors about it.
    pub build_span: Option<Span>,
    pub roles: Vec<(String, Span)>,
    pub hosts: Vec<(String, Span)>,
    pub instances: u32,
    pub port: Option<u16>,
    pub published: Published,
    /// Where the host port is decided (`published`, else `port`, else the app's name).
    pub port_span: Span,
    pub command: Option<Vec<String>>,
    pub env: IndexMap<String, EnvValue>,
    pub secrets: Vec<(SecretRef, Span)>,
    pub health: Option<HealthSpec>,
    pub health_deadline: Duration,
    /// `health.min_healthy`: how long the pm2 workers of a new container must stay online
    /// without a restart before it counts as healthy.
    pub min_healthy: Duration,
    /// `pm2`: `Some(true)` reads the containers' pm2 workers whatever they run, `Some(false)`
    /// never, `None` when the main process is `pm2-runtime`.
    pub pm2: Option<bool>,
    pub restart: RestartPolicy,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub stop_timeout: Duration,
    pub service: Option<ServiceDef>,
    pub config: BTreeMap<String, String>,
    pub config_order: ConfigOrder,
    pub volumes: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub network: Option<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub batch: u32,
    /// `dns = "consul"`: the containers resolve names through their host's Consul agent
    /// (where it is written, to point at it when the environment has no `[consul]`).
    pub dns_consul: Option<Span>,
    /// `public`: the edge routes requests for these hosts and path to the app.
    pub public: Option<PublicDef>,
}

impl AppDef {
    /// The host port of one instance, per the `published` rule.
    pub fn host_port(&self, _instance: u32) -> Option<u16> {
        self.port?;
        match self.published {
            // 0: Docker picks a free host port when the container starts (see docs/manifest.md,
            // *Ports*); apply reads it back and registers that one.
            Published::Auto => Some(0),
            Published::Fixed(p) => Some(p),
            Published::No => None,
        }
    }
}

fn name_ok(s: &str, extra: &[char]) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || extra.contains(&c))
}

fn check_name(cx: &mut Cx, what: &str, name: &str, span: &Span, extra: &[char]) -> bool {
    if name_ok(name, extra) && name.len() <= 63 {
        return true;
    }
    let allowed = if extra.is_empty() {
        "lowercase letters, digits and `-`".to_string()
    } else {
        format!(
            "lowercase letters, digits, `-` and {}",
            extra
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(" ")
        )
    };
    cx.err(
        span,
        format!("`{name}` is not a valid {what} name"),
        "invalid name",
        Some(format!(
            "{what} names go into container names, Consul IDs and KV paths: use {allowed}, starting with a letter or digit, at most 63 characters"
        )),
    );
    false
}

/// A `{ env = ".." }` / `{ file = ".." }` reference, or `None` (with a problem) if malformed.
/// A relative file is relative to the manifest's directory `dir` (as build contexts are), not
/// to wherever fleet runs: the reference holds the absolute path.
pub(super) fn secret_ref(cx: &mut Cx, node: &Node, dir: &Path) -> Option<SecretRef> {
    let t = cx.table(node, "a secret reference", SECRET_KEYS)?;
    if t.entries.len() != 1 {
        cx.err(
            &node.span,
            "a secret reference has exactly one of `env` or `file`",
            "not a secret reference",
            Some("write `{ env = \"VAR\" }` or `{ file = \"/path\" }`".into()),
        );
        return None;
    }
    let (k, v) = &t.entries[0];
    let s = cx.text(v)?;
    Some(match k.name.as_str() {
        "env" => SecretRef::Env(s),
        _ => SecretRef::File(FileRef {
            path: normalize(&dir.join(&s)).display().to_string(),
            written: normalize(Path::new(&s)).display().to_string(),
        }),
    })
}

fn get<'a>(t: &'a Table, k: &str) -> Option<&'a Node> {
    t.get(k)
}

pub fn decode(cx: &mut Cx, root: &Node, dir: &Path) -> Option<Manifest> {
    let top = cx.table(root, "the manifest", TOP_KEYS)?;

    let project = match get(top, "project") {
        Some(n) => cx
            .table(n, "[project]", PROJECT_KEYS)
            .and_then(|t| match get(t, "name") {
                Some(name) => {
                    let s = cx.text(name)?;
                    check_name(cx, "project", &s, &name.span, &[]).then_some(s)
                }
                None => {
                    cx.err(
                        &n.span,
                        "[project] has no `name`",
                        "missing `name`",
                        Some("add `name = \"myproject\"`".into()),
                    );
                    None
                }
            }),
        None => {
            cx.err(
                &(0..0),
                "the manifest has no [project]",
                "missing [project]",
                Some("add `[project]` with `name = \"myproject\"`".into()),
            );
            None
        }
    };

    let mut hooks = Hooks::default();
    if let Some(t) = get(top, "project").and_then(|n| match &n.value {
        Value::Table(t) => Some(t),
        _ => None,
    }) {
        hooks.pre_deploy = get(t, "pre_deploy")
            .and_then(|h| hook_commands(cx, h))
            .unwrap_or_default();
        hooks.post_deploy = get(t, "post_deploy")
            .and_then(|h| hook_commands(cx, h))
            .unwrap_or_default();
    }

    let mut registry_secrets = Vec::new();
    let registry = get(top, "registry").and_then(|n| {
        let t = cx.table(n, "[registry]", REGISTRY_KEYS)?;
        let server = match get(t, "server") {
            Some(s) => cx.text(s),
            None => {
                cx.err(
                    &n.span,
                    "[registry] has no `server`",
                    "missing `server`",
                    Some("add `server = \"host:5000\"`".into()),
                );
                None
            }
        };
        // The user name is not a secret, but it may come from the environment (as on CI):
        // read at load time, so builds and pulls see a plain name.
        let username = get(t, "username").and_then(|u| match &u.value {
            Value::Table(_) => {
                let r = secret_ref(cx, u, dir)?;
                registry_secrets.push((r.clone(), u.span.clone()));
                super::secret::read(&r).ok()
            }
            _ => cx.text(u),
        });
        let password = get(t, "password").and_then(|p| {
            let r = secret_ref(cx, p, dir)?;
            registry_secrets.push((r.clone(), p.span.clone()));
            Some(r)
        });
        if let Some(p) = get(t, "password")
            && matches!(p.value, Value::Str(_))
        {
            cx.problems
                .pop_if(|pr| pr.message.starts_with("expected a table"));
            cx.err(
                &p.span,
                "a password must not be written in the manifest",
                "plain-text password",
                Some("use a secret reference: `password = { env = \"REGISTRY_PASSWORD\" }`".into()),
            );
        }
        let insecure = get(t, "insecure").and_then(|i| cx.bool(i)).unwrap_or(false);
        Some(RegistryTarget {
            server: server?,
            username,
            password,
            insecure,
        })
    });

    let base_consul = get(top, "consul");
    let mut hosts = Vec::new();
    if let Some(n) = get(top, "hosts")
        && let Some(t) = cx.map(n, "[hosts]")
    {
        for (k, v) in &t.entries {
            if let Some(h) = decode_host(cx, k, v) {
                hosts.push(HostDef::new(h, k.span.clone()));
            }
        }
    }
    if hosts.is_empty() && get(top, "hosts").is_none() {
        cx.err(
            &(0..0),
            "the manifest has no [hosts]",
            "missing [hosts]",
            Some("add a host: `[hosts.web1]` with `address = \"10.0.0.1\"`".into()),
        );
    }
    let all_roles: Vec<String> = {
        let mut r: Vec<String> = hosts.iter().flat_map(|h| h.target.roles.clone()).collect();
        r.sort();
        r.dedup();
        r
    };

    let empty = Table::default();
    let app_nodes: Vec<(Key, Node)> = match get(top, "apps") {
        Some(n) => cx.map(n, "[apps]").unwrap_or(&empty).entries.clone(),
        None => {
            cx.err(
                &(0..0),
                "the manifest has no [apps]",
                "missing [apps]",
                Some("add an app: `[apps.web]` with `image = \"nginx:1.27\"`".into()),
            );
            Vec::new()
        }
    };
    let accessory_nodes: Vec<(Key, Node)> = get(top, "accessories")
        .and_then(|n| cx.map(n, "[accessories]"))
        .map(|t| t.entries.clone())
        .unwrap_or_default();
    for (k, _) in &accessory_nodes {
        if app_nodes.iter().any(|(a, _)| a.name == k.name) {
            cx.err(
                &k.span,
                format!("`{}` is both an app and an accessory", k.name),
                "name taken by an app",
                Some("apps and accessories share one namespace (containers, `fleet logs ENV NAME`): rename one".into()),
            );
        }
    }
    // Accessories first: they are converged before the apps that use them.
    let mut apps = Vec::new();
    for (k, v) in &accessory_nodes {
        if let Some(a) = decode_app(cx, k, v, dir, Kind::Accessory) {
            apps.push(a);
        }
    }
    for (k, v) in &app_nodes {
        if let Some(a) = decode_app(cx, k, v, dir, Kind::App) {
            apps.push(a);
        }
    }

    let mut environments = Vec::new();
    if let Some(n) = get(top, "environments")
        && let Some(t) = cx.map(n, "[environments]")
    {
        for (k, v) in &t.entries {
            if let Some(e) = decode_env(
                cx,
                k,
                v,
                &app_nodes,
                &accessory_nodes,
                base_consul,
                get(top, "edge"),
                &hosts,
                dir,
            ) {
                environments.push(e);
            }
        }
    }

    // Placement and ports, per environment; with none, for the manifest as written.
    let registry_ok = registry.is_some();
    let checks: Vec<(Option<&str>, Vec<&HostDef>, &[AppDef])> = if environments.is_empty() {
        vec![(None, hosts.iter().collect(), &apps[..])]
    } else {
        environments
            .iter()
            .map(|e| {
                let hs = hosts
                    .iter()
                    .filter(|h| e.hosts.contains(&h.target.name))
                    .collect();
                (Some(e.name.as_str()), hs, &e.apps[..])
            })
            .collect()
    };
    for (env, env_hosts, env_apps) in checks {
        check_placement(
            cx,
            env,
            &env_hosts,
            env_apps,
            &hosts,
            &all_roles,
            registry_ok,
        );
    }
    if environments.is_empty() {
        // Consul settings are still checked once.
        if let Some(c) = base_consul {
            decode_consul(cx, c, dir);
        }
    }

    let builder = get(top, "builder").and_then(|n| {
        let t = cx.table(n, "[builder]", BUILDER_KEYS)?;
        let Some(h) = get(t, "host") else {
            cx.err(
                &n.span,
                "[builder] has no `host`",
                "missing `host`",
                Some("name the host that builds: `host = \"web1\"` (one of [hosts])".into()),
            );
            return None;
        };
        let name = cx.text(h)?;
        let known: Vec<&str> = hosts.iter().map(|d| d.target.name.as_str()).collect();
        unknown_ref(cx, "host", &name, &h.span, &known).then_some(name)
    });

    Some(Manifest {
        dir: dir.to_path_buf(),
        project: project?,
        registry,
        registry_secrets,
        hosts,
        apps,
        environments,
        hooks,
        builder,
    })
}

/// A hook: one command (a string) or several (an array of strings, run in order). Each runs
/// with `sh -c`; `Cx::text` refuses an empty one (a mistake, not a no-op).
fn hook_commands(cx: &mut Cx, node: &Node) -> Option<Vec<String>> {
    match &node.value {
        Value::Str(_) => cx.text(node).map(|c| vec![c]),
        Value::Array(_) => {
            let list = cx.str_list(node)?;
            Some(list.into_iter().map(|(c, _)| c).collect())
        }
        _ => {
            cx.err(
                &node.span,
                "a hook is a command (a string) or a list of commands",
                "not a command",
                Some("write `pre_deploy = \"make check\"` or `pre_deploy = [\"a\", \"b\"]`".into()),
            );
            None
        }
    }
}

fn decode_host(cx: &mut Cx, k: &Key, v: &Node) -> Option<HostTarget> {
    check_name(cx, "host", &k.name, &k.span, &['_']);
    let t = cx.table(v, &format!("host `{}`", k.name), HOST_KEYS)?;
    let address = match get(t, "address") {
        Some(a) => ssh_word(cx, a, "address"),
        None => {
            cx.err(
                &k.span,
                format!("host `{}` has no `address`", k.name),
                "missing `address`",
                Some("add `address = \"10.0.0.1\"` (or \"local\" for this machine)".into()),
            );
            None
        }
    };
    let roles = get(t, "roles")
        .and_then(|r| cx.str_list(r))
        .unwrap_or_default()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    Some(HostTarget {
        name: k.name.clone(),
        address: address?,
        user: get(t, "user").and_then(|u| ssh_word(cx, u, "user")),
        port: get(t, "port").and_then(|p| cx.u16(p, 1)),
        identity_file: get(t, "identity_file").and_then(|p| cx.text(p)),
        docker_socket: get(t, "docker_socket")
            .and_then(|p| cx.text(p))
            .unwrap_or_else(|| DEFAULT_DOCKER_SOCKET.into()),
        roles,
    })
}

/// A host's `address` or `user`: text that ssh cannot take for an option or a shell word
/// (`crate::host::destination_problem`), else a problem at the value.
pub(super) fn ssh_word(cx: &mut Cx, node: &Node, what: &str) -> Option<String> {
    let s = cx.text(node)?;
    if let Some(why) = crate::host::destination_problem(&s, what) {
        cx.err(
            &node.span,
            why,
            format!("not a valid {what}"),
            Some(format!(
                "write the host's {what} as ssh takes it, e.g. `{}`; ssh options go in your ssh_config",
                if what == "user" { "deploy" } else { "10.0.0.1" }
            )),
        );
    }
    // Kept even when refused: the manifest fails on the problem above, without a second one
    // for every reference to the host.
    Some(s)
}

impl HostDef {
    fn new(target: HostTarget, span: Span) -> Self {
        HostDef { target, span }
    }
}

fn unknown_ref(cx: &mut Cx, what: &str, name: &str, span: &Span, known: &[&str]) -> bool {
    if known.contains(&name) {
        return true;
    }
    let help = match did_you_mean(name, known.iter().copied()) {
        Some(s) => format!("did you mean `{s}`?"),
        None if known.is_empty() => format!("the manifest defines no {what}s"),
        None => format!("the {what}s are: {}", known.join(", ")),
    };
    cx.err(
        span,
        format!("there is no {what} `{name}`"),
        format!("unknown {what}"),
        Some(help),
    );
    false
}

/// `a/./b/../c` -> `a/c`, without touching the file system (resolution is pure).
pub fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                // The root's parent is the root.
                Some(Component::RootDir | Component::Prefix(_)) => {}
                // A relative path that leaves its start keeps every `..`.
                _ => out.push(".."),
            },
            c => out.push(c),
        }
    }
    out
}

/// `nginx:1.27` -> (`nginx:1.27`, `1.27`); `registry:5000/x` -> (`registry:5000/x:latest`, `latest`).
pub fn parse_image(s: &str) -> (String, String) {
    let last = s.rsplit('/').next().unwrap_or(s);
    if let Some((_, digest)) = s.split_once('@') {
        let hex = digest.rsplit(':').next().unwrap_or(digest);
        return (s.to_string(), hex.chars().take(12).collect());
    }
    match last.rsplit_once(':') {
        Some((_, tag)) if !tag.is_empty() => (s.to_string(), tag.to_string()),
        _ => (format!("{s}:latest"), "latest".to_string()),
    }
}

pub fn parse_restart(s: &str) -> Option<RestartPolicy> {
    Some(match s {
        "no" => RestartPolicy::No,
        "always" => RestartPolicy::Always,
        "unless-stopped" => RestartPolicy::UnlessStopped,
        "on-failure" => RestartPolicy::OnFailure { max_retries: None },
        _ => {
            let n = s.strip_prefix("on-failure:")?.parse().ok()?;
            RestartPolicy::OnFailure {
                max_retries: Some(n),
            }
        }
    })
}

/// Hosts and roles exist, every app has somewhere to run, built apps have a registry, and no
/// two instances publish the same host port on one host.
fn check_placement(
    cx: &mut Cx,
    env: Option<&str>,
    env_hosts: &[&HostDef],
    apps: &[AppDef],
    all_hosts: &[HostDef],
    all_roles: &[String],
    registry: bool,
) {
    let host_names: Vec<&str> = all_hosts.iter().map(|h| h.target.name.as_str()).collect();
    let role_names: Vec<&str> = all_roles.iter().map(String::as_str).collect();
    let remote = env_hosts.iter().any(|h| !h.target.is_local());
    // (host, port) -> (app, instance)
    let mut taken: BTreeMap<(&str, u16), (&str, u32)> = BTreeMap::new();
    // (route host, path) -> app
    let mut routes: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    let in_env = env.map_or(String::new(), |e| format!(" in environment `{e}`"));
    for app in apps {
        if let Some(p) = app.public.as_ref().filter(|_| app.instances > 0) {
            if app.service.is_none() {
                cx.err(&p.span, format!("app `{}` is public but has no `service`", app.name), "no upstreams", Some("the edge sends requests to the instances Consul lists as passing: add `service = true`".into()));
            }
            if app.health.is_none() {
                cx.err(&p.span, format!("app `{}` is public but has no health check", app.name), "no health check", Some("the edge routes only to instances that pass their check: add `health = { http = \"/health\" }`".into()));
            }
            if app.port.is_none() || app.published == Published::No {
                cx.err(&p.span, format!("app `{}` is public but publishes no port", app.name), "nothing to route to", Some("add `port = ...` and leave `published` at \"auto\" (the edge reaches each instance at its published host port)".into()));
            }
            for h in &p.hosts {
                if let Some(other) = routes.insert((h.as_str(), p.path.as_str()), app.name.as_str())
                {
                    cx.err(&p.span, format!("route {h}{} is claimed twice{in_env}", p.path), format!("also claimed by app `{other}`"), Some("each host name and path prefix goes to one app: change `host` or `path`".into()));
                }
            }
        }
        for (r, span) in &app.roles {
            unknown_ref(cx, "role", r, span, &role_names);
        }
        for (h, span) in &app.hosts {
            unknown_ref(cx, "host", h, span, &host_names);
        }
        if !registry && remote && matches!(app.source, Some(Source::Build(_))) {
            cx.err(&app.span, format!("app `{}` is built here, but the manifest has no [registry]", app.name), "needs a registry", Some("remote hosts pull built images from a registry: add `[registry]` with `server = \"host:5000\"`".into()));
        }
        let placed: Vec<&&HostDef> = env_hosts
            .iter()
            .filter(|h| runs_on(app, &h.target))
            .collect();
        if placed.is_empty() && app.instances > 0 {
            let where_ = env.map_or("on any host".to_string(), |e| {
                format!("in environment `{e}`")
            });
            cx.err(&app.span, format!("app `{}` has no host to run on {where_}", app.name), "placed nowhere", Some("check its `roles`/`hosts` and the environment's `hosts`; set `instances = 0` in the environment to leave it out on purpose".into()));
        }
        for h in placed {
            for i in 1..=app.instances {
                // Auto ports (0) are picked by Docker per container: they never collide.
                let Some(port) = app.host_port(i).filter(|p| *p != 0) else {
                    continue;
                };
                if let Some((other, oi)) =
                    taken.insert((h.target.name.as_str(), port), (app.name.as_str(), i))
                {
                    cx.err(&app.port_span, format!("host port {port} is published twice on host `{}`{in_env}", h.target.name), format!("instance {i} of `{}` and instance {oi} of `{other}`", app.name), Some("a fixed `published` port allows one instance per host and one app per port: use `published = \"auto\"` (Docker picks a free port, registered in Consul) or another port".into()));
                    break;
                }
            }
        }
    }
}

/// The least memory Docker gives a container (`limits.memory`).
pub const MIN_MEMORY: u64 = 6 * 1024 * 1024;

/// Whether an app runs on a host: by `hosts`, else by `roles`, else everywhere.
pub fn runs_on(app: &AppDef, host: &HostTarget) -> bool {
    if !app.hosts.is_empty() {
        app.hosts.iter().any(|(h, _)| *h == host.name)
    } else if !app.roles.is_empty() {
        app.roles.iter().any(|(r, _)| host.roles.contains(r))
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_and_restart_policies() {
        assert_eq!(
            parse_image("nginx:1.27"),
            ("nginx:1.27".into(), "1.27".into())
        );
        assert_eq!(
            parse_image("reg:5000/x"),
            ("reg:5000/x:latest".into(), "latest".into())
        );
        assert_eq!(
            parse_restart("on-failure:3"),
            Some(RestartPolicy::OnFailure {
                max_retries: Some(3)
            })
        );
        assert_eq!(parse_restart("sometimes"), None);
    }

    fn load(src: &str) -> Result<super::super::Loaded, super::super::ManifestError> {
        super::super::load_str(src, super::super::Format::Toml, "m.toml", Path::new("/p"))
    }

    const HUGE: &str = "[project]\nname = \"p\"\n[hosts.h1]\naddress = \"local\"\n[apps.web]\nimage = \"nginx:1.27\"\ninstances = 4294967295\n[environments.production]\n";

    #[test]
    fn instances_are_bounded_per_host_with_a_problem_at_the_line() {
        let over = HUGE.replace("4294967295", &(MAX_INSTANCES + 1).to_string());
        assert!(load(&over).is_err());
        let start = std::time::Instant::now();
        let err = load(HUGE).unwrap_err();
        // Refused at decode time, before anything iterates over the instances.
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        let super::super::ManifestError::Invalid { problems, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        let at = HUGE.find("4294967295").unwrap();
        assert_eq!(problems[0].span.offset(), at);
        let text = super::super::render_plain(&err);
        assert!(
            text.contains(&format!("must be between 0 and {MAX_INSTANCES}")),
            "{text}"
        );
        let ok = HUGE.replace("4294967295", &MAX_INSTANCES.to_string());
        let m = load(&ok).unwrap();
        let state = m.resolve("production", &m.placeholder_versions()).unwrap();
        assert_eq!(state.hosts[0].instances.len(), MAX_INSTANCES as usize);
    }

    const WITH_DB: &str = "[project]\nname = \"p\"\n[hosts.h1]\naddress = \"local\"\n[apps.web]\nimage = \"nginx:1.27\"\n[accessories.db]\nimage = \"redis:7\"\nhosts = [\"h1\"]\nport = 6379\nvolumes = [\"db:/data\"]\n[environments.production]\n";

    /// An accessory: first among the apps, its own port on the host, marked in the desired
    /// state; refused without an image, without a place, with `build`, or with an app's name.
    #[test]
    fn accessories_are_decoded_first_on_their_own_port_and_checked() {
        let m = load(WITH_DB).unwrap_or_else(|e| panic!("{}", super::super::render_plain(&e)));
        let d = m.resolve("production", &m.placeholder_versions()).unwrap();
        assert_eq!(d.apps[0].name, "db");
        assert!(d.apps[0].accessory && !d.apps[1].accessory);
        let db = &d.hosts[0].instances[0];
        assert_eq!((db.app.as_str(), db.container.ports[0].host), ("db", 6379));
        let refused = |src: String, says: &str| {
            let e = load(&src).expect_err(&src);
            let text = super::super::render_plain(&e);
            assert!(text.contains(says), "{says:?} not in:\n{text}");
        };
        refused(
            WITH_DB.replace("image = \"redis:7\"\n", ""),
            "accessory `db` has no `image`",
        );
        refused(
            WITH_DB.replace("hosts = [\"h1\"]\n", ""),
            "has neither `hosts` nor `roles`",
        );
        refused(
            WITH_DB.replace("port = 6379\n", "port = 6379\nbuild = \".\"\n"),
            "build",
        );
        refused(
            WITH_DB.replace("[accessories.db]", "[accessories.web]"),
            "both an app and an accessory",
        );
    }

    /// `pm2` and `health.min_healthy` reach the desired state, are checked, and replace no
    /// container (not in the spec hash).
    #[test]
    fn pm2_and_min_healthy_are_decoded_and_leave_the_spec_hash_alone() {
        const APP: &str = "[project]\nname = \"p\"\n[hosts.h1]\naddress = \"local\"\n[apps.web]\nimage = \"nginx:1.27\"\nport = 80\nhealth = { http = \"/\" }\n[environments.production]\n";
        let resolved = |src: &str| {
            let m = load(src).unwrap_or_else(|e| panic!("{}", super::super::render_plain(&e)));
            m.resolve("production", &m.placeholder_versions()).unwrap()
        };
        let plain = resolved(APP);
        assert_eq!(plain.apps[0].pm2, None);
        assert_eq!(plain.apps[0].min_healthy, DEFAULT_MIN_HEALTHY);
        let set = resolved(
            &APP.replace("port = 80\n", "port = 80\npm2 = false\n")
                .replace(
                    "{ http = \"/\" }",
                    "{ http = \"/\", min_healthy = \"1500ms\" }",
                ),
        );
        assert_eq!(set.apps[0].pm2, Some(false));
        assert_eq!(set.apps[0].min_healthy, Duration::from_millis(1500));
        assert_eq!(
            set.hosts[0].instances[0].spec_hash,
            plain.hosts[0].instances[0].spec_hash
        );
        let health = |h: &str| APP.replace("{ http = \"/\" }", h);
        for (src, says) in [
            (
                APP.replace("port = 80\n", "port = 80\npm2 = \"yes\"\n"),
                "expected a boolean",
            ),
            (
                health("{ http = \"/\", min_healthy = \"1m\" }"),
                "min_healthy (1m) is not shorter than the deadline (1m)",
            ),
            (health("{ http = \"/\", min_healthy = \"soon\" }"), "soon"),
        ] {
            let err = load(&src).unwrap_err();
            let text = super::super::render_plain(&err);
            assert!(text.contains(says), "{src}: {text}");
        }
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/../a")), PathBuf::from("/a"));
        assert_eq!(
            normalize(Path::new("./secrets/db")),
            PathBuf::from("secrets/db")
        );
        assert_eq!(
            normalize(Path::new("../../s/./db")),
            PathBuf::from("../../s/db")
        );
        assert_eq!(normalize(Path::new("a/../../b")), PathBuf::from("../b"));
    }
}
