//! From an `InstanceSpec` to the body of Docker's `POST /containers/create`.
//!
//! Pure: secret values come in through `secrets`, already read, so this is testable
//! without a host and the values never pass through anything that prints.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, HostConfig, PortBinding, RestartPolicy as DockerRestart,
    RestartPolicyNameEnum,
};

use super::error::LaunchError;
pub use super::error::MissingSecret;
use crate::desired::{EnvValue, HOST_GATEWAY, InstanceSpec, RestartPolicy, SecretRef};
use crate::identity::labels;

/// The create body for one instance. `secrets` gives the value of each secret reference.
pub fn create_body(
    spec: &InstanceSpec,
    secrets: &dyn Fn(&SecretRef) -> Option<String>,
) -> Result<ContainerCreateBody, MissingSecret> {
    let c = &spec.container;
    let mut env = Vec::with_capacity(c.env.len());
    for (name, value) in &c.env {
        let value = match value {
            EnvValue::Plain(v) => v.clone(),
            EnvValue::Secret(r) => secrets(r).ok_or_else(|| MissingSecret {
                app: spec.app.clone(),
                name: name.clone(),
                secret: r.clone(),
            })?,
        };
        env.push(format!("{name}={value}"));
    }

    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &c.ports {
        let key = format!("{}/{}", p.container, p.protocol);
        exposed.push(key.clone());
        // Host port 0 asks Docker for a free ephemeral port: the new container can then run
        // beside the old one during a replace, and its real port is read back after start.
        let host_port = if p.host == 0 {
            String::new()
        } else {
            p.host.to_string()
        };
        bindings.insert(
            key,
            Some(vec![PortBinding {
                host_ip: None,
                host_port: Some(host_port),
            }]),
        );
    }

    let restart = match &c.restart {
        RestartPolicy::No => DockerRestart {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        },
        RestartPolicy::Always => DockerRestart {
            name: Some(RestartPolicyNameEnum::ALWAYS),
            maximum_retry_count: None,
        },
        RestartPolicy::UnlessStopped => DockerRestart {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        },
        RestartPolicy::OnFailure { max_retries } => DockerRestart {
            name: Some(RestartPolicyNameEnum::ON_FAILURE),
            maximum_retry_count: max_retries.map(i64::from),
        },
    };

    let host_config = HostConfig {
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        binds: (!c.volumes.is_empty()).then(|| c.volumes.clone()),
        network_mode: c.network.clone(),
        restart_policy: Some(restart),
        memory: c.memory.map(|m| m as i64),
        nano_cpus: c.cpus.map(|n| (n * 1e9).round() as i64),
        extra_hosts: (!c.extra_hosts.is_empty()).then(|| c.extra_hosts.clone()),
        // `host-gateway` stays in until `fill_host_gateway` puts the host's address there.
        dns: (!c.dns.is_empty()).then(|| c.dns.clone()),
        ..Default::default()
    };

    Ok(ContainerCreateBody {
        image: Some(c.image.clone()),
        cmd: c.command.clone(),
        env: Some(env),
        labels: Some(
            c.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        user: c.user.clone(),
        working_dir: c.workdir.clone(),
        stop_timeout: Some(c.stop_timeout.as_secs() as i64),
        host_config: Some(host_config),
        ..Default::default()
    })
}

/// The host ports fleet picks for auto-published ports: Docker's own ephemeral range.
pub const AUTO_PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;

/// Give every auto-published port of `body` (host port `""`: Docker would pick one) a concrete
/// host port from `AUTO_PORTS`, drawn from `seed`. Docker gives an ephemeral port again, often
/// another one, each time it restarts a container (restart policy, engine restart), which would
/// leave the instance's Consul registration on a dead port; a port written in the container's
/// config survives restarts. Returns whether any port was picked. A port that turns out to be
/// taken fails the start (`is_port_conflict`); the caller picks again, from the original body,
/// with another seed.
pub fn pin_auto_ports(body: &mut ContainerCreateBody, seed: u64) -> bool {
    let Some(bindings) = body
        .host_config
        .as_mut()
        .and_then(|h| h.port_bindings.as_mut())
    else {
        return false;
    };
    let span = (*AUTO_PORTS.end() - *AUTO_PORTS.start()) as u64 + 1;
    let mut x = seed | 1;
    let mut picked = false;
    let mut keys: Vec<String> = bindings.keys().cloned().collect();
    keys.sort();
    for k in keys {
        for b in bindings.get_mut(&k).into_iter().flatten().flatten() {
            if b.host_port.as_deref().is_none_or(str::is_empty) {
                // xorshift64: a different port per binding and per seed.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.host_port = Some((*AUTO_PORTS.start() as u64 + x % span).to_string());
                picked = true;
            }
        }
    }
    picked
}

/// Whether Docker refused to start a container because a host port is in use.
pub fn is_port_conflict(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("port is already allocated") || m.contains("address already in use")
}

/// Whether the body's DNS servers name `host-gateway` (`dns = "consul"`), which
/// [`fill_host_gateway`] must replace by an address before the container is created.
pub fn needs_host_gateway(body: &ContainerCreateBody) -> bool {
    body.host_config
        .as_ref()
        .and_then(|h| h.dns.as_ref())
        .is_some_and(|dns| dns.iter().any(|d| d == HOST_GATEWAY))
}

/// Replace `host-gateway` in the body's DNS servers by `gateway`, this host's Docker bridge
/// gateway (the address its containers reach the host at, where the Consul agent answers
/// DNS). Docker resolves the same word itself in `extra_hosts`, but not in `dns`, which takes
/// only IPs.
pub fn fill_host_gateway(body: &mut ContainerCreateBody, gateway: &str) {
    if let Some(dns) = body.host_config.as_mut().and_then(|h| h.dns.as_mut()) {
        for d in dns.iter_mut().filter(|d| *d == HOST_GATEWAY) {
            *d = gateway.to_string();
        }
    }
}

/// The named volumes a create body mounts (`name:/path` binds; not `/host/path:/path`).
pub fn named_volumes(body: &ContainerCreateBody) -> Vec<String> {
    body.host_config
        .as_ref()
        .and_then(|h| h.binds.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|b| b.split(':').next())
        .filter(|src| !src.is_empty() && !src.starts_with('/'))
        .map(str::to_string)
        .collect()
}

/// The labels fleet gives a named volume it creates: the project, environment and app of the
/// container that first mounts it (what `fleet destroy --volumes` looks for).
pub fn volume_labels(body: &ContainerCreateBody) -> HashMap<String, String> {
    let labels = body.labels.clone().unwrap_or_default();
    [labels::PROJECT, labels::ENV, labels::APP]
        .into_iter()
        .filter_map(|k| Some((k.to_string(), labels.get(k)?.clone())))
        .collect()
}

/// Create each named volume of `body` that does not exist yet, with `volume_labels`. One that
/// exists is used as it is (and so, without fleet's labels, never removed by fleet).
pub async fn ensure_volumes(
    docker: &bollard::Docker,
    body: &ContainerCreateBody,
) -> Result<(), LaunchError> {
    for name in named_volumes(body) {
        match docker.inspect_volume(&name).await {
            Ok(_) => continue,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => {
                return Err(LaunchError::ReadVolume {
                    name,
                    cause: crate::errors::chain(&e),
                });
            }
        }
        docker
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(name.clone()),
                labels: Some(volume_labels(body)),
                ..Default::default()
            })
            .await
            .map_err(|e| LaunchError::CreateVolume {
                name: name.clone(),
                cause: crate::errors::chain(&e),
            })?;
    }
    Ok(())
}

/// The host's Docker bridge gateway (`docker network inspect bridge`), for `dns = "consul"`.
pub async fn host_gateway(docker: &bollard::Docker) -> Result<String, LaunchError> {
    let net = docker
        .inspect_network(
            "bridge",
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .map_err(|e| LaunchError::BridgeNetwork {
            cause: e.to_string(),
        })?;
    bridge_gateway(&net).ok_or(LaunchError::NoBridgeGateway)
}

/// The first IPv4 gateway of a network, as `docker network inspect bridge` shows it.
fn bridge_gateway(net: &bollard::models::NetworkInspect) -> Option<String> {
    net.ipam
        .as_ref()?
        .config
        .as_ref()?
        .iter()
        .filter_map(|c| c.gateway.clone())
        .find(|g| g.parse::<std::net::Ipv4Addr>().is_ok())
}

#[cfg(test)]
mod tests {

    #[test]
    fn auto_ports_are_pinned_fixed_ones_kept() {
        let mut spec = crate::plan::fixtures::instance("h1", "web", 1, "v1");
        spec.container.ports = vec![
            crate::desired::PortSpec {
                container: 8080,
                host: 0,
                protocol: "tcp".into(),
            },
            crate::desired::PortSpec {
                container: 9090,
                host: 9090,
                protocol: "tcp".into(),
            },
        ];
        let body = create_body(&spec, &|_| Some("x".into())).unwrap();
        let port = |b: &ContainerCreateBody, k: &str| {
            b.host_config
                .as_ref()
                .unwrap()
                .port_bindings
                .as_ref()
                .unwrap()[k]
                .as_ref()
                .unwrap()[0]
                .host_port
                .clone()
                .unwrap()
        };
        assert_eq!(port(&body, "8080/tcp"), "");
        let (mut a, mut b) = (body.clone(), body.clone());
        assert!(pin_auto_ports(&mut a, 1));
        assert!(pin_auto_ports(&mut b, 2));
        let pa: u16 = port(&a, "8080/tcp").parse().unwrap();
        assert!(AUTO_PORTS.contains(&pa), "{pa}");
        assert_ne!(
            port(&a, "8080/tcp"),
            port(&b, "8080/tcp"),
            "another seed, another port"
        );
        assert_eq!(
            port(&a, "9090/tcp"),
            "9090",
            "a fixed port is the manifest's"
        );
        let mut none = body.clone();
        none.host_config.as_mut().unwrap().port_bindings = None;
        assert!(!pin_auto_ports(&mut none, 1));
        assert!(is_port_conflict(
            "driver failed programming external connectivity on endpoint x: Bind for 0.0.0.0:40000 failed: port is already allocated"
        ));
        assert!(!is_port_conflict("no such image"));
    }
    use std::collections::BTreeMap;
    use std::time::Duration;

    use indexmap::IndexMap;

    use super::*;
    use crate::desired::{ContainerSpec, PortSpec};

    fn spec() -> InstanceSpec {
        let mut env = IndexMap::new();
        env.insert("MODE".into(), EnvValue::Plain("prod".into()));
        env.insert(
            "DB_PASSWORD".into(),
            EnvValue::Secret(SecretRef::Env("DB_PW".into())),
        );
        InstanceSpec {
            app: "api".into(),
            instance: 1,
            version: "abc123".into(),
            spec_hash: "0123456789ab".into(),
            container: ContainerSpec {
                image: "reg:5000/shop/api:abc123".into(),
                command: Some(vec!["serve".into()]),
                env,
                ports: vec![
                    PortSpec {
                        container: 8080,
                        host: 0,
                        protocol: "tcp".into(),
                    },
                    PortSpec {
                        container: 9090,
                        host: 19090,
                        protocol: "tcp".into(),
                    },
                ],
                labels: BTreeMap::from([("fleet.app".into(), "api".into())]),
                volumes: vec!["data:/data".into()],
                network: None,
                user: Some("app".into()),
                workdir: None,
                restart: RestartPolicy::OnFailure {
                    max_retries: Some(3),
                },
                memory: Some(256 * 1024 * 1024),
                cpus: Some(0.5),
                stop_timeout: Duration::from_secs(20),
                health: None,
                extra_hosts: vec![],
                dns: vec![],
            },
            service: None,
        }
    }

    #[test]
    fn maps_every_field_docker_needs() {
        let body = create_body(&spec(), &|_| Some("s3cret".into())).unwrap();
        assert_eq!(body.image.as_deref(), Some("reg:5000/shop/api:abc123"));
        assert_eq!(body.env.unwrap(), vec!["MODE=prod", "DB_PASSWORD=s3cret"]);
        assert_eq!(body.stop_timeout, Some(20));
        let hc = body.host_config.unwrap();
        assert_eq!(hc.memory, Some(268_435_456));
        assert_eq!(hc.nano_cpus, Some(500_000_000));
        let rp = hc.restart_policy.unwrap();
        assert_eq!(rp.name, Some(RestartPolicyNameEnum::ON_FAILURE));
        assert_eq!(rp.maximum_retry_count, Some(3));
        let ports = hc.port_bindings.unwrap();
        let auto = ports["8080/tcp"].as_ref().unwrap()[0].host_port.clone();
        assert_eq!(auto.as_deref(), Some(""), "port 0 means Docker picks one");
        let fixed = ports["9090/tcp"].as_ref().unwrap()[0].host_port.clone();
        assert_eq!(fixed.as_deref(), Some("19090"));
    }

    #[test]
    fn named_volumes_are_the_binds_that_are_not_paths_and_get_the_containers_owner() {
        let mut s = spec();
        s.container.volumes = vec![
            "data:/data".into(),
            "/etc/app:/etc/app:ro".into(),
            "logs:/logs:rw".into(),
        ];
        s.container
            .labels
            .insert(labels::PROJECT.into(), "shop".into());
        s.container.labels.insert(labels::ENV.into(), "prod".into());
        s.container.labels.insert(labels::APP.into(), "db".into());
        s.container
            .labels
            .insert(labels::VERSION.into(), "7".into());
        let body = create_body(&s, &|_| Some("x".into())).unwrap();
        assert_eq!(named_volumes(&body), ["data", "logs"]);
        let l = volume_labels(&body);
        assert_eq!(l.len(), 3, "{l:?}");
        assert_eq!(l[labels::APP], "db");
        assert_eq!(l[labels::ENV], "prod");
    }

    #[test]
    fn a_missing_secret_names_app_and_variable() {
        let err = create_body(&spec(), &|_| None).unwrap_err();
        assert_eq!(err.app, "api");
        assert_eq!(err.name, "DB_PASSWORD");
        assert_eq!(err.secret, SecretRef::Env("DB_PW".into()));
    }

    #[test]
    fn extra_hosts_and_dns_reach_the_host_config() {
        let mut s = spec();
        s.container.extra_hosts = vec!["host.docker.internal:host-gateway".into()];
        s.container.dns = vec![HOST_GATEWAY.into()];
        let hc = create_body(&s, &|_| Some("x".into()))
            .unwrap()
            .host_config
            .unwrap();
        assert_eq!(
            hc.extra_hosts.unwrap(),
            ["host.docker.internal:host-gateway"]
        );
        assert_eq!(hc.dns.unwrap(), [HOST_GATEWAY]);
        let plain = create_body(&spec(), &|_| Some("x".into()))
            .unwrap()
            .host_config
            .unwrap();
        assert!(plain.extra_hosts.is_none() && plain.dns.is_none());
    }

    #[test]
    fn host_gateway_in_dns_becomes_the_bridge_address() {
        let mut s = spec();
        s.container.dns = vec![HOST_GATEWAY.into(), "1.1.1.1".into()];
        let mut body = create_body(&s, &|_| Some("x".into())).unwrap();
        assert!(needs_host_gateway(&body));
        fill_host_gateway(&mut body, "10.210.2.1");
        assert!(!needs_host_gateway(&body));
        assert_eq!(
            body.host_config.unwrap().dns.unwrap(),
            ["10.210.2.1", "1.1.1.1"]
        );
        let plain = create_body(&spec(), &|_| Some("x".into())).unwrap();
        assert!(!needs_host_gateway(&plain));
    }

    #[test]
    fn the_bridge_gateway_is_its_ipv4_one() {
        let net: bollard::models::NetworkInspect = serde_json::from_str(
            r#"{"Name":"bridge","IPAM":{"Driver":"default","Config":[
                {"Subnet":"fd00::/64","Gateway":"fd00::1"},
                {"Subnet":"10.210.2.0/24","Gateway":"10.210.2.1"}]}}"#,
        )
        .unwrap();
        assert_eq!(bridge_gateway(&net).as_deref(), Some("10.210.2.1"));
        let none: bollard::models::NetworkInspect =
            serde_json::from_str(r#"{"Name":"bridge","IPAM":{"Config":[]}}"#).unwrap();
        assert_eq!(bridge_gateway(&none), None);
    }
}
