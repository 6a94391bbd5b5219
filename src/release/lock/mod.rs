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
//!
//! The two places behind one interface: `consul.rs` (a session holding a KV key) and
//! `host_file.rs` (a lock file on the first host); `Backend` dispatches to the held one, and
//! [`Store`] picks Consul when the environment has it, else the host file.

mod consul;
mod host_file;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use self::consul::{CONSUL_TTL, LOCK_DELAY, force_release, lock_key, status};
pub use self::host_file::{FILE_TTL, force_release_on_host, lock_file, status_on_host};
use crate::consul::{ConsulClient, ConsulError};
use crate::desired::DesiredState;
use crate::host::{AgentError, ConnectOptions, HostError, HostSession, ScriptError};

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

/// The held lock, in whichever place it lives.
enum Backend {
    Consul(Box<consul::Held>),
    Host(host_file::Held),
}

impl Backend {
    /// Rewrites the holder in the lock; false when the lock is no longer ours.
    async fn set_holder(&self, holder_json: &str) -> Result<bool, LockError> {
        match self {
            Backend::Consul(b) => b.set_holder(holder_json).await,
            Backend::Host(b) => b.set_holder(holder_json).await,
        }
    }

    /// Frees the lock (only if it is still ours).
    async fn release(self) -> Result<(), LockError> {
        match self {
            Backend::Consul(b) => b.release().await,
            Backend::Host(b) => b.release().await,
        }
    }
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
    /// A lock just taken by `backend` for `holder`; `keep` (given the flag to set when the lock
    /// is lost) keeps it in the background until then.
    fn taken<F>(
        backend: Backend,
        holder: Holder,
        took_over: Option<Holder>,
        keep: impl FnOnce(Arc<AtomicBool>) -> F,
    ) -> DeployLock
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let lost = Arc::new(AtomicBool::new(false));
        DeployLock {
            backend: Some(backend),
            holder,
            took_over,
            renewer: Some(tokio::spawn(keep(lost.clone()))),
            lost,
        }
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
            Some(b) => b.set_holder(&holder_json).await?,
        };
        if !still_ours {
            self.lost.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The Consul session holding the lock (`None` for a host lock file).
    pub fn session(&self) -> Option<&str> {
        match &self.backend {
            Some(Backend::Consul(b)) => Some(&b.session),
            _ => None,
        }
    }

    /// Stops renewing and frees the lock.
    pub async fn release(mut self) -> Result<(), LockError> {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        match self.backend.take() {
            Some(backend) => backend.release().await,
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
                let _ = backend.release().await;
            });
        }
    }
}

/// Runs a script on a host; an error unless it exits 0. Returns stdout.
pub(crate) async fn run(host: &HostSession, script: &str) -> Result<String, LockError> {
    host.run_ok(script).await.map_err(|e| match e {
        ScriptError::Host(e) => LockError::Host(e),
        ScriptError::Failed { host, code, stderr } => LockError::Script { host, code, stderr },
    })
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
                let client = match crate::manifest::secret::consul_token(Some(c)) {
                    Err(e) => Err(LockError::from(e)),
                    Ok(token) => {
                        host.consul(c, token.as_deref())
                            .await
                            .cloned()
                            .map_err(|e| match e {
                                AgentError::Forward(e) => LockError::Host(e),
                                AgentError::Client { source, .. } => LockError::Consul(source),
                            })
                    }
                };
                match client {
                    Ok(client) => Some(client),
                    Err(e) => {
                        host.close().await;
                        return Err(e);
                    }
                }
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
}
