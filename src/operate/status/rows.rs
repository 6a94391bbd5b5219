//! The pure part of `fleet status`: what `gather` read (`HostReading`, plain data) plus the
//! desired state in, `StatusRow`s and `StatusFault`s out; `StatusDoc` is the JSON document's
//! shape (`docs/status-json.md`), rendered with the table in `cli::status::render`. No I/O.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::consul::CheckStatus;
use crate::desired::DesiredState;
use crate::observe::ObservedService;
use crate::observe::pm2::Worker;
use crate::observe::{ContainerState, ObservedContainer};
use crate::operate::{Selector, short_id};

/// The version of the JSON document's shape; bumped on any incompatible change.
pub const JSON_FORMAT_VERSION: u32 = 1;

/// One managed container with what inspect and stats said about it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerReading {
    pub container: ObservedContainer,
    pub restarts: Option<i64>,
    /// Unix seconds of the last start, when it is running.
    pub started_at: Option<i64>,
    pub exit_code: Option<i64>,
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    /// pm2's workers, for a running container that runs pm2 (`None` for any other), or why
    /// they could not be read.
    pub workers: Option<Result<Vec<Worker>, String>>,
}

/// A registration on the host's agent and the status of each of its checks.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceReading {
    pub service: ObservedService,
    pub checks: Vec<CheckStatus>,
}

/// What one host said, or why it said nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostReading {
    pub host: String,
    pub address: String,
    pub containers: Vec<ContainerReading>,
    /// `None` when the project has no Consul or the agent could not be read.
    pub services: Option<Vec<ServiceReading>>,
    /// The host (SSH or engine) could not be read.
    pub fault: Option<String>,
    /// The agent could not be read.
    pub consul_fault: Option<String>,
}

/// Whether the manifest wants what a row shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// The manifest wants this instance and a container for it exists.
    Desired,
    /// The manifest wants this instance and no container for it exists.
    Missing,
    /// A managed container the manifest no longer wants (app or instance removed).
    Unwanted,
    /// The host could not be read: nothing is known about the instance.
    Unknown,
}

/// One line of `fleet status`. Also the element of the JSON document's `instances`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRow {
    pub app: String,
    /// `None` only for a container whose `fleet.instance` label is missing or unreadable.
    pub instance: Option<u32>,
    pub host: String,
    pub presence: Presence,
    /// First 12 characters of the container ID.
    pub container_id: Option<String>,
    pub container_name: Option<String>,
    /// The version the container runs (its `fleet.version` label).
    pub version: Option<String>,
    /// The version the manifest wants, for desired and missing instances.
    pub desired_version: Option<String>,
    /// The engine's state (`running`, `restarting`, `exited`, ...), `missing` or `unknown`.
    pub state: String,
    /// `passing`, `warning`, `critical` (worst check), `unregistered` (a service is wanted and
    /// none is registered), `none` (no service wanted nor registered), `unknown`.
    pub health: String,
    pub restarts: Option<i64>,
    pub uptime_secs: Option<u64>,
    pub exit_code: Option<i64>,
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    /// The pm2 workers of a running pm2 container; absent from the JSON for any other.
    #[serde(default, skip_serializing_if = "Workers::is_absent")]
    pub workers: Workers,
    /// Why the workers of a pm2 container could not be read (`workers` is then `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers_error: Option<String>,
}

/// One pm2 worker of an instance, as `pm2 list` shows it (`workers[]` in the JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRow {
    pub name: String,
    pub pm_id: u32,
    /// `None` while it has no process (stopped, errored, between restarts).
    pub pid: Option<u32>,
    /// pm2's status: `online`, `launching`, `waiting restart`, `stopping`, `stopped`, `errored`.
    pub status: String,
    /// pm2's restart count of this worker.
    pub restarts: u64,
    /// Seconds since its last start, when online.
    pub uptime_s: Option<u64>,
    /// CPU % (100 = one core), when online.
    pub cpu: Option<f64>,
    /// Resident memory in bytes, when online.
    pub memory: Option<u64>,
}

impl WorkerRow {
    /// `w` as read at unix second `now`.
    pub fn of(w: &Worker, now: i64) -> Self {
        WorkerRow {
            name: w.name.clone(),
            pm_id: w.pm_id,
            pid: w.pid,
            status: w.status.clone(),
            restarts: w.restarts,
            uptime_s: w
                .started_at_ms
                .map(|ms| (now - ms.div_euclid(1000)).max(0) as u64),
            cpu: w.cpu,
            memory: w.memory,
        }
    }
}

/// A row's pm2 workers. In the JSON: `Absent` leaves the `workers` key out (not a pm2
/// container, or not running), `Unknown` is `null` (the read failed: `workers_error` says
/// why), `Listed` is the array.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Workers {
    #[default]
    Absent,
    Unknown,
    Listed(Vec<WorkerRow>),
}

impl Workers {
    pub fn is_absent(&self) -> bool {
        *self == Workers::Absent
    }
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Listed(w) => w.serialize(s),
            Workers::Absent | Workers::Unknown => s.serialize_none(),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    /// Only called when the key is there (`#[serde(default)]` gives `Absent` otherwise).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Option::<Vec<WorkerRow>>::deserialize(d)?.map_or(Workers::Unknown, Workers::Listed))
    }
}

/// A host (or its agent) that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusFault {
    pub host: String,
    pub address: String,
    /// `host` (SSH or engine: its rows are `unknown`) or `consul` (health is `unknown`).
    pub scope: String,
    pub message: String,
}

/// `fleet status --json`. See `docs/status-json.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusDoc {
    pub format_version: u32,
    pub project: String,
    pub environment: String,
    /// Unix seconds when the hosts were read.
    pub observed_at: i64,
    pub instances: Vec<StatusRow>,
    pub faults: Vec<StatusFault>,
    /// Each public route and how many upstreams each edge sends it to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<crate::edge::RouteStatus>,
}

impl StatusDoc {
    pub fn new(d: &DesiredState, readings: &[HostReading], rows: Vec<StatusRow>, now: i64) -> Self {
        StatusDoc {
            format_version: JSON_FORMAT_VERSION,
            project: d.project.clone(),
            environment: d.environment.clone(),
            observed_at: now,
            instances: rows,
            faults: faults(readings),
            routes: Vec::new(),
        }
    }
}

/// Every host and agent that could not be read.
pub fn faults(readings: &[HostReading]) -> Vec<StatusFault> {
    let mut out = Vec::new();
    for r in readings {
        for (scope, m) in [("host", &r.fault), ("consul", &r.consul_fault)] {
            if let Some(m) = m {
                out.push(StatusFault {
                    host: r.host.clone(),
                    address: r.address.clone(),
                    scope: scope.into(),
                    message: m.clone(),
                });
            }
        }
    }
    out
}

/// The worst of a service's checks; a service without checks counts as passing (Consul does).
fn worst(checks: &[CheckStatus]) -> &'static str {
    let rank = |c: &CheckStatus| match c {
        CheckStatus::Passing => 0,
        CheckStatus::Warning => 1,
        CheckStatus::Maintenance => 2,
        CheckStatus::Critical => 3,
    };
    match checks.iter().max_by_key(|c| rank(c)) {
        None | Some(CheckStatus::Passing) => "passing",
        Some(CheckStatus::Warning) => "warning",
        Some(CheckStatus::Maintenance) => "maintenance",
        Some(CheckStatus::Critical) => "critical",
    }
}

/// Rows for every instance the manifest wants (found or missing) and every managed container it
/// no longer wants, on every host, restricted to `sel`. Ordered by app (manifest order, unwanted
/// apps after), instance, host (manifest order), version. `now` is unix seconds.
pub fn rows(
    d: &DesiredState,
    readings: &[HostReading],
    sel: &Selector,
    now: i64,
) -> Vec<StatusRow> {
    let mut out = Vec::new();
    for (hi, (dh, r)) in d.hosts.iter().zip(readings).enumerate() {
        let host = &dh.target.name;
        let health_of = |c: Option<&ObservedContainer>, wants_service: bool| -> String {
            if r.consul_fault.is_some() {
                return "unknown".into();
            }
            let Some(services) = &r.services else {
                return if wants_service { "unknown" } else { "none" }.into();
            };
            let matched: Vec<&ServiceReading> = match c {
                Some(c) => services
                    .iter()
                    .filter(|s| s.service.belongs_to(c))
                    .collect(),
                None => Vec::new(),
            };
            if matched.is_empty() {
                return if wants_service {
                    "unregistered"
                } else {
                    "none"
                }
                .into();
            }
            let all: Vec<CheckStatus> = matched
                .iter()
                .flat_map(|s| s.checks.iter().copied())
                .collect();
            worst(&all).into()
        };
        let row_of = |c: &ContainerReading, presence: Presence, desired_version: Option<String>| {
            let wants_service = d
                .hosts
                .get(hi)
                .and_then(|h| {
                    h.instances.iter().find(|i| {
                        Some(i.app.as_str()) == c.container.app.as_deref()
                            && Some(i.instance) == c.container.instance
                    })
                })
                .is_some_and(|i| i.service.is_some());
            let running = c.container.state == ContainerState::Running;
            let (workers, workers_error) = match c.workers.as_ref().filter(|_| running) {
                None => (Workers::Absent, None),
                Some(Ok(w)) => (
                    Workers::Listed(w.iter().map(|w| WorkerRow::of(w, now)).collect()),
                    None,
                ),
                Some(Err(e)) => (Workers::Unknown, Some(e.clone())),
            };
            StatusRow {
                app: c.container.app.clone().unwrap_or_else(|| "?".into()),
                instance: c.container.instance,
                host: host.clone(),
                presence,
                container_id: Some(short_id(&c.container.id).to_string()),
                container_name: Some(c.container.name.clone()),
                version: c.container.version.clone(),
                desired_version,
                state: c.container.state.as_str().into(),
                health: health_of(Some(&c.container), wants_service),
                restarts: c.restarts,
                uptime_secs: c
                    .started_at
                    .filter(|_| running)
                    .map(|s| (now - s).max(0) as u64),
                exit_code: c.exit_code.filter(|_| !running),
                cpu_percent: c.cpu_percent.filter(|_| running),
                memory_bytes: c.memory_bytes.filter(|_| running),
                memory_limit_bytes: c.memory_limit_bytes.filter(|_| running),
                workers,
                workers_error,
            }
        };
        if r.fault.is_some() {
            for i in &dh.instances {
                if sel.matches(Some(&i.app), Some(i.instance), host) {
                    out.push(StatusRow {
                        app: i.app.clone(),
                        instance: Some(i.instance),
                        host: host.clone(),
                        presence: Presence::Unknown,
                        container_id: None,
                        container_name: None,
                        version: None,
                        desired_version: Some(i.version.clone()),
                        state: "unknown".into(),
                        health: "unknown".into(),
                        restarts: None,
                        uptime_secs: None,
                        exit_code: None,
                        cpu_percent: None,
                        memory_bytes: None,
                        memory_limit_bytes: None,
                        workers: Workers::Absent,
                        workers_error: None,
                    });
                }
            }
            continue;
        }
        let mut used = vec![false; r.containers.len()];
        for i in &dh.instances {
            if !sel.matches(Some(&i.app), Some(i.instance), host) {
                continue;
            }
            let mut found = false;
            for (ci, c) in r.containers.iter().enumerate() {
                if c.container.app.as_deref() == Some(i.app.as_str())
                    && c.container.instance == Some(i.instance)
                {
                    used[ci] = true;
                    found = true;
                    out.push(row_of(c, Presence::Desired, Some(i.version.clone())));
                }
            }
            if !found {
                out.push(StatusRow {
                    app: i.app.clone(),
                    instance: Some(i.instance),
                    host: host.clone(),
                    presence: Presence::Missing,
                    container_id: None,
                    container_name: None,
                    version: None,
                    desired_version: Some(i.version.clone()),
                    state: "missing".into(),
                    health: health_of(None, i.service.is_some()),
                    restarts: None,
                    uptime_secs: None,
                    exit_code: None,
                    cpu_percent: None,
                    memory_bytes: None,
                    memory_limit_bytes: None,
                    workers: Workers::Absent,
                    workers_error: None,
                });
            }
        }
        for (ci, c) in r.containers.iter().enumerate() {
            if !used[ci] && sel.matches(c.container.app.as_deref(), c.container.instance, host) {
                out.push(row_of(c, Presence::Unwanted, None));
            }
        }
    }
    let app_order: HashMap<&str, usize> = d
        .apps
        .iter()
        .enumerate()
        .map(|(i, a)| (a.name.as_str(), i))
        .collect();
    let host_order: HashMap<&str, usize> = d
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.target.name.as_str(), i))
        .collect();
    out.sort_by(|a, b| {
        let key = |r: &StatusRow| {
            (
                app_order.get(r.app.as_str()).copied().unwrap_or(usize::MAX),
                r.app.clone(),
                r.instance,
                host_order
                    .get(r.host.as_str())
                    .copied()
                    .unwrap_or(usize::MAX),
                r.version.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    out
}

/// `45s`, `12m`, `3h`, `2d`: the largest whole unit, like pm2.
pub fn compact_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// `512B`, `3.4MiB`, `1.2GiB`.
pub fn compact_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b}B");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1}{}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operate::status::fixtures::{busy, busy_with_pm2};

    #[test]
    fn rows_cover_found_missing_unwanted_and_unknown() {
        let (d, r) = busy();
        let rows = rows(&d, &r, &Selector::default(), 1_100);
        let first = &rows
            .iter()
            .find(|x| x.presence == Presence::Desired && x.state == "running")
            .unwrap();
        assert_eq!(first.health, "passing");
        assert_eq!(first.uptime_secs, Some(100));
        assert!(rows.iter().any(|x| x.presence == Presence::Missing));
        let gone = rows.iter().find(|x| x.app == "gone").unwrap();
        assert_eq!(gone.presence, Presence::Unwanted);
        assert_eq!(gone.exit_code, Some(137));
        assert_eq!(gone.cpu_percent, None, "no CPU for a stopped container");
        assert!(rows.iter().any(|x| x.presence == Presence::Unknown));
        let restarting = rows.iter().find(|x| x.state == "restarting").unwrap();
        assert_eq!(restarting.restarts, Some(3));
        assert_eq!(restarting.health, "unregistered");
    }

    #[test]
    fn selector_limits_rows() {
        let (d, r) = busy();
        let sel = Selector {
            app: Some("gone".into()),
            ..Default::default()
        };
        let rows = rows(&d, &r, &sel, 1_100);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].app, "gone");
    }

    #[test]
    fn pm2_workers_under_their_container() {
        let (d, r) = busy_with_pm2();
        let rows = rows(&d, &r, &Selector::default(), 1_100);
        let web1 = &rows[0];
        let Workers::Listed(w) = &web1.workers else {
            panic!("{:?}", web1.workers)
        };
        assert_eq!(w.len(), 3);
        assert_eq!(
            (w[1].pid, w[1].restarts, w[1].uptime_s, w[1].memory),
            (Some(41), 2, Some(60), Some(60 << 20))
        );
        assert_eq!((w[2].pid, w[2].uptime_s, w[2].cpu), (None, None, None));
        let restarting = rows.iter().find(|x| x.state == "restarting").unwrap();
        assert_eq!(restarting.workers, Workers::Absent, "not running: not read");
        let legacy = rows.iter().find(|x| x.app == "legacy").unwrap();
        assert_eq!(legacy.workers, Workers::Unknown);
        assert!(
            legacy
                .workers_error
                .as_deref()
                .unwrap()
                .contains("code 127"),
            "{legacy:?}"
        );
    }

    #[test]
    fn compact_units() {
        assert_eq!(compact_duration(59), "59s");
        assert_eq!(compact_duration(3_700), "1h");
        assert_eq!(compact_bytes(512), "512B");
        assert_eq!(compact_bytes(3 * 1024 * 1024 + 512 * 1024), "3.5MiB");
    }
}
