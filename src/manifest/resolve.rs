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
//! re-registered), KV config (written in place), `batch` and the health deadline (how a
//! rollout runs, not what runs). fleet's own labels are not in it either: they are derived from
//! the hash and the version. A secret's *value* is not in it: changing only the value of a
//! secret does not replace containers (redeploy with a new version, or rename the reference).

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::model::{AppDef, Manifest, Source, runs_on};
use crate::desired::{
    ContainerSpec, DesiredApp, DesiredHost, DesiredState, EnvValue, Hooks, InstanceSpec, PortSpec,
    RestartPolicy, ServiceSpec, Versions,
};
use crate::labels;

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
            Source::Image { reference, tag } => (reference.clone(), tag.clone(), None),
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
                .map(|(k, v)| (format!("{}/{}/{}/{k}", m.project, env, a.name), v.clone()))
                .collect(),
            batch: a.batch,
            health_deadline: a.health_deadline,
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
                .map(|n| instance(m, env, a, n, image, version))
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

    Ok(DesiredState {
        project: m.project.clone(),
        environment: env.into(),
        hosts,
        apps,
        consul: e.consul.clone(),
        registry: m.registry.clone(),
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

/// Instance `n` of an app, with the service's host-specific `id` and `address` left empty.
fn instance(
    m: &Manifest,
    env: &str,
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
    let mut container = ContainerSpec {
        image: image.to_string(),
        command: a.command.clone(),
        env: a.env.clone(),
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
}

#[derive(Serialize)]
enum HashEnv<'a> {
    Plain(&'a str),
    Secret(String),
}

/// The spec hash of a container spec (before fleet's own labels are added).
pub fn spec_hash(c: &ContainerSpec) -> String {
    let input = HashInput {
        image: &c.image,
        command: &c.command,
        env: c
            .env
            .iter()
            .map(|(k, v)| {
                let hv = match v {
                    EnvValue::Plain(s) => HashEnv::Plain(s),
                    EnvValue::Secret(r) => HashEnv::Secret(format!("{r:?}")),
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
    };
    let json = serde_json::to_vec(&input).expect("plain data serializes");
    hex::encode(Sha256::digest(json))[..12].to_string()
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
}
