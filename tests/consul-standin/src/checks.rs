//! Checks that really run: HTTP and TCP probes on their interval, TTL expiry, session expiry,
//! and the DeregisterCriticalServiceAfter reaper.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Shared;
use crate::state::{CRITICAL, CheckDef, PASSING, WARNING};

/// Consul keeps the last 4 KiB of an HTTP check's body in its Output (`agent/checks/check.go`).
const OUTPUT_MAX: usize = 4096;
/// Consul's default check timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts (or restarts) the probe loop of an HTTP or TCP check. TTL checks need none.
pub fn spawn_runner(shared: &Arc<Shared>, check_id: &str) {
    let (def, generation) = {
        let state = shared.state.lock().unwrap();
        match state.checks.get(check_id) {
            Some(c) => (c.def.clone(), c.generation),
            None => return,
        }
    };
    let mut runners = shared.runners.lock().unwrap();
    if let Some(old) = runners.remove(check_id) {
        old.abort();
    }
    let Some(interval) = def.interval else { return };
    if def.http.is_none() && def.tcp.is_none() {
        return;
    }
    let task_shared = shared.clone();
    let id = check_id.to_string();
    let task = tokio::spawn(async move {
        // Consul staggers the first run randomly within the interval.
        let stagger = interval.mul_f64(crate::http::random_fraction());
        tokio::time::sleep(stagger).await;
        loop {
            let (status, output) = probe(&task_shared, &def).await;
            let alive = {
                let mut state = task_shared.state.lock().unwrap();
                let before = state.index;
                let alive = state.set_check(&id, Some(generation), status, output);
                (alive, state.index != before)
            };
            if !alive.0 {
                return;
            }
            if alive.1 {
                task_shared.committed();
            }
            tokio::time::sleep(interval).await;
        }
    });
    runners.insert(check_id.to_string(), task);
}

pub fn stop_runner(shared: &Shared, check_id: &str) {
    if let Some(old) = shared.runners.lock().unwrap().remove(check_id) {
        old.abort();
    }
}

async fn probe(shared: &Shared, def: &CheckDef) -> (&'static str, String) {
    let timeout = def.timeout.unwrap_or(DEFAULT_TIMEOUT);
    if let Some(url) = &def.http {
        let method =
            reqwest::Method::from_bytes(def.method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut request = shared
            .http
            .request(method.clone(), url)
            .timeout(timeout)
            .header("Accept", "text/plain, text/*, */*");
        for (name, values) in &def.header {
            for value in values {
                request = request.header(name, value);
            }
        }
        if !def.body.is_empty() {
            request = request.body(def.body.clone());
        }
        return match request.send().await {
            Ok(response) => {
                let code = response.status();
                let reason = code.canonical_reason().unwrap_or("");
                let body = response.bytes().await.unwrap_or_default();
                // Consul copies the body into a circular buffer: the last 4 KiB stay.
                let body = String::from_utf8_lossy(&body[body.len().saturating_sub(OUTPUT_MAX)..])
                    .into_owned();
                let output = format!(
                    "HTTP {method} {url}: {} {reason} Output: {body}",
                    code.as_u16()
                );
                let status = if code.is_success() {
                    PASSING
                } else if code.as_u16() == 429 {
                    WARNING
                } else {
                    CRITICAL
                };
                (status, output)
            }
            Err(e) => (CRITICAL, http_error_output(method.as_str(), url, &e)),
        };
    }
    if let Some(addr) = &def.tcp {
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr.as_str()))
            .await
        {
            Ok(Ok(_)) => (PASSING, format!("TCP connect {addr}: Success")),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => (
                CRITICAL,
                format!("dial tcp {addr}: connect: connection refused"),
            ),
            Ok(Err(e)) => (CRITICAL, format!("dial tcp {addr}: {e}")),
            Err(_) => (CRITICAL, format!("dial tcp {addr}: i/o timeout")),
        };
    }
    (CRITICAL, String::new())
}

/// Words the failure as Go's HTTP client does in Consul's Output, e.g.
/// `Get "http://127.0.0.1:8080/health": dial tcp 127.0.0.1:8080: connect: connection refused`.
fn http_error_output(method: &str, url: &str, e: &reqwest::Error) -> String {
    let verb = capitalised(method);
    let mut io_kind = None;
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        cause = inner.to_string();
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        source = inner.source();
    }
    if e.is_timeout() {
        return format!(
            "{verb} \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        );
    }
    let addr = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
        .unwrap_or_default();
    match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => {
            format!("{verb} \"{url}\": dial tcp {addr}: connect: connection refused")
        }
        Some(std::io::ErrorKind::ConnectionReset) => {
            format!("{verb} \"{url}\": read tcp {addr}: read: connection reset by peer")
        }
        _ => format!("{verb} \"{url}\": {cause}"),
    }
}

fn capitalised(method: &str) -> String {
    let lower = method.to_lowercase();
    let mut chars = lower.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Housekeeping every 50 ms: TTL checks and sessions that ran out; the reaper on its interval.
pub async fn ticker(shared: Arc<Shared>) {
    let mut last_reap = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Instant::now();
        let mut wrote = false;
        let mut reaped = Vec::new();
        {
            let mut state = shared.state.lock().unwrap();
            let expired: Vec<String> = state
                .checks
                .values()
                .filter(|c| c.ttl_deadline.is_some_and(|d| d <= now) && c.status != CRITICAL)
                .map(|c| c.def.id.clone())
                .collect();
            for id in expired {
                wrote |= state.set_check(&id, None, CRITICAL, "TTL expired".into());
            }
            let sessions: Vec<String> = state
                .sessions
                .values()
                .filter(|s| s.expires.is_some_and(|e| e <= now))
                .map(|s| s.id.clone())
                .collect();
            for id in sessions {
                wrote |= state.invalidate_session(&id);
            }
            state.lock_delays.retain(|_, until| *until > now);
            if now.duration_since(last_reap) >= shared.config.reap_interval {
                last_reap = now;
                let doomed: Vec<String> = state
                    .checks
                    .values()
                    .filter(|c| {
                        c.status == CRITICAL
                            && matches!((c.def.deregister_critical_after, c.critical_since),
                                (Some(after), Some(since)) if now.duration_since(since) > after)
                    })
                    .map(|c| c.def.service_id.clone())
                    .collect();
                for service in doomed {
                    let checks: Vec<String> = state
                        .checks
                        .values()
                        .filter(|c| c.def.service_id == service)
                        .map(|c| c.def.id.clone())
                        .collect();
                    if state.deregister_service(&service) {
                        eprintln!(
                            "consul-standin: reaped service {service:?}: critical longer than DeregisterCriticalServiceAfter"
                        );
                        wrote = true;
                        reaped.extend(checks);
                    }
                }
            }
        }
        for id in reaped {
            stop_runner(&shared, &id);
        }
        if wrote {
            shared.committed();
        }
    }
}
