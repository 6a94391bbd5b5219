//! `fleet status`: one row per instance, like `pm2 list`.
//!
//! `gather` reads every host at once: one container list (label filter) per host, then per
//! container an inspect (restart count, start time, exit code) and a one-sample stats read, then,
//! for a running pm2 container (`observe::pm2`), its workers (`pm2 jlist`, after the stats so
//! that its own CPU is not counted), and the agent's services and checks. This file is that
//! reading (the edge to Docker, Consul and pm2); `rows` (the pure part, `status/rows.rs`) turns
//! what was read plus the desired state into `StatusRow`s, and `cli::status::render` renders
//! them as the table or the JSON document (`StatusDoc`, `docs/status-json.md`).
//!
//! Stats are read with `stream=false` and `one-shot=false`: a one-shot answer has an empty
//! `precpu_stats`, and CPU % is the ratio of the container's CPU time delta to the system's
//! between two samples, which the engine takes about a second apart. All containers are read
//! concurrently, so a status costs that second once, not per container.

use std::collections::BTreeMap;

use bollard::query_parameters::{InspectContainerOptions, StatsOptions};
use futures_util::StreamExt;

use super::{Selector, managed_services};
use crate::host::HostSession;
use crate::observe::Connected;
use crate::observe::pm2;
use crate::observe::read::list_containers;
use crate::observe::{ContainerState, ObservedContainer};

pub mod rows;

pub use rows::{
    ContainerReading, HostReading, JSON_FORMAT_VERSION, Presence, ServiceReading, StatusDoc,
    StatusFault, StatusRow, WorkerRow, Workers, compact_bytes, compact_duration, faults, rows,
};

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
pub(crate) mod fixtures;

#[cfg(test)]
mod tests {
    use super::*;

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
    fn docker_times() {
        assert_eq!(unix_seconds("1970-01-01T00:01:40.123456789Z"), Some(100));
        assert_eq!(unix_seconds("0001-01-01T00:00:00Z"), None);
    }
}
