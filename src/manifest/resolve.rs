//! Manifest + environment + versions -> `DesiredState`. Pure: no host, no file, no secret read.
//!
//! ## The spec hash
//! `InstanceSpec::spec_hash` is the first 12 hex digits of the SHA-256 of a canonical JSON
//! document holding exactly what Docker fixes when a container is created:
//! image reference with tag, command, environment (names, plain values, and secret
//! *references*), ports (container, host, protocol), the manifest's own labels, volumes,
//! network, user, workdir, restart policy, memory and CPU limits, and stop timeout.
//!
//! Not in it, because they change without a new container: the Consul service (name, tags,
//! meta: re-registered in place), the health check (run by Consul and fleet from outside, also
//! re-registered), KV config (written in place), `batch`, the health deadline, `min_healthy`
//! and `pm2` (how a rollout runs and what status reads, not what runs). fleet's own labels are
//! not in it either: they are derived from the hash and the version. A secret's *value* is not in it: changing only the value of a
//! secret does not replace containers (redeploy with a new version, or rename the reference).

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::model::{AppDef, Manifest, Source, runs_on};
use crate::desired::{
    ConsulTarget, ContainerSpec, DesiredApp, DesiredHost, DesiredState, EnvValue, HOST_GATEWAY,
    Hooks, InstanceSpec, PortSpec, RestartPolicy, ServiceSpec, Versions,
};
use crate::identity::labels;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("there is no environment `{name}`")]
    UnknownEnvironment { name: String, known: Vec<String> },
    #[error("no version (image tag) given for app `{0}`: build it first")]
    NoVersion(String),
    #[error("`{version}` is not a valid image tag (app `{app}`)")]
    BadVersion { app: String, version: String },
}

/// A valid Docker tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn tag_ok(t: &str) -> bool {
    let mut c = t.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphanumeric() || f == '_')
        && t.len() <= 128
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The image repository (no tag) of a built app.
pub fn repository(m: &Manifest, app: &str) -> String {
    match &m.registry {
        Some(r) => format!("{}/{}/{app}", r.server.trim_end_matches('/'), m.project),
        None => format!("{}/{app}", m.project),
    }
}

pub fn resolve(m: &Manifest, env: &str, versions: &Versions) -> Result<DesiredState, ResolveError> {
    let e = m
        .environments
        .iter()
        .find(|e| e.name == env)
        .ok_or_else(|| ResolveError::UnknownEnvironment {
            name: env.into(),
            known: m.environments.iter().map(|e| e.name.clone()).collect(),
        })?;

    // Per app: image repository (or reference), version.
    let mut apps = Vec::new();
    let mut images: BTreeMap<&str, (String, String)> = BTreeMap::new();
    for a in &e.apps {
        let Some(source) = &a.source else { continue };
        let (image, version, build) = match source {
            Source::Build(b) => {
                let v = versions
                    .get(&a.name)
                    .ok_or_else(|| ResolveError::NoVersion(a.name.clone()))?;
                (repository(m, &a.name), v.clone(), Some(b.clone()))
            }
            // A rollback asks for a recorded version (tag) of a prebuilt image too.
            Source::Image { reference, tag } => match versions.get(&a.name) {
                Some(v) if v != tag && !reference.contains('@') => {
                    let repo = reference
                        .strip_suffix(&format!(":{tag}"))
                        .unwrap_or(reference);
                    (format!("{repo}:{v}"), v.clone(), None)
                }
                _ => (reference.clone(), tag.clone(), None),
            },
        };
        if !tag_ok(&version) {
            return Err(ResolveError::BadVersion {
                app: a.name.clone(),
                version,
            });
        }
        let full = match build {
            Some(_) => format!("{image}:{version}"),
            None => image.clone(),
        };
        images.insert(&a.name, (full, version.clone()));
        apps.push(DesiredApp {
            name: a.name.clone(),
            image,
            version,
            build,
            config: a
                .config
                .iter()
                .map(|(k, v)| {
                    (
                        format!("{}{k}", config_prefix(&m.project, env, &a.name)),
                        v.clone(),
                    )
                })
                .collect(),
            config_order: a.config_order,
            batch: a.batch,
            health_deadline: a.health_deadline,
            min_healthy: a.min_healthy,
            pm2: a.pm2,
            accessory: a.kind == crate::manifest::Kind::Accessory,
        });
    }

    // The container spec (and so the spec hash) of instance N of an app is the same on every
    // host: compute it once per app and instance, then copy it to each host.
    let templates: BTreeMap<&str, Vec<InstanceSpec>> = e
        .apps
        .iter()
        .filter_map(|a| {
            let (image, version) = images.get(a.name.as_str())?;
            let specs = (1..=a.instances)
                .map(|n| instance(m, env, e.consul.as_ref(), a, n, image, version))
                .collect();
            Some((a.name.as_str(), specs))
        })
        .collect();

    let mut hosts = Vec::with_capacity(e.hosts.len());
    for h in m.hosts.iter().filter(|h| e.hosts.contains(&h.target.name)) {
        let placed: Vec<&AppDef> = e.apps.iter().filter(|a| runs_on(a, &h.target)).collect();
        let count = placed.iter().map(|a| a.instances as usize).sum();
        let mut instances = Vec::with_capacity(count);
        for a in placed {
            let Some(specs) = templates.get(a.name.as_str()) else {
                continue;
            };
            for spec in specs {
                let mut spec = spec.clone();
                if let Some(s) = &mut spec.service {
                    s.id = service_id(&m.project, env, &a.name, &h.target.name, spec.instance);
                    s.address = if h.target.is_local() {
                        "127.0.0.1".into()
                    } else {
                        h.target.address.clone()
                    };
                }
                instances.push(spec);
            }
        }
        hosts.push(DesiredHost {
            target: h.target.clone(),
            instances,
        });
    }

    let edge = desired_edge(m, e);
    let agents = match e
        .consul
        .as_ref()
        .and_then(|c| c.agent.as_ref().map(|a| (c, a)))
    {
        Some((c, a)) => {
            let targets: Vec<&crate::desired::HostTarget> = hosts
                .iter()
                .map(|h: &crate::desired::DesiredHost| &h.target)
                .collect();
            super::setup::resolve_agents(&m.project, env, a, c.datacenter.as_deref(), &targets)
        }
        None => Vec::new(),
    };
    Ok(DesiredState {
        agents,
        edge,
        project: m.project.clone(),
        environment: env.into(),
        hosts,
        apps,
        consul: e.consul.clone(),
        registry: m.registry.clone(),
        canary: e.canary as usize,
        hooks: Hooks {
            pre_deploy: e
                .pre_deploy
                .clone()
                .unwrap_or_else(|| m.hooks.pre_deploy.clone()),
            post_deploy: e
                .post_deploy
                .clone()
                .unwrap_or_else(|| m.hooks.post_deploy.clone()),
        },
    })
}

/// The edge of environment `e`: its public apps' routes and the hosts of the proxy (the
/// `[edge]` roles, else every host that runs a public app). `None` without a public app.
fn desired_edge(m: &Manifest, e: &super::model::EnvDef) -> Option<crate::desired::DesiredEdge> {
    use crate::desired::{HealthCheck, Route};
    let public: Vec<&AppDef> = e
        .apps
        .iter()
        .filter(|a| a.public.is_some() && a.instances > 0 && a.service.is_some())
        .collect();
    if public.is_empty() {
        return None;
    }
    let mut routes: Vec<Route> = public
        .iter()
        .map(|a| {
            let p = a.public.as_ref().expect("filtered");
            let h = a.health.as_ref();
            Route {
                app: a.name.clone(),
                service: a
                    .service
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
                hosts: p.hosts.clone(),
                path: p.path.clone(),
                health_path: h.and_then(|h| match &h.check {
                    HealthCheck::Http(p) => Some(p.clone()),
                    HealthCheck::Tcp => None,
                }),
                health_interval: h.map_or(super::model::DEFAULT_HEALTH_INTERVAL, |h| h.interval),
                health_timeout: h.map_or(super::model::DEFAULT_HEALTH_TIMEOUT, |h| h.timeout),
                timeout: p.timeout,
            }
        })
        .collect();
    // Longer prefixes first: Caddy tries routes in order.
    routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
    let hosts = m
        .hosts
        .iter()
        .filter(|h| e.hosts.contains(&h.target.name))
        .filter(|h| {
            if e.edge.roles.is_empty() {
                public.iter().any(|a| runs_on(a, &h.target))
            } else {
                e.edge.roles.iter().any(|r| h.target.roles.contains(r))
            }
        })
        .map(|h| h.target.name.clone())
        .collect();
    Some(crate::desired::DesiredEdge {
        hosts,
        image: e.edge.image.clone(),
        http_port: e.edge.http,
        https_port: e.edge.https,
        tls: e.edge.tls.clone(),
        routes,
    })
}

/// Instance `n` of an app, with the service's host-specific `id` and `address` left empty.
fn instance(
    m: &Manifest,
    env: &str,
    consul: Option<&ConsulTarget>,
    a: &AppDef,
    n: u32,
    image: &str,
    version: &str,
) -> InstanceSpec {
    let host_port = a.host_port(n);
    let ports = match (a.port, host_port) {
        (Some(container), Some(host)) => vec![PortSpec {
            container,
            host,
            protocol: "tcp".into(),
        }],
        _ => Vec::new(),
    };
    let mut env_vars = a.env.clone();
    let (mut extra_hosts, mut dns) = (Vec::new(), Vec::new());
    if let Some(c) = consul {
        // The same on every host and independent of the config values, so a config change
        // is only a KV write (see docs/manifest.md, "Config on the fly").
        let addr = container_consul_address(c);
        if url_host(&addr) == Some(GATEWAY_NAME) {
            extra_hosts.push(format!("{GATEWAY_NAME}:{HOST_GATEWAY}"));
        }
        env_vars
            .entry(CONSUL_HTTP_ADDR.into())
            .or_insert(EnvValue::Plain(addr));
        env_vars
            .entry(FLEET_CONFIG_PREFIX.into())
            .or_insert(EnvValue::Plain(config_prefix(&m.project, env, &a.name)));
        if a.dns_consul.is_some() {
            dns.push(HOST_GATEWAY.to_string());
        }
    }
    let mut container = ContainerSpec {
        image: image.to_string(),
        command: a.command.clone(),
        env: env_vars,
        ports,
        labels: a.labels.clone(),
        volumes: a.volumes.clone(),
        network: a.network.clone(),
        user: a.user.clone(),
        workdir: a.workdir.clone(),
        restart: a.restart.clone(),
        memory: a.memory,
        cpus: a.cpus,
        stop_timeout: a.stop_timeout,
        health: a.health.clone(),
        extra_hosts,
        dns,
    };
    let spec_hash = spec_hash(&container);
    let ours = [
        (labels::PROJECT, m.project.clone()),
        (labels::ENV, env.to_string()),
        (labels::APP, a.name.clone()),
        (labels::INSTANCE, n.to_string()),
        (labels::VERSION, version.to_string()),
        (labels::SPEC, spec_hash.clone()),
    ];
    let service = a.service.as_ref().and_then(|s| {
        let port = host_port?;
        let mut meta = s.meta.clone();
        meta.extend(ours.iter().map(|(k, v)| (labels::meta_key(k), v.clone())));
        Some(ServiceSpec {
            id: String::new(),
            name: s.name.clone(),
            tags: s.tags.clone(),
            meta,
            address: String::new(),
            port,
        })
    });
    container
        .labels
        .extend(ours.into_iter().map(|(k, v)| (k.to_string(), v)));
    InstanceSpec {
        app: a.name.clone(),
        instance: n,
        version: version.to_string(),
        spec_hash,
        container,
        service,
    }
}

/// Environment variables fleet gives every container of an environment with `[consul]`.
pub const CONSUL_HTTP_ADDR: &str = "CONSUL_HTTP_ADDR";
pub const FLEET_CONFIG_PREFIX: &str = "FLEET_CONFIG_PREFIX";
/// The name containers reach their host by (Docker's `host-gateway`, in `/etc/hosts`).
pub const GATEWAY_NAME: &str = "host.docker.internal";

/// An app's KV prefix: `<project>/<env>/<app>/`; its `config` keys live under it.
pub fn config_prefix(project: &str, env: &str, app: &str) -> String {
    format!("{project}/{env}/{app}/")
}

/// The host part of an `http(s)://host[:port][/...]` URL.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    Some(match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    })
}

/// The Consul agent as the host's containers reach it: `[consul] container_address` if set;
/// else the agent's `address` with a loopback host replaced by `host.docker.internal` (the
/// host's Docker bridge gateway, where the agent's `client_addr` must also listen); a
/// non-loopback address is reachable from containers as it is.
pub fn container_consul_address(c: &ConsulTarget) -> String {
    if let Some(a) = &c.container_address {
        return a.clone();
    }
    match url_host(&c.address) {
        Some(h @ ("127.0.0.1" | "localhost" | "::1")) => {
            let (scheme, rest) = c.address.split_once("://").unwrap_or(("http", &c.address));
            let rest = if h == "::1" {
                rest.replacen("[::1]", GATEWAY_NAME, 1)
            } else {
                rest.replacen(h, GATEWAY_NAME, 1)
            };
            format!("{scheme}://{rest}")
        }
        _ => c.address.clone(),
    }
}

/// Stable Consul service ID: `<project>-<env>-<app>-<host>-<n>`. It does not carry the
/// version, so a new container of the same instance takes over the same registration.
pub fn service_id(project: &str, env: &str, app: &str, host: &str, n: u32) -> String {
    format!("{project}-{env}-{app}-{host}-{n}")
}

/// What Docker fixes at container creation; see the module docs.
#[derive(Serialize)]
struct HashInput<'a> {
    image: &'a str,
    command: &'a Option<Vec<String>>,
    /// Sorted, so the order of `env` in the manifest does not matter.
    env: BTreeMap<&'a str, HashEnv<'a>>,
    ports: &'a [PortSpec],
    labels: &'a BTreeMap<String, String>,
    volumes: &'a [String],
    network: &'a Option<String>,
    user: &'a Option<String>,
    workdir: &'a Option<String>,
    restart: &'a RestartPolicy,
    memory: Option<u64>,
    cpus: Option<f64>,
    stop_timeout_ms: u128,
    /// Left out when empty, so specs without them keep the hash they had before these existed.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    extra_hosts: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    dns: &'a [String],
}

#[derive(Serialize)]
enum HashEnv<'a> {
    Plain(&'a str),
    Secret(String),
}

/// How a secret reference counts in the spec hash. A `{ file = .. }` secret counts by its path
/// as the manifest writes it (`secrets/prod/db`), not the absolute path it is read from: the
/// same manifest checked out in another directory (a CI runner, a laptop) must hash the same,
/// or every deploy from elsewhere would replace its containers; and another file is another
/// spec, even one of the same name.
fn hashed_ref(r: &crate::desired::SecretRef) -> String {
    use crate::desired::SecretRef;
    match r {
        SecretRef::Env(v) => format!("Env({v:?})"),
        SecretRef::File(f) => format!("File({:?})", f.written),
    }
}

/// The spec hash of a container spec (before fleet's own labels are added).
pub fn spec_hash(c: &ContainerSpec) -> String {
    let json = serde_json::to_vec(&HashInput::of(c)).expect("plain data serializes");
    hex::encode(Sha256::digest(json))[..12].to_string()
}

impl<'a> HashInput<'a> {
    fn of(c: &'a ContainerSpec) -> Self {
        HashInput {
            image: &c.image,
            command: &c.command,
            env: c
                .env
                .iter()
                .map(|(k, v)| {
                    let hv = match v {
                        EnvValue::Plain(s) => HashEnv::Plain(s),
                        EnvValue::Secret(r) => HashEnv::Secret(hashed_ref(r)),
                    };
                    (k.as_str(), hv)
                })
                .collect(),
            ports: &c.ports,
            labels: &c.labels,
            volumes: &c.volumes,
            network: &c.network,
            user: &c.user,
            workdir: &c.workdir,
            restart: &c.restart,
            memory: c.memory,
            cpus: c.cpus,
            stop_timeout_ms: c.stop_timeout.as_millis(),
            extra_hosts: &c.extra_hosts,
            dns: &c.dns,
        }
    }
}

/// The spec hash `spec` would have with `image` instead of its own (a container of another
/// version of the same spec). fleet's own labels are left out, as `instance` adds them after
/// hashing.
pub fn spec_hash_with_image(spec: &InstanceSpec, image: &str) -> String {
    let mut c = spec.container.clone();
    c.image = image.to_string();
    c.labels.retain(|k, _| !labels::ALL.contains(&k.as_str()));
    spec_hash(&c)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::manifest::{Format, load_str};

    const SRC: &str = r#"
[project]
name = "p"
[hosts.here]
address = "local"
[hosts.there]
address = "10.0.0.2"
[registry]
server = "r:5000"
[apps.web]
image = "nginx:1.27"
port = 80
instances = 2
service = true
[apps.api]
build = "api"
hosts = ["there"]
[environments.prod]
"#;

    fn state(versions: &[(&str, &str)]) -> Result<DesiredState, crate::manifest::ManifestError> {
        let m = load_str(SRC, Format::Toml, "m.toml", Path::new("/proj")).unwrap();
        m.resolve(
            "prod",
            &versions
                .iter()
                .map(|(a, v)| (a.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn resolves_per_host_per_instance() {
        let s = state(&[("api", "c0ffee")]).unwrap();
        let here: Vec<_> = s.hosts[0]
            .instances
            .iter()
            .map(|i| (i.app.as_str(), i.instance))
            .collect();
        assert_eq!(here, [("web", 1), ("web", 2)]);
        let there: Vec<_> = s.hosts[1]
            .instances
            .iter()
            .map(|i| (i.app.as_str(), i.instance))
            .collect();
        assert_eq!(there, [("web", 1), ("web", 2), ("api", 1)]);
        let web2 = &s.hosts[0].instances[1];
        assert_eq!(web2.version, "1.27");
        assert_eq!(web2.container.image, "nginx:1.27");
        assert_eq!(
            web2.container.ports[0].host, 0,
            "auto: Docker picks the port"
        );
        let svc = web2.service.as_ref().unwrap();
        assert_eq!(
            (svc.id.as_str(), svc.address.as_str(), svc.port),
            ("p-prod-web-here-2", "127.0.0.1", 0)
        );
        let api = &s.hosts[1].instances[2];
        assert_eq!(api.container.image, "r:5000/p/api:c0ffee");
        assert_eq!(api.container.labels[labels::SPEC], api.spec_hash);
        assert_eq!(
            s.apps[1].build.as_ref().unwrap().context,
            Path::new("/proj/api")
        );
        // Same app and instance on two hosts: same spec, different service IDs.
        assert_eq!(
            s.hosts[0].instances[0].spec_hash,
            s.hosts[1].instances[0].spec_hash
        );
    }

    #[test]
    fn built_apps_need_a_valid_version() {
        assert!(matches!(
            state(&[]),
            Err(crate::manifest::ManifestError::Resolve {
                source: ResolveError::NoVersion(_),
                ..
            })
        ));
        assert!(matches!(
            state(&[("api", "not/a/tag")]),
            Err(crate::manifest::ManifestError::Resolve {
                source: ResolveError::BadVersion { .. },
                ..
            })
        ));
    }
}

#[cfg(test)]
mod hook_tests {
    use std::path::Path;

    use crate::manifest::{Format, load_str};

    const BASE: &str = r#"
[project]
name = "shop"
pre_deploy = "make test"
post_deploy = ["echo one", "echo two"]

[hosts.web1]
address = "10.0.0.1"

[apps.web]
image = "nginx:1.27"

[environments.production]
[environments.staging]
pre_deploy = []
post_deploy = "echo staging"
"#;

    #[test]
    fn hooks_resolve_with_per_environment_replacement() {
        let m = load_str(BASE, Format::Toml, "m.toml", Path::new("/p")).unwrap();
        let v = m.placeholder_versions();
        let prod = m.resolve("production", &v).unwrap().hooks;
        assert_eq!(prod.pre_deploy, vec!["make test"]);
        assert_eq!(prod.post_deploy, vec!["echo one", "echo two"]);
        let staging = m.resolve("staging", &v).unwrap().hooks;
        assert!(staging.pre_deploy.is_empty());
        assert_eq!(staging.post_deploy, vec!["echo staging"]);
    }

    #[test]
    fn a_file_secret_hashes_the_same_wherever_the_manifest_is() {
        let src = BASE.replace(
            "image = \"nginx:1.27\"",
            "image = \"nginx:1.27\"\nenv = { DB = { file = \"secrets/db\" } }",
        );
        // The spec hash of the secret written as `path`, the manifest in `dir`.
        let hash = |path: &str, dir: &str| {
            let text = src.replace("secrets/db", path);
            let m = load_str(&text, Format::Toml, "m.toml", Path::new(dir)).unwrap();
            let d = m.resolve("production", &m.placeholder_versions()).unwrap();
            d.hosts[0].instances[0].spec_hash.clone()
        };
        let db = hash("secrets/db", "/p");
        assert_eq!(
            hash("secrets/db", "/home/runner/work/shop"),
            hash("secrets/db", "/home/alice/src/shop")
        );
        assert_ne!(
            hash("secrets/other", "/p"),
            db,
            "another file is another spec"
        );
        // Another file of the same name is another spec too.
        assert_ne!(hash("secrets/staging/db", "/p"), db, "secrets/staging/db");
        // The same file written another way is the same spec.
        assert_eq!(hash("./secrets/x/../db", "/p"), db);
    }

    #[test]
    fn hooks_must_be_commands() {
        for (bad, expect) in [
            ("pre_deploy = 3", "a hook is a command"),
            ("pre_deploy = [\"ok\", \"  \"]", "must not be empty"),
            ("pre_deploy = \"\"", "must not be empty"),
            ("pre_deploy = [1]", "expected"),
        ] {
            let src = BASE.replace("pre_deploy = \"make test\"", bad);
            let err = load_str(&src, Format::Toml, "m.toml", Path::new("/p"))
                .err()
                .unwrap_or_else(|| panic!("{bad} was accepted"));
            let text = crate::manifest::render_plain(&err);
            assert!(text.contains(expect), "{bad}: {text}");
        }
    }

    #[test]
    fn canary_is_per_environment_and_bounded() {
        let src = BASE.replace(
            "[environments.staging]",
            "canary = 2\n[environments.staging]",
        );
        let m = load_str(&src, Format::Toml, "m.toml", Path::new("/p")).unwrap();
        let v = m.placeholder_versions();
        assert_eq!(m.resolve("production", &v).unwrap().canary, 2);
        assert_eq!(m.resolve("staging", &v).unwrap().canary, 0);
        for bad in ["canary = -1", "canary = \"one\"", "canary = 100000"] {
            let src = BASE.replace(
                "[environments.staging]",
                &format!("{bad}\n[environments.staging]"),
            );
            let err = load_str(&src, Format::Toml, "m.toml", Path::new("/p"))
                .err()
                .unwrap_or_else(|| panic!("{bad} was accepted"));
            assert!(
                crate::manifest::render_plain(&err).contains("canary"),
                "{bad}"
            );
        }
    }
}

#[cfg(test)]
mod consul_env_tests {
    use std::path::Path;

    use super::*;
    use crate::manifest::{Format, load_str};

    const SRC: &str = r#"
[project]
name = "koa"
[hosts.h1]
address = "10.0.0.1"
[hosts.h2]
address = "10.0.0.2"
[consul]
address = "http://127.0.0.1:8500"
[apps.app]
image = "node-app:1"
port = 3000
config = { greeting = "hi" }
[apps.client]
image = "node-client:1"
port = 3001
dns = "consul"
[environments.production]
"#;

    fn state(src: &str) -> DesiredState {
        let m = load_str(src, Format::Toml, "m.toml", Path::new("/p")).unwrap();
        m.resolve("production", &m.placeholder_versions()).unwrap()
    }

    fn env_of<'a>(s: &'a DesiredState, app: &str, name: &str) -> Option<&'a EnvValue> {
        s.hosts[0]
            .instances
            .iter()
            .find(|i| i.app == app)?
            .container
            .env
            .get(name)
    }

    #[test]
    fn containers_get_the_agent_and_their_kv_prefix() {
        let s = state(SRC);
        assert_eq!(
            env_of(&s, "app", CONSUL_HTTP_ADDR),
            Some(&EnvValue::Plain("http://host.docker.internal:8500".into()))
        );
        assert_eq!(
            env_of(&s, "app", FLEET_CONFIG_PREFIX),
            Some(&EnvValue::Plain("koa/production/app/".into()))
        );
        assert_eq!(
            s.apps[0].config.keys().collect::<Vec<_>>(),
            ["koa/production/app/greeting"],
            "the config keys live under the prefix the container is given"
        );
        let app = &s.hosts[0].instances[0].container;
        assert_eq!(app.extra_hosts, ["host.docker.internal:host-gateway"]);
        assert!(app.dns.is_empty(), "dns is opt-in");
        let client = &s.hosts[0].instances[1].container;
        assert_eq!(client.dns, [HOST_GATEWAY]);
        // Same spec on every host: nothing host-specific is in it.
        assert_eq!(
            s.hosts[0].instances[1].spec_hash,
            s.hosts[1].instances[1].spec_hash
        );
    }

    #[test]
    fn a_config_change_does_not_change_any_container() {
        let a = state(SRC);
        let b = state(&SRC.replace("greeting = \"hi\"", "greeting = \"hello there\""));
        assert_ne!(a.apps[0].config, b.apps[0].config);
        for (x, y) in a.hosts.iter().zip(&b.hosts) {
            for (i, j) in x.instances.iter().zip(&y.instances) {
                assert_eq!(i.spec_hash, j.spec_hash);
                assert_eq!(i.container, j.container);
            }
        }
    }

    #[test]
    fn dns_changes_the_spec_and_the_users_env_wins() {
        let a = state(SRC);
        let b = state(&SRC.replace("dns = \"consul\"\n", ""));
        assert_ne!(
            a.hosts[0].instances[1].spec_hash,
            b.hosts[0].instances[1].spec_hash
        );
        let own = SRC.replace(
            "port = 3000\n",
            "port = 3000\nenv = { CONSUL_HTTP_ADDR = \"http://10.9.9.9:8500\" }\n",
        );
        assert_eq!(
            env_of(&state(&own), "app", CONSUL_HTTP_ADDR),
            Some(&EnvValue::Plain("http://10.9.9.9:8500".into()))
        );
    }

    #[test]
    fn without_consul_nothing_is_added_and_the_hash_is_unchanged() {
        let src = SRC
            .replace("[consul]\naddress = \"http://127.0.0.1:8500\"\n", "")
            .replace("dns = \"consul\"\n", "");
        let s = state(&src);
        let c = &s.hosts[0].instances[0].container;
        assert!(c.env.is_empty() && c.extra_hosts.is_empty() && c.dns.is_empty());
        let mut bare = c.clone();
        bare.labels.retain(|k, _| !k.starts_with("fleet."));
        assert_eq!(s.hosts[0].instances[0].spec_hash, spec_hash(&bare));
        // Empty ones are left out of the hashed document (so hashes made before these fields
        // existed still hold); set ones count.
        let json = |c: &ContainerSpec| serde_json::to_string(&HashInput::of(c)).unwrap();
        assert!(!json(&bare).contains("dns") && !json(&bare).contains("extra_hosts"));
        let mut with = bare.clone();
        with.dns = vec!["10.0.0.53".into()];
        assert_ne!(spec_hash(&with), spec_hash(&bare));
    }

    #[test]
    fn the_container_address_of_the_agent() {
        let t = |address: &str, container: Option<&str>| {
            container_consul_address(&ConsulTarget {
                address: address.into(),
                token: None,
                datacenter: None,
                container_address: container.map(str::to_string),
                agent: None,
            })
        };
        assert_eq!(
            t("http://127.0.0.1:8500", None),
            "http://host.docker.internal:8500"
        );
        assert_eq!(
            t("https://localhost:8501/", None),
            "https://host.docker.internal:8501/"
        );
        assert_eq!(
            t("http://[::1]:8500", None),
            "http://host.docker.internal:8500"
        );
        assert_eq!(t("http://10.0.0.5:8500", None), "http://10.0.0.5:8500");
        assert_eq!(
            t("http://127.0.0.1:8500", Some("http://172.17.0.1:8500")),
            "http://172.17.0.1:8500"
        );
        // A user-set address elsewhere than host.docker.internal needs no /etc/hosts entry.
        let src = SRC.replace(
            "address = \"http://127.0.0.1:8500\"",
            "address = \"http://127.0.0.1:8500\"\ncontainer_address = \"http://172.17.0.1:8500\"",
        );
        assert!(
            state(&src).hosts[0].instances[0]
                .container
                .extra_hosts
                .is_empty()
        );
    }

    #[test]
    fn dns_needs_consul_and_a_known_value() {
        for (src, expect) in [
            (
                SRC.replace("[consul]\naddress = \"http://127.0.0.1:8500\"\n", ""),
                "resolves names through Consul, but environment `production` has no [consul]",
            ),
            (
                SRC.replace("dns = \"consul\"", "dns = \"8.8.8.8\""),
                "is not known",
            ),
        ] {
            let err = load_str(&src, Format::Toml, "m.toml", Path::new("/p")).expect_err("refused");
            let text = crate::manifest::render_plain(&err);
            assert!(text.contains(expect), "{text}");
        }
    }
}
