//! The health gate: when is a freshly started container good enough to take traffic?
//!
//! - The app has a Consul service: the Consul check of the container's *own* registration
//!   (`service:<registration id>`) must pass. That is exactly what clients querying
//!   `?passing` will see, so the old instance is deregistered only once the new one is visible.
//! - No service, but a health check in the manifest: fleet probes the instance itself, from the
//!   host (an SSH-forwarded TCP port to the published port on the host's 127.0.0.1).
//! - Neither: the image's Docker `HEALTHCHECK` when it has one, else "still running after a
//!   short settle time".
//!
//! - And for a container that runs pm2 (`observe::pm2`: its main process is `pm2-runtime`, or
//!   the app says `pm2 = true`), at the same time as the above: every pm2 worker online, and
//!   none restarted in the last `min_healthy` (`wait_workers`, deciding with the pure
//!   `workers_verdict`). A worker that crash-loops is restarted by pm2 while the container
//!   stays up and the other workers answer the HTTP check; this is what catches it. A worker
//!   pm2 gave up on (`errored`) fails the gate at once.
//!
//! Every wait gives up at the app's health deadline, and fails early when the container exits.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::HealthStatusEnum;

use crate::consul::{CheckStatus, ConsulClient, ConsulError, QueryOptions};
use crate::desired::{HealthCheck, HealthSpec};
use crate::host::HostSession;
use crate::observe::pm2::{self, Worker};

/// How often the gate looks again.
const POLL: Duration = Duration::from_millis(200);
/// Without any health signal, a container that still runs after this long counts as healthy.
const SETTLE: Duration = Duration::from_secs(1);
/// The longest blocking query of the health gate, so a crashed container is noticed.
const BLOCK: Duration = Duration::from_secs(1);

/// Why a container did not become healthy.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Unhealthy {
    #[error("not healthy within {}: {last}", humantime::format_duration(*deadline))]
    Deadline { deadline: Duration, last: String },
    #[error("the container exited (code {code})")]
    Exited { code: i64 },
    /// A pm2 worker pm2 will not start again.
    #[error("{0}")]
    Workers(String),
    #[error("{0}")]
    Other(String),
}

pub use crate::identity::checks::{check_definition, check_id};

/// Fails early when the container is no longer running.
async fn still_running(docker: &Docker, id: &str) -> Result<(), Unhealthy> {
    let i = docker
        .inspect_container(id, None)
        .await
        .map_err(|e| Unhealthy::Other(format!("inspecting the container: {e}")))?;
    let st = i.state.unwrap_or_default();
    if st.running == Some(true) || st.restarting == Some(true) {
        Ok(())
    } else {
        Err(Unhealthy::Exited {
            code: st.exit_code.unwrap_or(-1),
        })
    }
}

/// Wait until the cluster's catalog lists registration `service_id` of service `name` as
/// passing (`/v1/health/service/<name>?passing`, what load balancers and consul-template read),
/// with blocking queries. The agent's own check can pass earlier: anti-entropy brings it to the
/// catalog later, and only the catalog counts. While waiting, the agent's check output is what
/// a timeout reports.
pub async fn wait_consul(
    consul: &ConsulClient,
    name: &str,
    service_id: &str,
    docker: &Docker,
    container: &str,
    deadline: Duration,
) -> Result<Duration, Unhealthy> {
    let t0 = Instant::now();
    // Why it is not passing yet: a Consul error, else (read once, at the deadline) the agent's
    // own check.
    let mut last = String::new();
    let mut index = 0u64;
    loop {
        let left = deadline.saturating_sub(t0.elapsed());
        let wait = left.clamp(Duration::from_millis(100), BLOCK);
        match consul
            .health_service(name, true, QueryOptions::blocking(index, wait))
            .await
        {
            Ok(r) if r.value.iter().any(|e| e.service.id == service_id) => {
                return Ok(t0.elapsed());
            }
            Ok(r) => {
                // An index that goes back (a server restart) starts over, as Consul advises.
                index = if r.index < index { 0 } else { r.index };
                last.clear();
            }
            // Waiting does not give the token the rights it lacks.
            Err(e @ (ConsulError::AclDenied { .. } | ConsulError::Filtered { .. })) => {
                return Err(Unhealthy::Other(e.to_string()));
            }
            // An agent that does not answer (stopped, or its host lost) is reported now, not
            // at the deadline: the caller asks the host what is gone.
            Err(e @ ConsulError::Unreachable { .. }) => {
                return Err(Unhealthy::Other(crate::errors::chain(&e)));
            }
            Err(e) => {
                last = e.to_string();
                tokio::time::sleep(POLL).await;
            }
        }
        still_running(docker, container).await?;
        if t0.elapsed() >= deadline {
            if last.is_empty() {
                last = agent_check_note(consul, service_id).await;
            }
            return Err(Unhealthy::Deadline { deadline, last });
        }
    }
}

/// What the agent's own check of `service_id` says, for a health gate that timed out.
async fn agent_check_note(consul: &ConsulClient, service_id: &str) -> String {
    match consul.agent_checks().await {
        Ok(checks) => match checks.values().find(|c| c.service_id == service_id) {
            Some(c) if c.status == CheckStatus::Passing => {
                "the agent's check passes; the catalog does not list it as passing yet".to_string()
            }
            Some(c) if !c.output.is_empty() => {
                let one: Vec<&str> = c.output.split_whitespace().collect();
                one.join(" ").chars().take(160).collect()
            }
            Some(_) => "the check has not run yet".to_string(),
            None => format!("no check of {service_id} on the agent"),
        },
        Err(e) => e.to_string(),
    }
}

async fn probe(session: &HostSession, check: &HealthCheck, port: u16, timeout: Duration) -> String {
    let addr = match session.forward_tcp("127.0.0.1", port).await {
        Ok(a) => a,
        Err(e) => return e.to_string(),
    };
    match check {
        HealthCheck::Tcp => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                // Through an SSH forward the local connect succeeds even when the remote end
                // refuses; a refused remote connection closes at once, so read a moment.
                Ok(Ok(_)) => String::new(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".into(),
            }
        }
        HealthCheck::Http(path) => {
            let url = format!("http://{addr}{path}");
            match crate::http::plain().get(&url, timeout).await {
                Ok(r) if r.status.is_success() => String::new(),
                Ok(r) => format!("HTTP {}", r.status),
                Err(e) => e.to_string(),
            }
        }
    }
}

/// Wait for fleet's own probe (no Consul service), the image's HEALTHCHECK, or a settle time.
pub async fn wait_local(
    session: &HostSession,
    docker: &Docker,
    container: &str,
    health: Option<&HealthSpec>,
    port: Option<u16>,
    deadline: Duration,
) -> Result<Duration, Unhealthy> {
    let t0 = Instant::now();
    let mut last = String::from("no answer yet");
    loop {
        still_running(docker, container).await?;
        match (health, port) {
            (Some(h), Some(p)) => {
                let r = probe(session, &h.check, p, h.timeout).await;
                if r.is_empty() {
                    return Ok(t0.elapsed());
                }
                last = r;
            }
            _ => {
                let i = docker
                    .inspect_container(container, None)
                    .await
                    .map_err(|e| Unhealthy::Other(e.to_string()))?;
                match i.state.and_then(|s| s.health).and_then(|h| h.status) {
                    Some(HealthStatusEnum::HEALTHY) => return Ok(t0.elapsed()),
                    Some(HealthStatusEnum::UNHEALTHY) => last = "Docker says unhealthy".into(),
                    Some(HealthStatusEnum::STARTING) => last = "Docker says starting".into(),
                    _ if t0.elapsed() >= SETTLE => return Ok(t0.elapsed()),
                    _ => {}
                }
            }
        }
        if t0.elapsed() >= deadline {
            return Err(Unhealthy::Deadline { deadline, last });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What a container's pm2 workers say about it, from `workers_verdict`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkersVerdict {
    /// Every worker online, and none restarted in the last `min_healthy`.
    Healthy,
    /// Not yet, and why (a gate that times out reports the last one).
    Waiting(String),
    /// Not yet: a worker restarted since the earlier reading (which one, how often).
    Restarted(String),
    /// pm2 gave up on a worker: waiting cannot help.
    Failed(String),
}

/// `1.2s`, `3s`: a duration in messages, to a tenth of a second.
fn tenths(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64 / 100 * 100)).to_string()
}

/// The pm2 gate's decision, from the workers `now` and an `earlier` reading taken `ago`
/// (the newest reading at least `min_healthy` old, else the oldest one there is): healthy when
/// every worker is online now and was then, none restarted in between (pm2's restart count,
/// or another pid), the same workers, and `ago` covers `min_healthy`.
pub fn workers_verdict(
    earlier: Option<(Duration, &[Worker])>,
    now: &[Worker],
    min_healthy: Duration,
) -> WorkersVerdict {
    use WorkersVerdict::*;
    if now.is_empty() {
        return Waiting("pm2 lists no workers yet".into());
    }
    if let Some(w) = now.iter().find(|w| w.is_given_up()) {
        let after = match w.restarts {
            0 => String::new(),
            1 => " after 1 restart".into(),
            n => format!(" after {n} restarts"),
        };
        return Failed(format!("{} {}{after}", w.label(), w.status));
    }
    let offline = now.iter().find(|w| !w.is_online());
    let is_offline = |w: &Worker| Waiting(format!("{} is {}", w.label(), w.status));
    let Some((ago, before)) = earlier else {
        if let Some(w) = offline {
            return is_offline(w);
        }
        return if min_healthy.is_zero() {
            Healthy
        } else {
            Waiting("watching the pm2 workers for restarts".into())
        };
    };
    let window = tenths(ago);
    // Restarts first: the likeliest reason, and what a crash loop looks like at any moment.
    for w in now {
        let Some(b) = before.iter().find(|b| b.pm_id == w.pm_id) else {
            continue;
        };
        let restarts = match w.restarts.saturating_sub(b.restarts) {
            0 if b.pid.is_some() && w.pid.is_some() && b.pid != w.pid => 1,
            n => n,
        };
        if restarts > 0 {
            let times = if restarts == 1 { "time" } else { "times" };
            let state = if w.is_online() {
                String::new()
            } else {
                format!(", now {}", w.status)
            };
            return Restarted(format!(
                "{} restarted {restarts} {times} in the last {window}{state}",
                w.label()
            ));
        }
    }
    if let Some(w) = offline {
        return is_offline(w);
    }
    for w in now {
        match before.iter().find(|b| b.pm_id == w.pm_id) {
            None => return Waiting(format!("{} started in the last {window}", w.label())),
            Some(b) if !b.is_online() => {
                return Waiting(format!("{} was {} {window} ago", b.label(), b.status));
            }
            Some(_) => {}
        }
    }
    if let Some(b) = before
        .iter()
        .find(|b| !now.iter().any(|w| w.pm_id == b.pm_id))
    {
        return Waiting(format!("{} is gone", b.label()));
    }
    if ago < min_healthy {
        return Waiting(format!(
            "the pm2 workers have been online for {window} of min_healthy {}",
            humantime::format_duration(min_healthy)
        ));
    }
    Healthy
}

/// The pm2 gate of running container `container`: reads its workers (`cmd`, from
/// `pm2::jlist_command`) until `workers_verdict` says healthy (`Ok`, after how long), a worker
/// is given up (`Unhealthy::Workers`), or `deadline` passes (with the last reason).
pub async fn wait_workers(
    docker: &Docker,
    container: &str,
    cmd: &[String],
    min_healthy: Duration,
    deadline: Duration,
) -> Result<Duration, Unhealthy> {
    let t0 = Instant::now();
    let mut last: String;
    // Readings, oldest first; the front one is the newest at least `min_healthy` old.
    let mut seen: VecDeque<(Instant, Vec<Worker>)> = VecDeque::new();
    // Each worker as first seen: at the deadline, its restarts since then say more than the
    // last reason.
    let mut first_seen: Vec<(Instant, Worker)> = Vec::new();
    loop {
        let read = pm2::read_workers(docker, container, cmd).await;
        let at = Instant::now();
        let late = at - t0 >= deadline;
        match read {
            Ok(now) => {
                while seen.len() >= 2 && at - seen[1].0 >= min_healthy {
                    seen.pop_front();
                }
                let earlier = seen.front().map(|(t, w)| (at - *t, w.as_slice()));
                match workers_verdict(earlier, &now, min_healthy) {
                    WorkersVerdict::Healthy => return Ok(t0.elapsed()),
                    WorkersVerdict::Failed(m) => return Err(Unhealthy::Workers(m)),
                    WorkersVerdict::Waiting(m) | WorkersVerdict::Restarted(m) => last = m,
                }
                for w in &now {
                    if !first_seen.iter().any(|(_, f)| f.pm_id == w.pm_id) {
                        first_seen.push((at, w.clone()));
                    }
                }
                if late && let Some(since) = first_seen.iter().map(|(t, _)| *t).min() {
                    let then: Vec<Worker> = first_seen.iter().map(|(_, w)| w.clone()).collect();
                    if let WorkersVerdict::Restarted(m) =
                        workers_verdict(Some((at - since, &then)), &now, min_healthy)
                    {
                        last = m;
                    }
                }
                seen.push_back((at, now));
            }
            Err(e) => last = e.to_string(),
        }
        if late {
            return Err(Unhealthy::Deadline { deadline, last });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(pm_id: u32, status: &str, restarts: u64, pid: Option<u32>) -> Worker {
        Worker {
            name: "app".into(),
            pm_id,
            pid,
            status: status.into(),
            restarts,
            started_at_ms: None,
            cpu: None,
            memory: None,
        }
    }

    const MIN: Duration = Duration::from_secs(3);

    #[test]
    fn workers_pass_once_all_stayed_online_for_min_healthy() {
        use WorkersVerdict::*;
        let up = [w(0, "online", 0, Some(16)), w(1, "online", 0, Some(25))];
        let ago = |s: f64| Some((Duration::from_secs_f64(s), &up[..]));
        assert_eq!(workers_verdict(ago(3.2), &up, MIN), Healthy);
        assert_eq!(
            workers_verdict(ago(1.5), &up, MIN),
            Waiting("the pm2 workers have been online for 1s 500ms of min_healthy 3s".into())
        );
        assert!(matches!(workers_verdict(None, &up, MIN), Waiting(_)));
        assert_eq!(workers_verdict(None, &up, Duration::ZERO), Healthy);
        assert_eq!(
            workers_verdict(ago(5.0), &[], MIN),
            Waiting("pm2 lists no workers yet".into())
        );
    }

    #[test]
    fn a_restart_in_the_window_holds_the_gate_and_a_given_up_worker_fails_it() {
        use WorkersVerdict::*;
        let before = [w(0, "online", 0, Some(16)), w(1, "online", 0, Some(25))];
        let earlier = Some((Duration::from_millis(3_400), &before[..]));
        // pm2's count went up by 3.
        let now = [w(0, "online", 0, Some(16)), w(1, "online", 3, Some(54))];
        assert_eq!(
            workers_verdict(earlier, &now, MIN),
            Restarted("pm2 worker 1 (app) restarted 3 times in the last 3s 400ms".into())
        );
        // Another pid with the same count (a restart the count does not show) is one.
        let now = [w(0, "online", 0, Some(17)), w(1, "online", 0, Some(25))];
        assert_eq!(
            workers_verdict(earlier, &now, MIN),
            Restarted("pm2 worker 0 (app) restarted 1 time in the last 3s 400ms".into())
        );
        // Between restarts.
        let now = [w(0, "online", 0, Some(16)), w(1, "launching", 4, None)];
        assert_eq!(
            workers_verdict(earlier, &now, MIN),
            Restarted(
                "pm2 worker 1 (app) restarted 4 times in the last 3s 400ms, now launching".into()
            )
        );
        let now = [w(0, "online", 0, Some(16)), w(1, "launching", 0, None)];
        assert_eq!(
            workers_verdict(earlier, &now, MIN),
            Waiting("pm2 worker 1 (app) is launching".into())
        );
        // pm2 gave up: no reason to wait for the deadline.
        let now = [w(0, "online", 0, Some(16)), w(1, "errored", 15, None)];
        assert_eq!(
            workers_verdict(earlier, &now, MIN),
            Failed("pm2 worker 1 (app) errored after 15 restarts".into())
        );
        // `stopped` is also what pm2 says between an exit and the restart: wait.
        assert_eq!(
            workers_verdict(earlier, &[w(0, "stopped", 0, None)], MIN),
            Waiting("pm2 worker 0 (app) is stopped".into())
        );
        // Online now, but not yet then: not online for min_healthy.
        let starting = [w(0, "online", 0, Some(16)), w(1, "launching", 0, None)];
        let now = [w(0, "online", 0, Some(16)), w(1, "online", 0, Some(25))];
        assert_eq!(
            workers_verdict(Some((MIN, &starting[..])), &now, MIN),
            Waiting("pm2 worker 1 (app) was launching 3s ago".into())
        );
        // Workers that come or go.
        assert_eq!(
            workers_verdict(earlier, &before[..1], MIN),
            Waiting("pm2 worker 1 (app) is gone".into())
        );
        let more = [
            before[0].clone(),
            before[1].clone(),
            w(2, "online", 0, Some(60)),
        ];
        assert_eq!(
            workers_verdict(earlier, &more, MIN),
            Waiting("pm2 worker 2 (app) started in the last 3s 400ms".into())
        );
    }
}
