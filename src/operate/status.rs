//! `fleet status`: one row per instance, like `pm2 list`.
//!
//! `gather` reads every host at once: one container list (label filter) per host, then per
//! container an inspect (restart count, start time, exit code) and a one-sample stats read, then,
//! for a running pm2 container (`observe::pm2`), its workers (`pm2 jlist`, after the stats so
//! that its own CPU is not counted), and the agent's services and checks. `rows` turns what was read plus the desired state into
//! `StatusRow`s (pure), `table` renders them (pure, snapshot-tested), `StatusDoc` is the JSON
//! (`docs/status-json.md`).
//!
//! Stats are read with `stream=false` and `one-shot=false`: a one-shot answer has an empty
//! `precpu_stats`, and CPU % is the ratio of the container's CPU time delta to the system's
//! between two samples, which the engine takes about a second apart. All containers are read
//! concurrently, so a status costs that second once, not per container.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use bollard::query_parameters::{InspectContainerOptions, StatsOptions};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{Connected, Selector, managed_services, short_id};
use crate::consul::CheckStatus;
use crate::desired::DesiredState;
use crate::host::HostSession;
use crate::observe::ObservedService;
use crate::observe::pm2::{self, Worker};
use crate::observe::read::list_containers;
use crate::observe::{ContainerState, ObservedContainer};

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

/// The table `fleet status` prints: one line per row, then one line per fault. Plain text
/// (no colour, no terminal width): the same rows always render the same.
pub fn table(rows: &[StatusRow], faults: &[StatusFault]) -> String {
    use comfy_table::{CellAlignment, ContentArrangement, Table, presets};
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(vec![
            "app",
            "#",
            "host",
            "container",
            "version",
            "status",
            "health",
            "↺",
            "uptime",
            "cpu",
            "mem",
        ]);
    let dash = || "-".to_string();
    for r in rows {
        let version = match (&r.version, &r.desired_version) {
            (Some(v), Some(w)) if v != w => format!("{v} (wants {w})"),
            (Some(v), _) => v.clone(),
            (None, Some(w)) => format!("({w})"),
            (None, None) => dash(),
        };
        let mut status = r.state.clone();
        if let Some(code) = r.exit_code {
            let _ = write!(status, " ({code})");
        }
        if r.presence == Presence::Unwanted {
            status.push_str(", not in manifest");
        }
        let mem = match (r.memory_bytes, r.memory_limit_bytes) {
            (Some(m), _) => compact_bytes(m),
            _ => dash(),
        };
        t.add_row(vec![
            r.app.clone(),
            r.instance.map_or_else(|| "?".into(), |n| n.to_string()),
            r.host.clone(),
            r.container_id.clone().unwrap_or_else(dash),
            version,
            status,
            r.health.clone(),
            r.restarts.map_or_else(dash, |n| n.to_string()),
            r.uptime_secs.map_or_else(dash, compact_duration),
            r.cpu_percent.map_or_else(dash, |c| format!("{c:.1}%")),
            mem,
        ]);
        // pm2's workers under their container, as `pm2 list` shows them: id and name, pid,
        // status, restarts, uptime, CPU, memory.
        let workers: &[WorkerRow] = match &r.workers {
            Workers::Listed(w) => w,
            _ => &[],
        };
        for (i, w) in workers.iter().enumerate() {
            let branch = if i + 1 == workers.len() { '└' } else { '├' };
            t.add_row(vec![
                format!("{branch} {} {}", w.pm_id, w.name),
                String::new(),
                String::new(),
                w.pid.map_or_else(dash, |p| format!("pid {p}")),
                String::new(),
                w.status.clone(),
                String::new(),
                w.restarts.to_string(),
                w.uptime_s.map_or_else(dash, compact_duration),
                w.cpu.map_or_else(dash, |c| format!("{c:.1}%")),
                w.memory.map_or_else(dash, compact_bytes),
            ]);
        }
        if r.workers == Workers::Unknown {
            let mut cells = vec![String::new(); 11];
            cells[0] = "└ pm2".into();
            cells[5] = "unknown (see below)".into();
            t.add_row(cells);
        }
    }
    for i in [1, 7, 8, 9, 10] {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut s = t.trim_fmt();
    s.push('\n');
    if rows.is_empty() {
        s.push_str("no instances\n");
    }
    for r in rows {
        if let Some(e) = &r.workers_error {
            let _ = writeln!(
                s,
                "{}: pm2 workers unknown: {e}",
                super::instance_label(&r.app, r.instance, &r.host)
            );
        }
    }
    for f in faults {
        let what = if f.scope == "consul" {
            "Consul agent unreadable"
        } else {
            "host unreadable"
        };
        let _ = writeln!(s, "{} ({}): {what}: {}", f.host, f.address, f.message);
    }
    s
}

/// CPU % between the two samples of a stats answer, as `docker stats` computes it:
/// container CPU delta / system CPU delta x online CPUs x 100.
pub fn cpu_percent(s: &bollard::models::ContainerStatsResponse) -> Option<f64> {
    let cur = s.cpu_stats.as_ref()?;
    let pre = s.precpu_stats.as_ref()?;
    let used =
        cur.cpu_usage.as_ref()?.total_usage? as f64 - pre.cpu_usage.as_ref()?.total_usage? as f64;
    let system = cur.system_cpu_usage? as f64 - pre.system_cpu_usage? as f64;
    if system <= 0.0 || used < 0.0 {
        return Some(0.0);
    }
    let cpus = cur
        .online_cpus
        .filter(|n| *n > 0)
        .map(f64::from)
        .or_else(|| {
            cur.cpu_usage
                .as_ref()?
                .percpu_usage
                .as_ref()
                .map(|v| v.len() as f64)
        })
        .unwrap_or(1.0);
    Some(used / system * cpus * 100.0)
}

/// Memory in use as `docker stats` shows it: usage minus the page cache that can be dropped
/// (`inactive_file` on cgroup v2, `total_inactive_file` on v1). Returns (used, limit).
pub fn memory(s: &bollard::models::ContainerStatsResponse) -> (Option<u64>, Option<u64>) {
    let Some(m) = s.memory_stats.as_ref() else {
        return (None, None);
    };
    let cache = m
        .stats
        .as_ref()
        .and_then(|st| {
            st.get("inactive_file")
                .or_else(|| st.get("total_inactive_file"))
        })
        .copied()
        .unwrap_or(0);
    (m.usage.map(|u| u.saturating_sub(cache)), m.limit)
}

/// Unix seconds of a Docker RFC 3339 time (`2026-01-02T03:04:05.123456789Z`); `None` for Go's
/// zero time (`0001-01-01T00:00:00Z`), which Docker uses for "never".
pub fn unix_seconds(t: &str) -> Option<i64> {
    if t.starts_with("0001-") {
        return None;
    }
    let ts = humantime::parse_rfc3339_weak(t.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(t))
        .ok()?;
    ts.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64)
}

/// Inspect and stats of one container, concurrently; then, for a running pm2 container (the
/// app's `pm2` setting, else its main process), its workers.
async fn read_container(
    docker: &bollard::Docker,
    c: ObservedContainer,
    pm2: Option<bool>,
) -> ContainerReading {
    let running = c.state == ContainerState::Running;
    let inspect = docker.inspect_container(&c.id, None::<InspectContainerOptions>);
    let stats = async {
        if !running {
            return None;
        }
        docker
            .stats(
                &c.id,
                Some(StatsOptions {
                    stream: false,
                    one_shot: false,
                }),
            )
            .next()
            .await
            .and_then(Result::ok)
    };
    let (inspect, stats) = tokio::join!(inspect, stats);
    let inspect = inspect.ok();
    // After the stats: `pm2 jlist` is a Node process in the container, which the CPU samples
    // would count.
    let workers = match inspect
        .as_ref()
        .filter(|_| running)
        .and_then(|i| pm2::jlist_command(i, pm2))
    {
        Some(cmd) => Some(
            pm2::read_workers(docker, &c.id, &cmd)
                .await
                .map_err(|e| e.to_string()),
        ),
        None => None,
    };
    let state = inspect.as_ref().and_then(|i| i.state.as_ref());
    let (memory_bytes, memory_limit_bytes) = stats.as_ref().map_or((None, None), memory);
    ContainerReading {
        restarts: inspect.as_ref().and_then(|i| i.restart_count),
        started_at: state
            .and_then(|s| s.started_at.as_deref())
            .and_then(unix_seconds),
        exit_code: state.and_then(|s| s.exit_code),
        cpu_percent: stats.as_ref().and_then(cpu_percent),
        memory_bytes,
        memory_limit_bytes,
        workers,
        container: c,
    }
}

/// Read one host: containers (with inspect + stats) and the agent's services and checks.
pub async fn read_host(cx: &Connected, s: &HostSession, sel: &Selector) -> HostReading {
    let t = s.target();
    let d = &cx.desired;
    let containers = async {
        let list = list_containers(s, &d.project, &d.environment)
            .await
            .map_err(|f| format!("{}: {}", f.kind, f.message))?;
        let docker = s.docker().await.map_err(|e| e.to_string())?;
        let wanted: Vec<ObservedContainer> = list
            .into_iter()
            .filter(|c| sel.matches(c.app.as_deref(), c.instance, &t.name))
            .collect();
        Ok::<_, String>(
            futures_util::future::join_all(wanted.into_iter().map(|c| {
                let pm2 = d
                    .apps
                    .iter()
                    .find(|a| Some(a.name.as_str()) == c.app.as_deref())
                    .and_then(|a| a.pm2);
                read_container(&docker, c, pm2)
            }))
            .await,
        )
    };
    let consul = async {
        let client = match cx.consul(s).await? {
            Ok(c) => c,
            Err(e) => return Some(Err(e.to_string())),
        };
        let (services, checks) = tokio::join!(
            managed_services(&client, &d.project, &d.environment),
            client.agent_checks()
        );
        Some(match (services, checks) {
            (Ok(services), Ok(checks)) => Ok(services
                .into_iter()
                .map(|service| ServiceReading {
                    checks: checks
                        .values()
                        .filter(|c| c.service_id == service.id)
                        .map(|c| c.status)
                        .collect(),
                    service,
                })
                .collect()),
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
        })
    };
    let (containers, consul) = tokio::join!(containers, consul);
    let mut r = HostReading {
        host: t.name.clone(),
        address: t.address.clone(),
        ..Default::default()
    };
    match containers {
        Ok(c) => r.containers = c,
        Err(m) => r.fault = Some(m),
    }
    match consul {
        None => {}
        Some(Ok(s)) => r.services = Some(s),
        Some(Err(m)) => r.consul_fault = Some(m),
    }
    r
}

/// Read every host at once; one reading per host of the desired state, in the same order.
pub async fn gather(cx: &Connected, sel: &Selector) -> Vec<HostReading> {
    futures_util::future::join_all(cx.hosts().map(|(t, s)| async move {
        match s {
            Ok(s) if sel.host.as_deref().is_none_or(|h| h == t.name) => read_host(cx, s, sel).await,
            Ok(_) => HostReading {
                host: t.name.clone(),
                address: t.address.clone(),
                ..Default::default()
            },
            Err(e) => HostReading {
                host: t.name.clone(),
                address: t.address.clone(),
                fault: Some(e.to_string()),
                ..Default::default()
            },
        }
    }))
    .await
}

/// Labels of an inspected container as a sorted map.
pub fn labels_of(i: &bollard::models::ContainerInspectResponse) -> BTreeMap<String, String> {
    i.config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .map(|l| l.into_iter().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures;

    fn reading(
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

    fn worker(pm_id: u32, status: &str, restarts: u64) -> Worker {
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
    fn busy_with_pm2() -> (DesiredState, Vec<HostReading>) {
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

    fn service(d: &DesiredState, host: usize, app: &str, n: u32, s: CheckStatus) -> ServiceReading {
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
    fn busy() -> (DesiredState, Vec<HostReading>) {
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
            readings[0].containers.push(reading(
                &d,
                0,
                a1,
                *n1,
                "old1",
                ContainerState::Restarting,
            ));
        }
        readings[0]
            .containers
            .push(reading(&d, 0, "gone", 1, "v0", ContainerState::Exited));
        if readings.len() > 1 {
            readings[1].fault =
                Some("unreachable: connect to host port 22: Connection refused".into());
            readings[1].services = None;
        }
        (d, readings)
    }

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
        insta::assert_snapshot!(table(&rows, &faults(&r)));
    }

    /// `workers` is left out for a container without pm2, `null` with `workers_error` when the
    /// read failed, the list otherwise; each parses back.
    #[test]
    fn workers_in_the_json_are_absent_null_or_a_list() {
        let (d, r) = busy_with_pm2();
        let rows = rows(&d, &r, &Selector::default(), 1_100);
        let doc = StatusDoc::new(&d, &r, rows, 1_100);
        let v = serde_json::to_value(&doc).unwrap();
        let row = |app: &str, state: &str| {
            v["instances"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["app"] == app && x["state"] == state)
                .unwrap()
                .as_object()
                .unwrap()
                .clone()
        };
        let web1 = row("web", "running");
        assert_eq!(web1["workers"].as_array().unwrap().len(), 3);
        assert!(!web1.contains_key("workers_error"));
        insta::assert_json_snapshot!(web1["workers"][1]);
        let plain = row("web", "restarting");
        assert!(!plain.contains_key("workers") && !plain.contains_key("workers_error"));
        let legacy = row("legacy", "running");
        assert!(legacy["workers"].is_null(), "{legacy:?}");
        assert!(legacy["workers_error"].is_string());
        let back: StatusDoc = serde_json::from_value(v).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn table_snapshot() {
        let (d, r) = busy();
        let rows = rows(&d, &r, &Selector::default(), 1_100);
        insta::assert_snapshot!(table(&rows, &faults(&r)));
    }

    #[test]
    fn json_round_trips_into_the_documented_types() {
        let (d, r) = busy();
        let rows = rows(&d, &r, &Selector::default(), 1_100);
        let doc = StatusDoc::new(&d, &r, rows, 1_100);
        let text = serde_json::to_string_pretty(&doc).unwrap();
        let back: StatusDoc = serde_json::from_str(&text).unwrap();
        assert_eq!(back, doc);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for k in [
            "format_version",
            "project",
            "environment",
            "observed_at",
            "instances",
            "faults",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        insta::assert_json_snapshot!(v["instances"][0]);
    }

    /// The example in docs/status-json.md is a valid document, and every field of a row the
    /// code writes is in the documented table.
    #[test]
    fn the_documented_example_parses_and_every_field_is_documented() {
        let doc = include_str!("../../docs/status-json.md");
        let start = doc.find("```json\n").expect("an example") + 8;
        let end = start + doc[start..].find("```").unwrap();
        let parsed: StatusDoc = serde_json::from_str(&doc[start..end]).expect("example parses");
        assert_eq!(parsed.format_version, JSON_FORMAT_VERSION);
        let (d, r) = busy_with_pm2();
        let rows = rows(&d, &r, &Selector::default(), 1_100);
        let v = serde_json::to_value(StatusDoc::new(&d, &r, rows, 1)).unwrap();
        let mut fields: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        for row in v["instances"].as_array().unwrap() {
            fields.extend(row.as_object().unwrap().keys().cloned());
        }
        fields.extend(
            v["instances"][0]["workers"][0]
                .as_object()
                .unwrap()
                .keys()
                .cloned(),
        );
        fields.extend(v["faults"][0].as_object().unwrap().keys().cloned());
        for f in fields {
            assert!(doc.contains(&format!("| `{f}`")), "{f} is not documented");
        }
    }

    #[test]
    fn cpu_and_memory_as_docker_stats_computes_them() {
        let s: bollard::models::ContainerStatsResponse = serde_json::from_value(serde_json::json!({
            "cpu_stats": {"cpu_usage": {"total_usage": 300_000_000u64}, "system_cpu_usage": 20_000_000_000u64, "online_cpus": 2},
            "precpu_stats": {"cpu_usage": {"total_usage": 100_000_000u64}, "system_cpu_usage": 18_000_000_000u64, "online_cpus": 2},
            "memory_stats": {"usage": 10_000_000u64, "limit": 100_000_000u64, "stats": {"inactive_file": 1_000_000u64}}
        }))
        .unwrap();
        let cpu = cpu_percent(&s).unwrap();
        assert!((cpu - 20.0).abs() < 1e-9, "{cpu}");
        assert_eq!(memory(&s), (Some(9_000_000), Some(100_000_000)));
    }

    #[test]
    fn docker_times_and_compact_units() {
        assert_eq!(unix_seconds("1970-01-01T00:01:40.123456789Z"), Some(100));
        assert_eq!(unix_seconds("0001-01-01T00:00:00Z"), None);
        assert_eq!(compact_duration(59), "59s");
        assert_eq!(compact_duration(3_700), "1h");
        assert_eq!(compact_bytes(512), "512B");
        assert_eq!(compact_bytes(3 * 1024 * 1024 + 512 * 1024), "3.5MiB");
    }
}
