//! Readings for the tests of `fleet status` (`rows` here, the table and the JSON in
//! `cli::status::render`): every kind of row, on `plan::fixtures::desired()`.

use super::{ContainerReading, HostReading, ServiceReading};
use crate::consul::CheckStatus;
use crate::desired::DesiredState;
use crate::observe::ContainerState;
use crate::observe::ObservedService;
use crate::observe::pm2::{self, Worker};
use crate::plan::fixtures;

pub(crate) fn reading(
    d: &DesiredState,
    host: usize,
    app: &str,
    n: u32,
    version: &str,
    state: ContainerState,
) -> ContainerReading {
    let spec = d.hosts[host]
        .instances
        .iter()
        .find(|i| i.app == app && i.instance == n)
        .cloned()
        .unwrap_or_else(|| fixtures::instance(&d.hosts[host].target.name, app, n, version));
    let mut c = fixtures::container_for(d, &spec, 1_000);
    c.id = format!("c{host}{n}{app:0<61}");
    c.version = Some(version.into());
    c.name = format!("shop-prod-{app}-{n}-{version}");
    c.state = state;
    let running = state == ContainerState::Running;
    ContainerReading {
        container: c,
        restarts: Some(if running { 0 } else { 3 }),
        started_at: Some(1_000),
        exit_code: Some(if running { 0 } else { 137 }),
        cpu_percent: Some(1.25),
        memory_bytes: Some(12 * 1024 * 1024 + 300 * 1024),
        memory_limit_bytes: Some(256 * 1024 * 1024),
        workers: None,
    }
}

pub(crate) fn worker(pm_id: u32, status: &str, restarts: u64) -> Worker {
    let online = status == "online";
    Worker {
        name: "web".into(),
        pm_id,
        pid: online.then_some(40 + pm_id),
        status: status.into(),
        restarts,
        started_at_ms: online.then_some(1_040_500),
        cpu: online.then_some(0.5),
        memory: online.then_some(60 * 1024 * 1024),
    }
}

/// `busy()` where web#1@h1 runs pm2 with a worker that restarted and one pm2 gave up on,
/// the restarting web#2@h1 is a pm2 container too (not running: no workers), and a running
/// container the manifest no longer wants runs a pm2 whose `pm2 jlist` fails.
pub(crate) fn busy_with_pm2() -> (DesiredState, Vec<HostReading>) {
    let (d, mut r) = busy();
    let first = &mut r[0].containers[0];
    first.workers = Some(Ok(vec![
        worker(0, "online", 0),
        worker(1, "online", 2),
        worker(2, "errored", 15),
    ]));
    r[0].containers[1].workers = Some(Ok(vec![worker(0, "online", 0)]));
    let mut legacy = reading(&d, 0, "legacy", 1, "v0", ContainerState::Running);
    legacy.workers = Some(Err(pm2::Pm2Error::Exit {
        code: 127,
        output: "exec: \"pm2\": executable file not found in $PATH".into(),
    }
    .to_string()));
    r[0].containers.push(legacy);
    (d, r)
}

pub(crate) fn service(
    d: &DesiredState,
    host: usize,
    app: &str,
    n: u32,
    s: CheckStatus,
) -> ServiceReading {
    let spec = d.hosts[host]
        .instances
        .iter()
        .find(|i| i.app == app && i.instance == n)
        .unwrap();
    let svc = spec.service.as_ref().unwrap();
    ServiceReading {
        service: ObservedService {
            id: format!("{}-{}", svc.id, spec.version),
            name: svc.name.clone(),
            tags: svc.tags.clone(),
            meta: svc.meta.clone(),
            address: svc.address.clone(),
            port: svc.port,
            checks: vec![],
        },
        checks: vec![s],
    }
}

/// Every kind of row: running healthy, crash-looping, missing, unregistered, old version,
/// a container the manifest no longer wants, and a host that could not be read.
pub(crate) fn busy() -> (DesiredState, Vec<HostReading>) {
    let d = fixtures::desired();
    let mut readings: Vec<HostReading> = d
        .hosts
        .iter()
        .map(|h| HostReading {
            host: h.target.name.clone(),
            address: h.target.address.clone(),
            services: Some(vec![]),
            ..Default::default()
        })
        .collect();
    let names: Vec<(String, u32, String)> = d.hosts[0]
        .instances
        .iter()
        .map(|i| (i.app.clone(), i.instance, i.version.clone()))
        .collect();
    let (a0, n0, v0) = &names[0];
    readings[0]
        .containers
        .push(reading(&d, 0, a0, *n0, v0, ContainerState::Running));
    readings[0]
        .services
        .as_mut()
        .unwrap()
        .push(service(&d, 0, a0, *n0, CheckStatus::Passing));
    if let Some((a1, n1, _)) = names.get(1) {
        readings[0]
            .containers
            .push(reading(&d, 0, a1, *n1, "old1", ContainerState::Restarting));
    }
    readings[0]
        .containers
        .push(reading(&d, 0, "gone", 1, "v0", ContainerState::Exited));
    if readings.len() > 1 {
        readings[1].fault = Some("unreachable: connect to host port 22: Connection refused".into());
        readings[1].services = None;
    }
    (d, readings)
}
