//! Test data: a small desired state and the observed state a correct deploy of it leaves.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::desired::*;
use crate::identity::fields::FieldDigests;
use crate::identity::labels;
use crate::observe::*;

fn target(name: &str, n: u8) -> HostTarget {
    HostTarget {
        name: name.into(),
        address: format!("10.200.{n}.2"),
        user: Some("root".into()),
        port: None,
        identity_file: None,
        docker_socket: "/run/docker.sock".into(),
        roles: vec!["web".into()],
    }
}

pub fn instance(host: &str, app: &str, n: u32, version: &str) -> InstanceSpec {
    let mut labels_map = BTreeMap::new();
    for (k, v) in [
        (labels::PROJECT, "shop"),
        (labels::ENV, "prod"),
        (labels::APP, app),
    ] {
        labels_map.insert(k.to_string(), v.to_string());
    }
    labels_map.insert(labels::INSTANCE.into(), n.to_string());
    labels_map.insert(labels::VERSION.into(), version.into());
    let mut env = indexmap::IndexMap::new();
    env.insert("LOG".to_string(), EnvValue::Plain("info".into()));
    env.insert(
        "DB_PASSWORD".to_string(),
        EnvValue::Secret(SecretRef::Env("SHOP_DB_PASSWORD".into())),
    );
    let port = 8080 + n as u16 - 1;
    let container = ContainerSpec {
        image: format!("10.200.1.1:5000/shop/{app}:{version}"),
        command: None,
        env,
        ports: vec![PortSpec {
            container: 8080,
            host: port,
            protocol: "tcp".into(),
        }],
        labels: labels_map,
        volumes: vec![],
        network: None,
        user: None,
        workdir: None,
        restart: RestartPolicy::UnlessStopped,
        memory: Some(256 * 1024 * 1024),
        cpus: None,
        stop_timeout: Duration::from_secs(10),
        health: Some(HealthSpec {
            check: HealthCheck::Http("/health".into()),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            deregister_after: None,
        }),
        extra_hosts: vec![],
        dns: vec![],
    };
    let mut s = InstanceSpec {
        app: app.into(),
        instance: n,
        version: version.into(),
        spec_hash: String::new(),
        container,
        service: None,
    };
    s.spec_hash = spec_hash(&s);
    s.container
        .labels
        .insert(labels::SPEC.into(), s.spec_hash.clone());
    if app == "web" {
        let mut meta = BTreeMap::new();
        for (l, v) in [
            (labels::PROJECT, "shop".to_string()),
            (labels::ENV, "prod".into()),
            (labels::APP, app.into()),
            (labels::INSTANCE, n.to_string()),
        ] {
            meta.insert(labels::meta_key(l), v);
        }
        s.service = Some(ServiceSpec {
            id: format!("shop-prod-{app}-{host}-{n}"),
            name: format!("shop-{app}"),
            tags: vec!["prod".into()],
            meta,
            address: "10.200.1.2".into(),
            port,
        });
    }
    s
}

/// A stand-in for the manifest's spec hash, good enough for tests: the hash of the spec JSON
/// without fleet's own labels.
pub fn spec_hash(s: &InstanceSpec) -> String {
    use sha2::Digest;
    let mut c = s.container.clone();
    c.labels.retain(|k, _| !k.starts_with("fleet."));
    hex::encode(&sha2::Sha256::digest(serde_json::to_vec(&c).unwrap())[..6])
}

pub fn rehash(s: &mut InstanceSpec) {
    s.spec_hash = spec_hash(s);
    s.container
        .labels
        .insert(labels::SPEC.into(), s.spec_hash.clone());
}

/// shop/prod: web x2 (with a Consul service) + worker x1 on h1 and h2; KV for web.
pub fn desired() -> DesiredState {
    let hosts = [("h1", 1u8), ("h2", 2)]
        .into_iter()
        .map(|(h, n)| DesiredHost {
            target: target(h, n),
            instances: vec![
                instance(h, "web", 1, "v1"),
                instance(h, "web", 2, "v1"),
                instance(h, "worker", 1, "v1"),
            ],
        })
        .collect();
    let app = |name: &str, config: &[(&str, &str)]| DesiredApp {
        name: name.into(),
        image: format!("10.200.1.1:5000/shop/{name}"),
        version: "v1".into(),
        build: None,
        config: config
            .iter()
            .map(|(k, v)| (format!("shop/prod/{name}/{k}"), v.to_string()))
            .collect(),
        config_order: Default::default(),
        batch: 1,
        health_deadline: Duration::from_secs(30),
        min_healthy: Duration::from_secs(3),
        pm2: None,
        accessory: false,
    };
    DesiredState {
        edge: None,
        agents: Vec::new(),
        project: "shop".into(),
        environment: "prod".into(),
        hosts,
        apps: vec![
            app("web", &[("greeting", "hello"), ("api_key", "s3cr3t-v4lue")]),
            app("worker", &[]),
        ],
        consul: Some(ConsulTarget {
            address: "http://127.0.0.1:8500".into(),
            token: None,
            datacenter: None,
            container_address: None,
            agent: None,
        }),
        registry: None,
        canary: 0,
        hooks: Default::default(),
    }
}

/// A container as a deploy of `i` leaves it.
pub fn container_for(d: &DesiredState, i: &InstanceSpec, created: i64) -> ObservedContainer {
    ObservedContainer {
        id: format!("{:0>12}", created),
        name: i.container_name(&d.project, &d.environment),
        app: Some(i.app.clone()),
        instance: Some(i.instance),
        version: Some(i.version.clone()),
        spec_hash: Some(i.spec_hash.clone()),
        fields: Some(FieldDigests::of(&i.container)),
        image: i.container.image.clone(),
        state: ContainerState::Running,
        health: Health::Healthy,
        created,
    }
}

/// The registration of instance `i` (which has a service) as a deploy leaves it, its check
/// (when the instance has one) passing.
pub fn service_for(i: &InstanceSpec) -> ObservedService {
    let s = i.service.as_ref().expect("the instance has a service");
    registered(i, &s.id, s.port)
}

/// [`service_for`] under registration ID `id` at port `port` (apply's `<id>-<container>` and
/// Docker's auto port).
pub fn registered(i: &InstanceSpec, id: &str, port: u16) -> ObservedService {
    let s = i.service.as_ref().expect("the instance has a service");
    ObservedService {
        id: id.to_string(),
        name: s.name.clone(),
        tags: s.tags.clone(),
        meta: s.meta.clone(),
        address: s.address.clone(),
        port,
        checks: i
            .container
            .health
            .iter()
            .map(|h| ObservedCheck {
                id: crate::identity::checks::check_definition(h, id, &s.address, port)
                    .check_id
                    .expect("fleet's checks have IDs"),
                status: "passing".into(),
            })
            .collect(),
    }
}

/// What the hosts look like right after a correct deploy of `d`.
pub fn deployed(d: &DesiredState) -> ObservedState {
    let mut created = 1_700_000_000;
    let hosts = d
        .hosts
        .iter()
        .map(|h| ObservedHost {
            edge: None,
            name: h.target.name.clone(),
            address: h.target.address.clone(),
            containers: h
                .instances
                .iter()
                .map(|i| {
                    created += 1;
                    container_for(d, i, created)
                })
                .collect(),
            services: Some(
                h.instances
                    .iter()
                    .filter(|i| i.service.is_some())
                    .map(service_for)
                    .collect(),
            ),
            fault: None,
            consul_fault: None,
        })
        .collect();
    let pairs = d
        .apps
        .iter()
        .flat_map(|a| a.config.iter())
        .zip(1..)
        .map(|((k, v), index)| crate::consul::KvPair {
            key: k.clone(),
            value: Some(v.as_bytes().to_vec()),
            flags: 0,
            create_index: index,
            modify_index: index,
            lock_index: 0,
            session: None,
        })
        .collect();
    ObservedState {
        project: d.project.clone(),
        environment: d.environment.clone(),
        hosts,
        kv: Some(ObservedKv::read("h1", pairs)),
        kv_fault: None,
    }
}

/// Nothing deployed yet.
pub fn empty(d: &DesiredState) -> ObservedState {
    let mut o = deployed(d);
    for h in &mut o.hosts {
        h.containers.clear();
        h.services = Some(vec![]);
    }
    o.kv.as_mut().unwrap().entries.clear();
    o
}

/// A plan with every kind of change: replace (version, env), create, remove (app gone),
/// start, register, update, deregister, KV put/delete, and one unreachable host.
/// Values in `busy_plan`'s inputs that no rendering of it may show: a secret's value, KV values
/// and a secret's source variable.
pub const NEVER_SHOWN: [&str; 4] = ["s3cr3t-v4lue", "bonjour", "hello", "SHOP_DB_PASSWORD"];

pub fn busy_plan() -> crate::plan::Plan {
    let mut d = desired();
    let mut o = deployed(&d);
    // h1: web#1 new version with an env change, web#2 exited, worker removed from manifest.
    let mut w = instance("h1", "web", 1, "v2");
    w.container.env.insert(
        "FEATURE".into(),
        crate::desired::EnvValue::Plain("on".into()),
    );
    rehash(&mut w);
    d.hosts[0].instances[0] = w;
    o.hosts[0].containers[1].state = crate::observe::ContainerState::Exited;
    d.apps.retain(|a| a.name != "worker");
    for h in &mut d.hosts {
        h.instances.retain(|i| i.app != "worker");
    }
    // h1: a stale registration for web#3.
    let ghost = instance("h1", "web", 3, "v1");
    o.hosts[0]
        .services
        .as_mut()
        .unwrap()
        .push(service_for(&ghost));
    // h1: web#1's registration gets a new tag.
    d.hosts[0].instances[0]
        .service
        .as_mut()
        .unwrap()
        .tags
        .push("canary".into());
    // h2: unreachable.
    o.hosts[1].fault = Some(crate::observe::Fault {
        host: "h2".into(),
        address: "10.200.2.2".into(),
        kind: "unreachable".into(),
        message: "ssh: connect to host 10.200.2.2 port 22: Connection refused".into(),
    });
    // KV: one new key, one changed value, one leftover.
    d.apps[0]
        .config
        .insert("shop/prod/web/greeting".into(), "bonjour".into());
    d.apps[0]
        .config
        .insert("shop/prod/web/new".into(), "1".into());
    o.kv.as_mut()
        .unwrap()
        .entries
        .insert("shop/prod/old/x".into(), "d".into());
    // A third host with nothing deployed yet.
    let mut h3 = d.hosts[0].clone();
    h3.target.name = "h3".into();
    h3.target.address = "10.200.3.2".into();
    for i in &mut h3.instances {
        *i = instance("h3", &i.app, i.instance, &i.version);
    }
    d.hosts.push(h3);
    o.hosts.push(crate::observe::ObservedHost {
        name: "h3".into(),
        address: "10.200.3.2".into(),
        services: Some(vec![]),
        ..Default::default()
    });
    crate::plan::diff(&d, &o)
}
