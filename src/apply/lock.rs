//! The deploy lock: one deploy at a time per project and environment.
//!
//! With Consul, the lock is the KV key `<project>/<env>/_fleet/lock`, acquired (`?acquire=`)
//! by a session with a TTL that a background task renews every TTL/2. The session's behavior
//! is `delete`: when it ends (released, destroyed, or expired because its holder died) the key
//! goes with it, so a lock whose holder was SIGKILLed frees itself within the TTL (Consul may
//! take up to twice the TTL; the stand-in takes exactly the TTL) with no manual cleanup.
//!
//! Without Consul, the lock is a file on the environment's first host,
//! `/var/lib/fleet/<project>.<env>.lock` (`.` occurs in neither name), created atomically (`set -o noclobber`) under a
//! `flock` of `/var/lib/fleet/.guard` (so checking for a stale lock and replacing it is one
//! step), holding `{"expires":<unix secs, host clock>,"token":..,"holder":{..}}`. The holder
//! renews the expiry every TTL/2; a lock past its expiry is stale and the next deploy takes it.
//!
//! The lock's value is the [`Holder`] as JSON: who, on which machine, which pid, the CI job,
//! since when, and the plan summary, so a refused deploy can say who is deploying.
//!
//! A lock whose holder ran on this machine (same hostname) and whose pid no longer runs is
//! taken over at once (its session destroyed, or its file removed), and the new lock says so
//! ([`DeployLock::took_over`]); a holder on another machine can only be waited out (its TTL).
//! Keys under `<project>/<env>/_fleet/` are reserved: the plan never proposes deleting them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::consul::{
    ConsulClient, ConsulError, KvDelete, QueryOptions, SessionBehavior, SessionRequest, go_duration,
};
use crate::desired::DesiredState;
use crate::host::{ConnectOptions, HostError, HostSession};

/// Session TTL of a Consul lock. Consul accepts 10s to 24h.
pub const CONSUL_TTL: Duration = Duration::from_secs(15);
/// After a session ends, nobody may take its keys for this long (Consul's default is 15s).
pub const LOCK_DELAY: Duration = Duration::from_secs(1);
/// Expiry of a host lock file: longer than Consul's, as each renewal is an SSH round trip.
pub const FILE_TTL: Duration = Duration::from_secs(30);

/// How often a holder of a host lock file looks that it still holds it (renewing at TTL / 2).
const FILE_CHECK: Duration = Duration::from_secs(2);

/// Where host lock files and ledgers live.
pub const HOST_DIR: &str = "/var/lib/fleet";

/// The KV key of an environment's lock.
pub fn lock_key(project: &str, env: &str) -> String {
    format!("{project}/{env}/_fleet/lock")
}

/// The lock file of an environment on its first host (when there is no Consul).
pub fn lock_file(project: &str, env: &str) -> String {
    format!("{HOST_DIR}/{project}.{env}.lock")
}

/// Who holds (or wants) the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub user: String,
    /// The machine fleet runs on (hostname).
    pub machine: String,
    pub pid: u32,
    /// The CI job's URL, when fleet runs in CI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_job: Option<String>,
    /// When the deploy started, RFC 3339 (UTC).
    pub started: String,
    /// The plan summary (`2 to replace, 1 to create`).
    #[serde(default)]
    pub summary: String,
}

impl Holder {
    /// This process: `$USER`, the hostname, the pid, the CI job URL, now; no summary yet.
    pub fn current() -> Holder {
        Holder::from_env(&|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    fn from_env(var: &dyn Fn(&str) -> Option<String>) -> Holder {
        let user = ["USER", "LOGNAME", "USERNAME"]
            .iter()
            .find_map(|k| var(k))
            .unwrap_or_else(|| "unknown".into());
        Holder {
            user,
            machine: machine_name(),
            pid: std::process::id(),
            ci_job: ci_job_url(var),
            started: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            summary: String::new(),
        }
    }

    /// `started` as a time (now, if it cannot be read).
    pub fn since(&self) -> SystemTime {
        humantime::parse_rfc3339_weak(&self.started).unwrap_or_else(|_| SystemTime::now())
    }

    /// A holder we could not read (the raw value goes into the summary).
    fn unreadable(raw: &str) -> Holder {
        Holder {
            user: "(unreadable lock value)".into(),
            machine: "?".into(),
            pid: 0,
            ci_job: None,
            started: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            summary: raw.chars().take(200).collect(),
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {} (pid {}", self.user, self.machine, self.pid)?;
        if let Some(ci) = &self.ci_job {
            write!(f, ", CI job {ci}")?;
        }
        f.write_str(")")
    }
}

/// The CI job's URL: GitLab's `CI_JOB_URL`, GitHub Actions' run URL, Jenkins' `BUILD_URL`.
fn ci_job_url(var: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    if let Some(u) = var("CI_JOB_URL") {
        return Some(u);
    }
    if let (Some(server), Some(repo), Some(run)) = (
        var("GITHUB_SERVER_URL"),
        var("GITHUB_REPOSITORY"),
        var("GITHUB_RUN_ID"),
    ) {
        return Some(format!(
            "{}/{repo}/actions/runs/{run}",
            server.trim_end_matches('/')
        ));
    }
    var("BUILD_URL")
}

fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| {
            std::process::Command::new("hostname")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        })
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Whether `holder` is a process of this machine (same hostname) that no longer runs: its lock
/// can be taken over at once instead of waiting for it to expire.
pub fn died_here(holder: &Holder) -> bool {
    holder.machine == machine_name() && !pid_runs(holder.pid)
}

/// Whether process `pid` runs here (a zombie does not; a pid we may not signal does).
fn pid_runs(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if p <= 0 {
        // Not a process (0 and negative pids name process groups): unknown, so alive.
        return true;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    if unsafe { libc::kill(p, 0) } != 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    }
    // A killed process that nobody has waited for yet is a zombie: it no longer runs.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => true,
    }
}

/// "3m 12s" since `t`, whole seconds.
pub fn ago(t: SystemTime) -> String {
    let d = SystemTime::now().duration_since(t).unwrap_or_default();
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another deploy holds the lock.
    #[error(
        "another deploy holds the lock: {holder}, since {} ({} ago){}",
        holder.started,
        ago(*since),
        if holder.summary.is_empty() { String::new() } else { format!("; plan: {}", holder.summary) }
    )]
    Held { holder: Holder, since: SystemTime },
    #[error(transparent)]
    Consul(#[from] ConsulError),
    #[error(transparent)]
    Host(#[from] HostError),
    /// A lock script on a host failed.
    #[error("{host}: the lock file script failed ({code}): {stderr}")]
    Script {
        host: String,
        code: String,
        stderr: String,
    },
    #[error("the environment `{0}` has no hosts to keep its lock on")]
    NoHosts(String),
    #[error("cannot read the Consul ACL token: {0}")]
    Secret(#[from] crate::manifest::secret::SecretError),
}

enum Backend {
    Consul {
        client: ConsulClient,
        key: String,
        session: String,
    },
    Host {
        host: Arc<HostSession>,
        path: String,
        token: String,
    },
}

/// A held deploy lock. Renewed in the background until [`release`](Self::release)d or dropped
/// (drop releases on a best-effort basis; if the process dies, the TTL frees the lock).
pub struct DeployLock {
    backend: Option<Backend>,
    holder: Holder,
    /// The dead holder this lock was taken over from, if it was.
    took_over: Option<Holder>,
    renewer: Option<tokio::task::JoinHandle<()>>,
    lost: Arc<AtomicBool>,
}

impl DeployLock {
    /// Takes the Consul lock of `project`/`env` for `holder` (its summary set to `summary`).
    /// Fails at once with [`LockError::Held`] when another session holds it.
    pub async fn acquire(
        consul: &ConsulClient,
        project: &str,
        env: &str,
        holder: Holder,
        summary: &str,
    ) -> Result<DeployLock, LockError> {
        Self::acquire_consul(consul, project, env, holder, summary, CONSUL_TTL).await
    }

    /// `acquire` with a chosen session TTL (at least 10s: Consul's minimum).
    pub async fn acquire_consul(
        consul: &ConsulClient,
        project: &str,
        env: &str,
        mut holder: Holder,
        summary: &str,
        ttl: Duration,
    ) -> Result<DeployLock, LockError> {
        holder.summary = summary.to_string();
        let key = lock_key(project, env);
        let value = serde_json::to_vec(&holder).expect("serialisable");
        let session = consul
            .session_create(&SessionRequest {
                name: Some(format!("fleet deploy lock {project}/{env}")),
                ttl: Some(go_duration(ttl)),
                behavior: Some(SessionBehavior::Delete),
                lock_delay: Some(go_duration(LOCK_DELAY)),
                ..SessionRequest::default()
            })
            .await?;
        // A lock just freed by an expired session cannot be taken during its lock-delay: retry
        // for that long when nobody holds it; refuse at once when somebody does.
        let mut deadline =
            tokio::time::Instant::now() + LOCK_DELAY * 2 + Duration::from_millis(500);
        let mut took_over = None;
        loop {
            let taken = match consul.kv_acquire(&key, &value, &session).await {
                Ok(t) => t,
                Err(e) => {
                    let _ = consul.session_destroy(&session).await;
                    return Err(e.into());
                }
            };
            if taken {
                break;
            }
            let current = match status(consul, project, env).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = consul.session_destroy(&session).await;
                    return Err(e);
                }
            };
            if let Some((dead, theirs)) = current.as_ref().filter(|(h, _)| died_here(h))
                && took_over.is_none()
            {
                // Only the dead holder's own session: a lock someone else took meanwhile stays.
                if let Err(e) = consul.session_destroy(theirs).await {
                    let _ = consul.session_destroy(&session).await;
                    return Err(e.into());
                }
                took_over = Some(dead.clone());
                deadline =
                    tokio::time::Instant::now() + LOCK_DELAY * 2 + Duration::from_millis(500);
                continue;
            }
            if let Some((holder, _)) = current {
                let _ = consul.session_destroy(&session).await;
                let since = holder.since();
                return Err(LockError::Held { holder, since });
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = consul.session_destroy(&session).await;
                return Err(LockError::Consul(ConsulError::Unexpected {
                    request: format!("PUT /v1/kv/{key}?acquire"),
                    status: 200,
                    body: "the lock is free but Consul keeps refusing it (lock-delay?)".into(),
                }));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(hold_session(
            consul.clone(),
            key.clone(),
            session.clone(),
            ttl,
            lost.clone(),
        ));
        Ok(DeployLock {
            backend: Some(Backend::Consul {
                client: consul.clone(),
                key,
                session,
            }),
            holder,
            took_over,
            renewer: Some(renewer),
            lost,
        })
    }

    /// Takes the lock file of `project`/`env` on `host` (the environment's first host).
    pub async fn acquire_on_host(
        host: Arc<HostSession>,
        project: &str,
        env: &str,
        mut holder: Holder,
        summary: &str,
        ttl: Duration,
    ) -> Result<DeployLock, LockError> {
        holder.summary = summary.to_string();
        let path = lock_file(project, env);
        let token = random_token();
        let holder_json = serde_json::to_string(&holder).expect("serialisable");
        let script = format!(
            "{guard}\nnow=$(date +%s)\nif [ -e \"$f\" ]; then\n  exp=$(sed -n 's/^{{\"expires\":\\([0-9]*\\),.*/\\1/p' \"$f\")\n  if [ -n \"$exp\" ] && [ \"$exp\" -gt \"$now\" ]; then echo HELD; cat \"$f\"; exit 0; fi\n  rm -f \"$f\"\nfi\nh={h}\n( set -o noclobber; printf '{{\"expires\":%s,\"token\":\"%s\",\"holder\":%s}}\\n' \"$((now + {ttl}))\" {token} \"$h\" > \"$f\" )\necho OK",
            guard = guard_prelude(&path),
            h = sh_quote(&holder_json),
            ttl = ttl.as_secs().max(1),
        );
        let mut took_over = None;
        loop {
            let out = run(&host, &script).await?;
            match out.lines().next() {
                Some("OK") => break,
                Some("HELD") => {
                    let raw = out.lines().nth(1).unwrap_or("");
                    match parse_file(raw) {
                        Some(f) if died_here(&f.holder) && took_over.is_none() => {
                            // Only that holder's file: one someone else wrote meanwhile stays.
                            let remove = format!(
                                "{}\nif grep -q '\"token\":\"{}\"' \"$f\" 2>/dev/null; then rm -f \"$f\"; fi\necho OK",
                                guard_prelude(&path),
                                f.token.replace(|c: char| !c.is_ascii_alphanumeric(), "")
                            );
                            run(&host, &remove).await?;
                            took_over = Some(f.holder);
                        }
                        f => {
                            let holder = f
                                .map(|f| f.holder)
                                .unwrap_or_else(|| Holder::unreadable(raw));
                            let since = holder.since();
                            return Err(LockError::Held { holder, since });
                        }
                    }
                }
                _ => {
                    return Err(LockError::Script {
                        host: host.target().name.clone(),
                        code: "unexpected output".into(),
                        stderr: out,
                    });
                }
            }
        }
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew_file(
            host.clone(),
            path.clone(),
            token.clone(),
            ttl,
            lost.clone(),
        ));
        Ok(DeployLock {
            backend: Some(Backend::Host { host, path, token }),
            holder,
            took_over,
            renewer: Some(renewer),
            lost,
        })
    }

    /// Who holds this lock (us).
    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// The holder this lock was taken from because its process no longer runs on this
    /// machine (see the module docs); `None` when the lock was free.
    pub fn took_over(&self) -> Option<&Holder> {
        self.took_over.as_ref()
    }

    /// True once a renewal found the lock gone (session expired or destroyed, file replaced):
    /// another deploy may now take it, so this one should stop.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The flag behind [`is_lost`](Self::is_lost), for code that checks it without holding
    /// the lock (the deploy engine, between instances).
    pub fn lost_flag(&self) -> Arc<AtomicBool> {
        self.lost.clone()
    }

    /// Replaces the plan summary others see in the lock: a deploy takes the lock before it
    /// plans, so the summary is known only afterwards.
    pub async fn set_summary(&mut self, summary: &str) -> Result<(), LockError> {
        self.holder.summary = summary.to_string();
        let holder_json = serde_json::to_string(&self.holder).expect("serialisable");
        let still_ours = match &self.backend {
            None => false,
            Some(Backend::Consul {
                client,
                key,
                session,
            }) => {
                // Acquiring again with the same session only rewrites the value.
                client
                    .kv_acquire(key, holder_json.as_bytes(), session)
                    .await?
            }
            Some(Backend::Host { host, path, token }) => {
                let script = format!(
                    "{guard}\nif grep -q '\"token\":\"{token}\"' \"$f\" 2>/dev/null; then\n  exp=$(sed -n 's/^{{\"expires\":\\([0-9]*\\),.*/\\1/p' \"$f\")\n  printf '{{\"expires\":%s,\"token\":\"%s\",\"holder\":%s}}\\n' \"$exp\" {token} {h} > \"$f.tmp\" && mv \"$f.tmp\" \"$f\" && echo OK\nelse echo LOST; fi",
                    guard = guard_prelude(path),
                    h = sh_quote(&holder_json),
                );
                run(host, &script).await?.starts_with("OK")
            }
        };
        if !still_ours {
            self.lost.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The Consul session holding the lock (`None` for a host lock file).
    pub fn session(&self) -> Option<&str> {
        match &self.backend {
            Some(Backend::Consul { session, .. }) => Some(session),
            _ => None,
        }
    }

    /// Stops renewing and frees the lock.
    pub async fn release(mut self) -> Result<(), LockError> {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        match self.backend.take() {
            Some(backend) => release_backend(backend).await,
            None => Ok(()),
        }
    }
}

impl Drop for DeployLock {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        if let Some(backend) = self.backend.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = release_backend(backend).await;
            });
        }
    }
}

async fn release_backend(backend: Backend) -> Result<(), LockError> {
    match backend {
        Backend::Consul {
            client,
            key,
            session,
        } => {
            // A released lock leaves no key behind: delete it while this session still holds
            // it (check-and-set, so a key someone else took meanwhile stays), then end the
            // session. Behavior `delete` only covers a session that is invalidated holding it.
            if let Ok(Some(pair)) = client.kv_get(&key).await
                && pair.session.as_deref() == Some(session.as_str())
            {
                let cas = KvDelete {
                    cas: Some(pair.modify_index),
                    ..Default::default()
                };
                let _ = client.kv_delete(&key, &cas).await;
            }
            let _ = client.kv_release(&key, b"", &session).await;
            client.session_destroy(&session).await?;
            Ok(())
        }
        Backend::Host { host, path, token } => {
            let script = format!(
                "{}\nif grep -q '\"token\":\"{token}\"' \"$f\" 2>/dev/null; then rm -f \"$f\"; fi\necho OK",
                guard_prelude(&path)
            );
            run(&host, &script).await.map(|_| ())
        }
    }
}

/// Keeps the lock until it is lost, then sets `lost`: renews the session every TTL/2, and
/// watches the key with a blocking query, so a forced release or a deleted key is noticed
/// within milliseconds instead of at the next renewal.
async fn hold_session(
    client: ConsulClient,
    key: String,
    session: String,
    ttl: Duration,
    lost: Arc<AtomicBool>,
) {
    tokio::select! {
        () = renew_session(client.clone(), session.clone(), ttl) => {}
        () = watch_key(client, key, session) => {}
    }
    lost.store(true, Ordering::SeqCst);
}

/// Returns as soon as the lock key no longer names `session`.
async fn watch_key(client: ConsulClient, key: String, session: String) {
    let mut index = 0;
    loop {
        let q = QueryOptions::blocking(index, Duration::from_secs(60));
        match client.kv_get_with(&key, q).await {
            Ok(answer) => {
                let holder = answer.value.as_ref().and_then(|p| p.session.as_deref());
                if holder != Some(session.as_str()) {
                    return;
                }
                // Consul's rule for blocking queries: an index that went backwards resets.
                index = if answer.index < index {
                    0
                } else {
                    answer.index
                };
            }
            // The renewer decides about an agent that does not answer.
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Returns when the session cannot be renewed any more (gone, or unreachable for a TTL).
async fn renew_session(client: ConsulClient, session: String, ttl: Duration) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(ttl / 2).await;
        match client.session_renew(&session).await {
            Ok(Some(_)) => last_ok = tokio::time::Instant::now(),
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("cannot renew the deploy lock's session: {e}");
                if last_ok.elapsed() >= ttl {
                    break;
                }
            }
        }
    }
}

async fn renew_file(
    host: Arc<HostSession>,
    path: String,
    token: String,
    ttl: Duration,
    lost: Arc<AtomicBool>,
) {
    let mine = format!("grep -q '\"token\":\"{token}\"' \"$f\" 2>/dev/null");
    let renew = format!(
        "{}\nnow=$(date +%s)\nif {mine}; then\n  sed \"s/^{{\\\"expires\\\":[0-9]*,/{{\\\"expires\\\":$((now + {})),/\" \"$f\" > \"$f.tmp\" && mv \"$f.tmp\" \"$f\" && echo OK\nelse echo LOST; fi",
        guard_prelude(&path),
        ttl.as_secs().max(1)
    );
    // Between renewals, a cheaper look that the file is still ours: a lock released by hand
    // (`fleet lock release`) or taken over is noticed within FILE_CHECK, not at the renewal.
    let check = format!(
        "{}\nif {mine}; then echo OK; else echo LOST; fi",
        guard_prelude(&path)
    );
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(FILE_CHECK.min(ttl / 2)).await;
        let due = last_ok.elapsed() >= ttl / 2;
        match run(&host, if due { &renew } else { &check }).await {
            Ok(out) if out.starts_with("OK") => {
                if due {
                    last_ok = tokio::time::Instant::now();
                }
            }
            Ok(_) => break,
            Err(e) => {
                tracing::warn!("cannot renew the deploy lock file: {e}");
                if last_ok.elapsed() >= ttl {
                    break;
                }
            }
        }
    }
    lost.store(true, Ordering::SeqCst);
}

/// Who holds the Consul lock of `project`/`env`, and with which session; `None` when free.
pub async fn status(
    consul: &ConsulClient,
    project: &str,
    env: &str,
) -> Result<Option<(Holder, String)>, LockError> {
    let Some(pair) = consul.kv_get(&lock_key(project, env)).await? else {
        return Ok(None);
    };
    let Some(session) = pair.session.clone() else {
        return Ok(None);
    };
    let raw = pair.value_str();
    let holder = serde_json::from_str(&raw).unwrap_or_else(|_| Holder::unreadable(&raw));
    Ok(Some((holder, session)))
}

/// Frees the Consul lock whoever holds it (destroys the holder's session; a deploy still
/// running notices at once, through its watch of the key). Returns who held it.
pub async fn force_release(
    consul: &ConsulClient,
    project: &str,
    env: &str,
) -> Result<Option<Holder>, LockError> {
    let current = status(consul, project, env).await?;
    if let Some((_, session)) = &current {
        consul.session_destroy(session).await?;
    }
    // Gone with the session (behavior delete); a key left by a session of another behavior too.
    consul
        .kv_delete(&lock_key(project, env), &Default::default())
        .await?;
    Ok(current.map(|(h, _)| h))
}

/// The content of a host lock file.
#[derive(Debug, Clone, Deserialize)]
struct LockFile {
    expires: u64,
    #[serde(default)]
    token: String,
    holder: Holder,
}

fn parse_file(raw: &str) -> Option<LockFile> {
    serde_json::from_str(raw.trim()).ok()
}

/// Who holds the lock file of `project`/`env` on `host`, and until when (unix seconds, host
/// clock); `None` when there is none or it is stale.
pub async fn status_on_host(
    host: &HostSession,
    project: &str,
    env: &str,
) -> Result<Option<(Holder, u64)>, LockError> {
    let path = lock_file(project, env);
    let out = run(
        host,
        &format!("date +%s; cat {} 2>/dev/null; true", sh_quote(&path)),
    )
    .await?;
    let mut lines = out.lines();
    let now: u64 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    let Some(raw) = lines.next().filter(|l| !l.trim().is_empty()) else {
        return Ok(None);
    };
    match parse_file(raw) {
        Some(f) if f.expires > now => Ok(Some((f.holder, f.expires))),
        Some(_) => Ok(None),
        None => Ok(Some((Holder::unreadable(raw), u64::MAX))),
    }
}

/// Removes the lock file of `project`/`env` on `host` whoever holds it; returns who held it.
pub async fn force_release_on_host(
    host: &HostSession,
    project: &str,
    env: &str,
) -> Result<Option<Holder>, LockError> {
    let held = status_on_host(host, project, env).await?;
    let path = lock_file(project, env);
    run(
        host,
        &format!("{}\nrm -f \"$f\"\necho OK", guard_prelude(&path)),
    )
    .await?;
    Ok(held.map(|(h, _)| h))
}

/// The shell prelude of every lock file script: `$f` is the file, and the guard is held.
fn guard_prelude(path: &str) -> String {
    format!(
        "set -e\nf={}\nmkdir -p {HOST_DIR}\nexec 9>>{HOST_DIR}/.guard\nflock -x -w 20 9",
        sh_quote(path)
    )
}

/// Runs a script on a host; an error unless it exits 0. Returns stdout.
pub(crate) async fn run(host: &HostSession, script: &str) -> Result<String, LockError> {
    let out = host.run_sh(script).await?;
    if out.code != Some(0) {
        return Err(LockError::Script {
            host: host.target().name.clone(),
            code: out
                .code
                .map(|c| format!("exit code {c}"))
                .unwrap_or_else(|| "killed".into()),
            stderr: out.stderr.trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Single-quotes `s` for sh.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// 128 random-enough bits, hex: pid, time and a std hasher's random keys.
fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for i in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u32(std::process::id());
        h.write_u128(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// Where an environment keeps its lock and ledger: its Consul (reached through its first host)
/// or, without Consul, files on its first host. Keeps the SSH connection (and Consul forward)
/// open until [`close`](Self::close).
pub struct Store {
    pub project: String,
    pub env: String,
    pub host: Arc<HostSession>,
    pub consul: Option<ConsulClient>,
}

impl Store {
    /// Connects to the environment's first host (and its Consul agent, when configured).
    pub async fn open(desired: &DesiredState, opts: &ConnectOptions) -> Result<Store, LockError> {
        let first = desired
            .hosts
            .first()
            .ok_or_else(|| LockError::NoHosts(desired.environment.clone()))?;
        let host = HostSession::connect(&first.target, opts).await?;
        let consul = match &desired.consul {
            None => None,
            Some(c) => {
                let token = match &c.token {
                    Some(r) => match crate::manifest::secret::read(r) {
                        Ok(t) => Some(t),
                        Err(e) => {
                            host.close().await;
                            return Err(e.into());
                        }
                    },
                    None => None,
                };
                let url = match host.consul_url(&c.address).await {
                    Ok(u) => u,
                    Err(e) => {
                        host.close().await;
                        return Err(e.into());
                    }
                };
                Some(
                    ConsulClient::new(&url, token, c.datacenter.clone())?.with_target(format!(
                        "{} (Consul agent {})",
                        first.target.name, c.address
                    )),
                )
            }
        };
        Ok(Store {
            project: desired.project.clone(),
            env: desired.environment.clone(),
            host: Arc::new(host),
            consul,
        })
    }

    /// Takes the lock (Consul, else the host file) with the default TTL.
    pub async fn acquire(&self, holder: Holder, summary: &str) -> Result<DeployLock, LockError> {
        match &self.consul {
            Some(c) => DeployLock::acquire(c, &self.project, &self.env, holder, summary).await,
            None => {
                DeployLock::acquire_on_host(
                    self.host.clone(),
                    &self.project,
                    &self.env,
                    holder,
                    summary,
                    FILE_TTL,
                )
                .await
            }
        }
    }

    /// Who holds the lock, if anyone.
    pub async fn lock_status(&self) -> Result<Option<Holder>, LockError> {
        Ok(match &self.consul {
            Some(c) => status(c, &self.project, &self.env).await?.map(|(h, _)| h),
            None => status_on_host(&self.host, &self.project, &self.env)
                .await?
                .map(|(h, _)| h),
        })
    }

    /// Frees the lock whoever holds it; returns who held it.
    pub async fn force_release(&self) -> Result<Option<Holder>, LockError> {
        match &self.consul {
            Some(c) => force_release(c, &self.project, &self.env).await,
            None => force_release_on_host(&self.host, &self.project, &self.env).await,
        }
    }

    /// A description of where the lock lives, for messages.
    pub fn lock_place(&self) -> String {
        match &self.consul {
            Some(c) => format!(
                "Consul key {} ({})",
                lock_key(&self.project, &self.env),
                c.target()
            ),
            None => format!(
                "{}:{}",
                self.host.target().name,
                lock_file(&self.project, &self.env)
            ),
        }
    }

    /// Closes the connection (when no lock still renews through it).
    pub async fn close(self) {
        if let Ok(host) = Arc::try_unwrap(self.host) {
            host.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_job_urls_come_from_gitlab_github_or_jenkins() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            ci_job_url(&env(&[("CI_JOB_URL", "https://gitlab/x/-/jobs/1")])),
            Some("https://gitlab/x/-/jobs/1".into())
        );
        assert_eq!(
            ci_job_url(&env(&[
                ("GITHUB_SERVER_URL", "https://github.com/"),
                ("GITHUB_REPOSITORY", "acme/shop"),
                ("GITHUB_RUN_ID", "42"),
            ])),
            Some("https://github.com/acme/shop/actions/runs/42".into())
        );
        assert_eq!(
            ci_job_url(&env(&[("BUILD_URL", "https://jenkins/job/7/")])),
            Some("https://jenkins/job/7/".into())
        );
        assert_eq!(ci_job_url(&env(&[("GITHUB_RUN_ID", "42")])), None);
        let h = Holder::from_env(&env(&[("USER", "alice"), ("BUILD_URL", "https://j/1")]));
        assert_eq!(h.user, "alice");
        assert_eq!(h.pid, std::process::id());
        assert!(
            humantime::parse_rfc3339(&h.started).is_ok(),
            "{}",
            h.started
        );
    }

    #[test]
    fn a_holder_died_here_only_when_its_pid_is_gone_from_this_machine() {
        assert!(pid_runs(std::process::id()));
        let mut ended = std::process::Command::new("true").spawn().unwrap();
        ended.wait().unwrap();
        assert!(!pid_runs(ended.id()));
        // Killed but not waited for: a zombie, which no longer runs.
        let mut zombie = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        zombie.kill().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(!pid_runs(zombie.id()));
        zombie.wait().unwrap();
        assert!(
            pid_runs(0) && pid_runs(u32::MAX),
            "not a pid: unknown, so alive"
        );
        let gone = Holder {
            pid: ended.id(),
            ..Holder::current()
        };
        assert!(died_here(&gone));
        let far = Holder {
            machine: "elsewhere.invalid".into(),
            ..gone
        };
        assert!(!died_here(&far));
        assert!(!died_here(&Holder::current()));
    }

    #[test]
    fn held_names_who_and_since_when() {
        let holder = Holder {
            user: "alice".into(),
            machine: "laptop".into(),
            pid: 4242,
            ci_job: Some("https://ci/job/9".into()),
            started: "2025-01-02T03:04:05Z".into(),
            summary: "1 to replace".into(),
        };
        let since = holder.since();
        let msg = LockError::Held { holder, since }.to_string();
        assert!(
            msg.starts_with(
                "another deploy holds the lock: alice on laptop (pid 4242, CI job https://ci/job/9), since 2025-01-02T03:04:05Z ("
            ),
            "{msg}"
        );
        assert!(msg.ends_with(" ago); plan: 1 to replace"), "{msg}");
    }

    #[test]
    fn lock_files_parse_and_quotes_survive_the_shell() {
        let raw = r#"{"expires":1700000000,"token":"ab","holder":{"user":"bob","machine":"m","pid":1,"started":"2025-01-01T00:00:00Z","summary":"it's"}}"#;
        let f = parse_file(raw).unwrap();
        assert_eq!(f.expires, 1_700_000_000);
        assert_eq!(f.holder.summary, "it's");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", sh_quote("it's a \"test\" $HOME")))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "it's a \"test\" $HOME"
        );
        assert_ne!(random_token(), random_token());
        assert_eq!(random_token().len(), 32);
    }
}
