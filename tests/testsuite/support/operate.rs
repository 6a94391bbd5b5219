//! Running instances the way `apply` will, for the operate tests (until `fleet deploy` lands):
//! resolve a manifest, then on each host pull the image, create the container from
//! `apply::container::create_body` (so labels and name are fleet's own), start it, and register
//! it in the host's Consul stand-in with `operate::registration::for_instance` at the port Docker
//! published; the apps' `config` goes to the KV.
//!
//! Two test conveniences, both on purpose: every published port is turned into 0 (Docker picks
//! a free one) so these tests never collide with other users of the shared testbed on 8080,
//! and an optional entrypoint override lets a `command` run `sh -c` in the hello image (whose
//! entrypoint runs its own start script).
#![allow(dead_code)]

use std::path::Path;

use fleet::consul::{ConsulClient, KvPut};
use fleet::desired::DesiredState;
use fleet::host::{ConnectOptions, HostSession};

use crate::support::Testbed;

/// The hello image the testbed pushes (`cargo xtask testbed image`).
pub fn hello_image(tb: &Testbed) -> String {
    format!("{}/fleet-test/hello:v1", tb.registry)
}

/// A manifest for project `project`, environment `test` on the given testbed hosts, with
/// `apps` (TOML `[apps.x]` tables) appended. Registry credentials come from the environment.
pub fn manifest(tb: &Testbed, project: &str, hosts: &[&str], apps: &str) -> String {
    let mut s = format!(
        "[project]\nname = \"{project}\"\n\n[registry]\nserver = \"{}\"\ninsecure = true\nusername = {{ env = \"FLEET_REGISTRY_USER\" }}\npassword = {{ env = \"FLEET_REGISTRY_PASSWORD\" }}\n\n[consul]\naddress = \"http://127.0.0.1:8500\"\n\n",
        tb.registry
    );
    for h in hosts {
        let host = tb.host(h);
        s.push_str(&format!(
            "[hosts.{h}]\naddress = \"{}\"\nuser = \"root\"\nroles = [\"web\"]\n\n",
            host.address
        ));
    }
    s.push_str(apps);
    let list: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    s.push_str(&format!(
        "\n[environments.test]\nhosts = [{}]\n",
        list.join(", ")
    ));
    s
}

fn options(tb: &Testbed) -> ConnectOptions {
    ConnectOptions {
        ssh_config: Some(tb.ssh_config()),
        persist: None,
        ..ConnectOptions::default()
    }
}

/// The desired state of `env` in the manifest at `path` (prebuilt images only: no build).
pub fn resolve(path: &Path, env: &str) -> DesiredState {
    // The manifest reads the registry credentials from the environment.
    let loaded = fleet::manifest::load(Some(path)).expect("the test manifest loads");
    loaded
        .resolve(env, &Default::default())
        .expect("the test manifest resolves")
}

/// Start every instance of `desired` as `apply` would, on every host at once.
/// `entrypoint` (per app) replaces the image's entrypoint for that app's containers.
pub async fn start_instances(tb: &Testbed, desired: &DesiredState, entrypoint: &[(&str, &[&str])]) {
    use bollard::query_parameters::{
        CreateContainerOptions, InspectContainerOptions, StartContainerOptions,
    };
    let opts = options(tb);
    let jobs = desired.hosts.iter().enumerate().map(|(hi, h)| {
        let opts = opts.clone();
        async move {
            let s = HostSession::connect(&h.target, &opts)
                .await
                .unwrap_or_else(|e| panic!("connect {}: {e}", h.target.name));
            let docker = s.docker().await.expect("engine");
            let consul_url = s
                .consul_url("http://127.0.0.1:8500")
                .await
                .expect("forward to the agent");
            let consul = ConsulClient::new(&consul_url, consul_token(tb), None).unwrap();
            let mut pulled = std::collections::BTreeSet::new();
            for spec in &h.instances {
                if pulled.insert(spec.container.image.clone()) {
                    tb.pull(&docker, &spec.container.image).await;
                }
                let mut spec = spec.clone();
                for p in &mut spec.container.ports {
                    p.host = 0;
                }
                let mut body = fleet::apply::container::create_body(&spec, &|r| {
                    fleet::manifest::secret::read(r).ok()
                })
                .expect("every secret of the test manifest is set");
                if let Some((_, ep)) = entrypoint.iter().find(|(a, _)| *a == spec.app) {
                    body.entrypoint = Some(ep.iter().map(|s| s.to_string()).collect());
                }
                let name = spec.container_name(&desired.project, &desired.environment);
                docker
                    .create_container(
                        Some(CreateContainerOptions {
                            name: Some(name.clone()),
                            ..Default::default()
                        }),
                        body,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("create {name}: {e}"));
                docker
                    .start_container(&name, None::<StartContainerOptions>)
                    .await
                    .unwrap_or_else(|e| panic!("start {name}: {e}"));
                let i = docker
                    .inspect_container(&name, None::<InspectContainerOptions>)
                    .await
                    .unwrap();
                let ports = i.network_settings.as_ref().and_then(|n| n.ports.as_ref());
                let port = spec.container.ports.first().and_then(|p| {
                    fleet::operate::registration::published_port(ports, p.container, &p.protocol)
                });
                let labels = fleet::operate::status::labels_of(&i);
                if let Some(port) = port
                    && let Some(reg) = fleet::operate::registration::for_instance(
                        &spec,
                        i.id.as_deref().unwrap_or_default(),
                        port,
                        &h.target.address,
                        &labels,
                    )
                {
                    consul.register_service(&reg).await.expect("register");
                }
            }
            if hi == 0 {
                for app in &desired.apps {
                    for (k, v) in &app.config {
                        consul
                            .kv_put(k, v.as_bytes(), &KvPut::default())
                            .await
                            .expect("kv put");
                    }
                }
            }
            s.close().await;
        }
    });
    futures_util::future::join_all(jobs).await;
}

/// The testbed agents' ACL token, when they run with one.
pub fn consul_token(tb: &Testbed) -> Option<String> {
    std::fs::read_to_string(tb.dir.join("consul.token"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// What is left of `project` on the testbed: containers (by label) and registrations (by Meta)
/// per host, and KV keys under `<project>/` (through h1's agent).
pub async fn leftovers(tb: &Testbed, project: &str, hosts: &[&str]) -> (usize, usize, usize) {
    let opts = options(tb);
    let (mut containers, mut services, mut keys) = (0, 0, 0);
    for h in hosts {
        let host = tb.host(h);
        let target = fleet::desired::HostTarget {
            name: host.name.clone(),
            address: host.address.clone(),
            user: Some("root".into()),
            port: None,
            identity_file: None,
            docker_socket: "/run/docker.sock".into(),
            roles: vec![],
        };
        let s = HostSession::connect(&target, &opts).await.expect("connect");
        containers += fleet::observe::read::list_containers(&s, project, "test")
            .await
            .expect("list")
            .len();
        let url = s.consul_url("http://127.0.0.1:8500").await.unwrap();
        let c = ConsulClient::new(&url, consul_token(tb), None).unwrap();
        services += fleet::operate::managed_services(&c, project, "test")
            .await
            .unwrap()
            .len();
        if keys == 0 {
            keys = c
                .kv_keys(&format!("{project}/"), None, Default::default())
                .await
                .unwrap()
                .value
                .len();
        }
        s.close().await;
    }
    (containers, services, keys)
}

/// Remove everything of `project` with the real binary (`fleet destroy test --yes`), ignoring
/// the outcome: for cleanup at the end of a test, also after a failure.
pub fn destroy_quietly(tb: &Testbed, manifest: &Path) {
    let _ = tb
        .fleet()
        .arg("-f")
        .arg(manifest)
        .args(["destroy", "test", "--yes"])
        .stdin(std::process::Stdio::null())
        .output();
}
