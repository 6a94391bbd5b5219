//! One handle per host: an OpenSSH multiplexed connection (native mux), through which the
//! host's Docker engine (a forwarded unix socket, spoken to by `bollard`) and its Consul agent
//! (a forwarded local TCP port) are reached. A host whose address is `local` is the machine
//! fleet runs on: no SSH, the local engine and agent directly.
//!
//! Why these choices:
//! - host keys are checked strictly (`StrictHostKeyChecking=yes`): openssh's default would
//!   silently trust a host seen for the first time. `FLEET_SSH_ACCEPT_NEW=1` relaxes this to
//!   `accept-new` for people who want it; a changed key is refused either way;
//! - the user's `~/.ssh/config` is read by `ssh` itself; `FLEET_SSH_CONFIG` (or
//!   `ConnectOptions::ssh_config`) names another config file (`ssh -F`);
//! - control sockets and forwarded sockets live under a short directory of this process
//!   (`$XDG_RUNTIME_DIR/fleet-<pid>-<n>-<random>/`, else under `/tmp`): unix socket paths are
//!   limited to 108 bytes. Its name cannot be guessed, it is made with `mkdir` (which fails on
//!   an existing one) and mode 0700, and a directory of that name that is not ours alone
//!   (another owner, a symlink, group or other access) is refused: another local user must
//!   not be able to pre-make it and swap the forwarded Docker socket;
//! - addresses and users that ssh could read as options (a leading `-`) or that carry
//!   whitespace, control or shell characters are refused before any ssh runs
//!   ([`check_destination`]); fleet's own ssh command lines put `--` before the destination;
//! - masters are kept for a minute after a command and reused by the next one (`reuse.rs`,
//!   `FLEET_SSH_PERSIST`); a command's own forwards are closed when it ends either way;
//! - `bollard` does not negotiate the API version by itself: `docker()` does, and refuses
//!   engines older than API 1.41.
//!
//! Files: this one the session (connect, forwards, engine, scripts, close); `agent.rs` the
//! session's one Consul client (`consul()`); `error.rs` the typed errors and what ssh printed
//! turned into one; `destination.rs` the address and user
//! checks; `runtime.rs` the private socket directory; `engine.rs` the API version from
//! `/_ping`; `reuse.rs` kept masters.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bollard::Docker;
use futures_util::StreamExt;
use openssh::{ControlPersist, ForwardType, KnownHosts, Session, SessionBuilder, Socket};
use tokio::sync::{Mutex, OnceCell};

use crate::desired::HostTarget;
use crate::errors::chain;

mod agent;
mod destination;
mod engine;
mod error;
mod reuse;
mod runtime;

pub use agent::AgentError;
pub use destination::{check_destination, destination_problem};
use engine::ping_api;
pub use engine::{containers_labelled, force_remove};
use error::classify;
pub use error::{HostError, ScriptError};
use runtime::{RUNTIME_SEQ, make_dir, remove_session_dir, runtime_base, short_name};
pub(crate) use runtime::{make_private_dir, unguessable};

/// The oldest Docker Engine API fleet talks to.
pub const MIN_API: (usize, usize) = (1, 41);

/// Single-quotes `s` for sh.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Default bound on hosts connected (and read) at once.
pub const DEFAULT_PARALLEL: usize = 32;

/// How to connect. `Default` reads `FLEET_SSH_CONFIG` and `FLEET_SSH_ACCEPT_NEW`.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Gives up on a host after this long (TCP connect + SSH handshake).
    pub connect_timeout: Duration,
    /// An `ssh -F` config file; `None` lets ssh read `~/.ssh/config` as usual.
    pub ssh_config: Option<PathBuf>,
    /// Accept a host seen for the first time (`accept-new`) instead of refusing it.
    pub accept_new_host_keys: bool,
    /// Where control and forwarded sockets go. Keep it short (108-byte socket path limit).
    pub runtime_dir: PathBuf,
    /// Per-request timeout for the Docker engine, seconds.
    pub docker_timeout_secs: u64,
    /// Keep each SSH master this long after its last channel, for the next command to reuse
    /// (`FLEET_SSH_PERSIST`, default 60 s); `None` opens and closes one per command.
    pub persist: Option<Duration>,
    /// ssh's `ServerAliveInterval` (`FLEET_SSH_KEEPALIVE`, default 3 s, whole seconds): a host
    /// that answers nothing for [`KEEPALIVE_MISSES`] + 1 intervals is lost (its master exits
    /// and every request through it fails), 12 s with the default.
    pub keepalive: Duration,
}

/// ssh's `ServerAliveCountMax`: keepalives that may go unanswered before ssh gives up.
pub const KEEPALIVE_MISSES: u32 = 3;

/// `FLEET_SSH_KEEPALIVE`: a duration (`3s`) or whole seconds (`3`); at least 1 s. Unset or
/// unreadable: 3 s.
pub fn keepalive_from_env() -> Duration {
    parse_keepalive(std::env::var("FLEET_SSH_KEEPALIVE").ok().as_deref())
}

fn parse_keepalive(v: Option<&str>) -> Duration {
    const DEFAULT: Duration = Duration::from_secs(3);
    let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
        return DEFAULT;
    };
    let parsed = v
        .parse::<u64>()
        .map(Duration::from_secs)
        .or_else(|_| humantime::parse_duration(v));
    match parsed {
        Ok(d) if d >= Duration::from_secs(1) => Duration::from_secs(d.as_secs()),
        _ => {
            tracing::warn!("FLEET_SSH_KEEPALIVE={v:?} is not a duration of 1s or more; using 3s");
            DEFAULT
        }
    }
}

static SESSION_SEQ: AtomicUsize = AtomicUsize::new(0);

impl Default for ConnectOptions {
    fn default() -> Self {
        let n = RUNTIME_SEQ.fetch_add(1, Ordering::Relaxed);
        ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            ssh_config: std::env::var_os("FLEET_SSH_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            accept_new_host_keys: std::env::var("FLEET_SSH_ACCEPT_NEW").as_deref() == Ok("1"),
            runtime_dir: runtime_base().join(format!(
                "fleet-{}-{n}-{:016x}",
                std::process::id(),
                unguessable()
            )),
            docker_timeout_secs: 120,
            persist: reuse::persist_from_env(),
            keepalive: keepalive_from_env(),
        }
    }
}

enum Link {
    Local,
    /// Our own master, closed with the session.
    Ssh(Session),
    /// A kept master (`reuse.rs`): only our forwards are closed with the session.
    Kept(Session),
}

/// An open connection to one host. Reuse it for the whole command; `close()` it at the end.
pub struct HostSession {
    target: HostTarget,
    link: Link,
    /// This host's own directory under the runtime dir (forwarded sockets).
    dir: PathBuf,
    docker_timeout_secs: u64,
    docker: OnceCell<Docker>,
    /// The Consul agent's client, made by the first `consul()`.
    consul: agent::AgentCell,
    forwards: Mutex<Vec<(u16, String, u16)>>,
}

/// A master of this command's own (no reuse): closed with the session, and gone two minutes
/// after a killed fleet's last channel.
async fn own_master(
    target: &HostTarget,
    opts: &ConnectOptions,
    dir: &Path,
) -> Result<Session, HostError> {
    let mut b = SessionBuilder::default();
    b.known_hosts_check(if opts.accept_new_host_keys {
        KnownHosts::Add
    } else {
        KnownHosts::Strict
    })
    .connect_timeout(opts.connect_timeout)
    .server_alive_interval(opts.keepalive)
    // A master whose fleet was killed (SIGKILL, lost terminal) must not live forever:
    // it exits after two minutes without a channel. A running command always has one
    // within that time (requests, health polls, lock renewals, a followed log).
    .control_persist(ControlPersist::IdleFor(
        NonZeroUsize::new(120).expect("not zero"),
    ))
    .control_directory(dir);
    if let Some(u) = &target.user {
        b.user(u.clone());
    }
    if let Some(p) = target.port {
        b.port(p);
    }
    if let Some(k) = &target.identity_file {
        b.keyfile(k);
    }
    if let Some(c) = &opts.ssh_config {
        b.config_file(c);
    }
    match tokio::time::timeout(handshake_limit(opts), b.connect_mux(&target.address)).await {
        Err(_) => Err(no_session(target, opts)),
        Ok(Err(e)) => Err(classify(target, &chain(&e))),
        Ok(Ok(s)) => Ok(s),
    }
}

/// ssh enforces `ConnectTimeout` for TCP only; the handshake is bounded too, by this.
fn handshake_limit(opts: &ConnectOptions) -> Duration {
    opts.connect_timeout + Duration::from_secs(5)
}

/// The error when no SSH session came within [`handshake_limit`].
fn no_session(target: &HostTarget, opts: &ConnectOptions) -> HostError {
    HostError::Unreachable {
        host: target.name.clone(),
        address: target.address.clone(),
        cause: format!(
            "no SSH session after {}",
            humantime::format_duration(handshake_limit(opts))
        ),
    }
}

impl HostSession {
    /// Connect to one host: SSH master (native mux) unless the address is `local`.
    pub async fn connect(target: &HostTarget, opts: &ConnectOptions) -> Result<Self, HostError> {
        if !target.is_local() {
            check_destination(target)?;
        }
        // One directory per session, even for two sessions to the same host: closing one
        // removes its directory, which must not take the other's forwarded sockets with it.
        let k = SESSION_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = opts
            .runtime_dir
            .join(format!("{}-{k}", short_name(&target.name)));
        make_dir(&opts.runtime_dir, &dir)?;
        let kept = match opts.persist {
            Some(p) if !target.is_local() => reuse::cache_dir().map(|d| (d, p)),
            _ => None,
        };
        let link = if target.is_local() {
            Ok(Link::Local)
        } else {
            let reused = match kept {
                Some((cache, persist)) => reuse::connect(target, opts, &cache, persist).await,
                None => Ok(None),
            };
            match reused {
                Ok(Some(s)) => Ok(Link::Kept(s)),
                Ok(None) => own_master(target, opts, &dir).await.map(Link::Ssh),
                Err(e) => Err(e),
            }
        };
        let link = match link {
            Ok(link) => link,
            Err(e) => {
                // No session: its directory (and the runtime one, when it was the last) goes.
                remove_session_dir(&dir);
                return Err(e);
            }
        };
        Ok(HostSession {
            target: target.clone(),
            link,
            dir,
            docker_timeout_secs: opts.docker_timeout_secs,
            docker: OnceCell::new(),
            consul: agent::AgentCell::default(),
            forwards: Mutex::new(Vec::new()),
        })
    }

    pub fn target(&self) -> &HostTarget {
        &self.target
    }

    pub fn is_local(&self) -> bool {
        matches!(self.link, Link::Local)
    }

    /// `Some(why)` when the SSH connection is gone: its master exited (the host went silent
    /// for `KEEPALIVE_MISSES` + 1 keepalive intervals, or the master was killed). Asked after
    /// a request fails, to tell a lost host from a failing engine or agent. A local host is
    /// never lost.
    pub async fn lost(&self) -> Option<String> {
        let (Link::Ssh(s) | Link::Kept(s)) = &self.link else {
            return None;
        };
        match tokio::time::timeout(Duration::from_secs(2), s.check()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(chain(&e)),
            Err(_) => Some("the SSH master does not answer".into()),
        }
    }

    fn forward_err(&self, what: impl Into<String>, cause: impl Into<String>) -> HostError {
        HostError::Forward {
            host: self.target.name.clone(),
            address: self.target.address.clone(),
            what: what.into(),
            cause: cause.into(),
        }
    }

    fn engine_down(&self, cause: impl Into<String>) -> HostError {
        HostError::EngineDown {
            host: self.target.name.clone(),
            address: self.target.address.clone(),
            socket: self.target.docker_socket.clone(),
            cause: cause.into(),
        }
    }

    /// The host's Docker engine, version-negotiated (API >= 1.41). The first call forwards
    /// the socket and asks the engine its version; later calls return the same client.
    pub async fn docker(&self) -> Result<Docker, HostError> {
        self.docker
            .get_or_try_init(|| async {
                let socket = match &self.link {
                    Link::Local => PathBuf::from(&self.target.docker_socket),
                    Link::Ssh(s) | Link::Kept(s) => {
                        let local = self.dir.join("docker.sock");
                        let _ = std::fs::remove_file(&local);
                        s.request_port_forward(
                            ForwardType::Local,
                            Socket::from(local.clone()),
                            Socket::from(PathBuf::from(&self.target.docker_socket)),
                        )
                        .await
                        .map_err(|e| {
                            self.forward_err(
                                format!("the Docker socket {}", self.target.docker_socket),
                                chain(&e),
                            )
                        })?;
                        local
                    }
                };
                let api = tokio::time::timeout(Duration::from_secs(15), ping_api(&socket))
                    .await
                    .map_err(|_| self.engine_down("no answer within 15s"))?
                    .map_err(|e| self.engine_down(e))?;
                if api < MIN_API {
                    return Err(HostError::EngineTooOld {
                        host: self.target.name.clone(),
                        address: self.target.address.clone(),
                        api: format!("{}.{}", api.0, api.1),
                    });
                }
                let newest = bollard::API_DEFAULT_VERSION;
                let (major_version, minor_version) =
                    api.min((newest.major_version, newest.minor_version));
                let docker = Docker::connect_with_unix(
                    &socket.to_string_lossy(),
                    self.docker_timeout_secs,
                    &bollard::ClientVersion {
                        major_version,
                        minor_version,
                    },
                )
                .map_err(|e| self.engine_down(chain(&e)))?;
                Ok(docker)
            })
            .await
            .cloned()
    }

    /// A local `127.0.0.1:<port>` that reaches `remote_host:remote_port` as seen from the host.
    /// For a `local` host that is the remote address itself.
    pub async fn forward_tcp(
        &self,
        remote_host: &str,
        remote_port: u16,
    ) -> Result<std::net::SocketAddr, HostError> {
        let what = format!("{remote_host}:{remote_port}");
        let ssh = match &self.link {
            Link::Local => {
                return tokio::net::lookup_host(&what)
                    .await
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| self.forward_err(what.clone(), "cannot resolve"));
            }
            Link::Ssh(s) | Link::Kept(s) => s,
        };
        let mut forwards = self.forwards.lock().await;
        if let Some((p, _, _)) = forwards
            .iter()
            .find(|(_, h, p)| h == remote_host && *p == remote_port)
        {
            return Ok(([127, 0, 0, 1], *p).into());
        }
        // Pick a free port, then ask ssh to listen there; retry if another process won the race.
        let mut last = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| self.forward_err(what.clone(), e.to_string()))?
                .port();
            match ssh
                .request_port_forward(
                    ForwardType::Local,
                    Socket::TcpSocket {
                        host: "127.0.0.1".into(),
                        port,
                    },
                    Socket::TcpSocket {
                        host: remote_host.to_string().into(),
                        port: remote_port,
                    },
                )
                .await
            {
                Ok(()) => {
                    forwards.push((port, remote_host.to_string(), remote_port));
                    return Ok(([127, 0, 0, 1], port).into());
                }
                Err(e) => last = chain(&e),
            }
        }
        Err(self.forward_err(what, last))
    }

    /// The base URL (`http://127.0.0.1:<port>`) of the host's Consul agent, given the agent's
    /// address as seen from the host (`ConsulTarget::address`, e.g. `http://127.0.0.1:8500`).
    pub async fn consul_url(&self, agent_address: &str) -> Result<String, HostError> {
        let url = reqwest::Url::parse(agent_address).map_err(|e| {
            self.forward_err(format!("the Consul agent {agent_address}"), e.to_string())
        })?;
        let host = url.host_str().unwrap_or("127.0.0.1").to_string();
        let port = url.port_or_known_default().unwrap_or(8500);
        if self.is_local() {
            return Ok(agent_address.trim_end_matches('/').to_string());
        }
        let local = self.forward_tcp(&host, port).await?;
        Ok(format!("{}://{local}", url.scheme()))
    }

    /// `consul_url("http://127.0.0.1:8500")`: the agent where it usually listens.
    pub async fn consul_port(&self) -> Result<std::net::SocketAddr, HostError> {
        self.forward_tcp("127.0.0.1", 8500).await
    }

    /// Runs `sh -c script` on the host (locally for a `local` host) and returns its exit code
    /// (`None` when killed by a signal), stdout and stderr. For small bookkeeping scripts (lock
    /// file, release ledger), not for the Docker work, which goes through the engine's API.
    pub async fn run_sh(&self, script: &str) -> Result<ShOutput, HostError> {
        let out = match &self.link {
            Link::Local => tokio::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .map_err(|e| HostError::Ssh {
                    host: self.target.name.clone(),
                    address: self.target.address.clone(),
                    cause: format!("cannot run sh: {e}"),
                })?,
            Link::Ssh(s) | Link::Kept(s) => s
                .command("sh")
                .arg("-c")
                .arg(script)
                .stdin(openssh::Stdio::null())
                .output()
                .await
                .map_err(|e| classify(&self.target, &chain(&e)))?,
        };
        Ok(ShOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// [`run_sh`](Self::run_sh), an error unless the script exits 0; returns its stdout.
    pub async fn run_ok(&self, script: &str) -> Result<String, ScriptError> {
        let out = self.run_sh(script).await?;
        if out.code != Some(0) {
            return Err(ScriptError::Failed {
                host: self.target.name.clone(),
                code: out
                    .code
                    .map(|c| format!("exit code {c}"))
                    .unwrap_or_else(|| "killed".into()),
                stderr: out.stderr.trim().to_string(),
            });
        }
        Ok(out.stdout)
    }

    /// Close the SSH master (which ends every forward), or for a kept master the forwards
    /// this session opened; then remove this host's sockets.
    pub async fn close(self) {
        match self.link {
            Link::Local => {}
            Link::Ssh(s) => {
                let _ = s.close().await;
            }
            Link::Kept(s) => {
                if self.docker.initialized() {
                    let _ = s
                        .close_port_forward(
                            ForwardType::Local,
                            Socket::from(self.dir.join("docker.sock")),
                            Socket::from(PathBuf::from(&self.target.docker_socket)),
                        )
                        .await;
                }
                for (port, host, remote) in self.forwards.into_inner() {
                    let _ = s
                        .close_port_forward(
                            ForwardType::Local,
                            Socket::TcpSocket {
                                host: "127.0.0.1".into(),
                                port,
                            },
                            Socket::TcpSocket {
                                host: host.into(),
                                port: remote,
                            },
                        )
                        .await;
                }
                let _ = s.detach();
            }
        }
        remove_session_dir(&self.dir);
    }
}

/// What a script run by [`HostSession::run_sh`] left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Connect to every host, at most `parallel` at once; one result per host, in input order. A
/// failing host does not stop the others.
pub async fn connect_all(
    targets: &[HostTarget],
    opts: &ConnectOptions,
    parallel: usize,
) -> Vec<Result<HostSession, HostError>> {
    futures_util::stream::iter(targets)
        .map(|t| HostSession::connect(t, opts))
        .buffered(parallel.max(1))
        .collect()
        .await
}

/// Close every session that opened, then remove the runtime directory if no other session
/// (opened with the same options) still has its sockets there.
pub async fn close_all(sessions: Vec<Result<HostSession, HostError>>, opts: &ConnectOptions) {
    futures_util::future::join_all(
        sessions
            .into_iter()
            .filter_map(Result::ok)
            .map(|s| s.close()),
    )
    .await;
    let _ = std::fs::remove_dir(&opts.runtime_dir);
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// `web1` at `address`, user `deploy`: the host of the unit tests here and in `reuse`.
    pub(super) fn target(address: &str) -> HostTarget {
        HostTarget {
            name: "web1".into(),
            address: address.into(),
            user: Some("deploy".into()),
            port: None,
            identity_file: None,
            docker_socket: "/run/docker.sock".into(),
            roles: vec![],
        }
    }

    fn t() -> HostTarget {
        target("10.0.0.9")
    }

    #[test]
    fn classifies_ssh_messages() {
        let cases = [
            (
                "No ED25519 host key is known for 10.0.0.9 and you have requested strict checking.\nHost key verification failed.",
                "unknown-host-key",
            ),
            (
                "@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.",
                "changed-host-key",
            ),
            (
                "root@10.0.0.9: Permission denied (publickey).",
                "auth-refused",
            ),
            (
                "ssh: connect to host 10.0.0.9 port 22: Connection refused",
                "unreachable",
            ),
            (
                "ssh: connect to host 10.0.0.9 port 22: Connection timed out",
                "unreachable",
            ),
            (
                "ssh: Could not resolve hostname nope: Name or service not known",
                "unreachable",
            ),
            ("something else entirely", "ssh"),
        ];
        for (text, kind) in cases {
            let e = classify(&t(), text);
            assert_eq!(e.kind(), kind, "{text}");
            let msg = e.to_string();
            assert!(msg.starts_with("web1 (10.0.0.9): "), "{msg}");
        }
    }

    #[test]
    fn socket_paths_stay_short() {
        let o = ConnectOptions::default();
        let p = o
            .runtime_dir
            .join(format!("{}-{}", short_name(&"x".repeat(300)), usize::MAX))
            .join(".ssh-connectionXXXXXX")
            .join("master");
        assert!(p.as_os_str().len() < 100, "{}", p.display());
    }

    #[test]
    fn addresses_and_users_ssh_could_misread_are_refused() {
        for ok in [
            "10.0.0.9",
            "web-1.example.com",
            "fe80::1%eth0",
            "ssh://deploy@10.0.0.9:2222",
            "deploy@web1",
            "h1",
        ] {
            assert_eq!(destination_problem(ok, "address"), None, "{ok}");
        }
        for bad in [
            "-oProxyCommand=touch /tmp/x",
            "-oProxyCommand=id",
            "ssh://-oProxyCommand=id",
            "ssh://u@-oProxyCommand=id",
            "u@-oProxyCommand=id",
            "-x@web1",
            "web1 -p 23",
            "web1\n",
            "web1\t",
            "web1;id",
            "$(id)",
            "",
        ] {
            assert!(destination_problem(bad, "address").is_some(), "{bad:?}");
        }
        assert!(destination_problem("-l", "user").is_some());
        assert_eq!(destination_problem("deploy", "user"), None);
        let mut t = target("10.0.0.9");
        t.user = Some("-oProxyCommand=id".into());
        let e = check_destination(&t).unwrap_err();
        assert!(e.to_string().contains("starts with `-`"), "{e}");
    }

    /// A target made in code (not through the manifest) with an option for an address never
    /// reaches ssh: the ProxyCommand does not run.
    #[tokio::test]
    async fn an_option_for_an_address_never_reaches_ssh() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        for persist in [None, Some(Duration::from_secs(5))] {
            let t = target(&format!("-oProxyCommand=touch {}", marker.display()));
            let opts = ConnectOptions {
                persist,
                connect_timeout: Duration::from_secs(2),
                ..ConnectOptions::default()
            };
            let e = HostSession::connect(&t, &opts)
                .await
                .err()
                .expect("connected to an option");
            assert!(e.to_string().contains("starts with `-`"), "{e}");
            assert!(!marker.exists(), "ssh ran the address's ProxyCommand");
            assert!(!opts.runtime_dir.exists());
        }
    }

    #[test]
    fn runtime_dirs_are_unguessable_and_private() {
        let a = ConnectOptions::default().runtime_dir;
        let b = ConnectOptions::default().runtime_dir;
        assert_ne!(a, b);
        let (na, nb) = (a.file_name().unwrap(), b.file_name().unwrap());
        let prefix = format!("fleet-{}-", std::process::id());
        let (ra, rb) = (
            na.to_str().unwrap().rsplit('-').next().unwrap(),
            nb.to_str().unwrap().rsplit('-').next().unwrap(),
        );
        assert!(na.to_str().unwrap().starts_with(&prefix));
        // Not the sequence number alone: 64 random bits, different for each.
        assert_eq!(ra.len(), 16);
        assert_ne!(ra, rb);
    }

    /// What another local user could pre-make at the runtime directory's path: refused, and
    /// nothing is created inside it.
    #[tokio::test]
    async fn a_runtime_dir_that_is_not_ours_alone_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let local = HostTarget {
            address: "local".into(),
            ..target("local")
        };
        // Group- and world-writable.
        let opts = ConnectOptions::default();
        std::fs::create_dir(&opts.runtime_dir).unwrap();
        std::fs::set_permissions(&opts.runtime_dir, std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let e = HostSession::connect(&local, &opts)
            .await
            .err()
            .expect("refused");
        assert_eq!(e.kind(), "local");
        assert!(e.to_string().contains("mode is 0777"), "{e}");
        assert_eq!(std::fs::read_dir(&opts.runtime_dir).unwrap().count(), 0);
        std::fs::remove_dir(&opts.runtime_dir).unwrap();
        // A symlink to a directory of ours.
        let elsewhere = tempfile::tempdir().unwrap();
        let opts = ConnectOptions::default();
        std::os::unix::fs::symlink(elsewhere.path(), &opts.runtime_dir).unwrap();
        let e = HostSession::connect(&local, &opts)
            .await
            .err()
            .expect("refused");
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
        std::fs::remove_file(&opts.runtime_dir).unwrap();
        // Another user's, mode 0700 (only root can make one to test with).
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let opts = ConnectOptions::default();
            std::fs::create_dir(&opts.runtime_dir).unwrap();
            std::fs::set_permissions(&opts.runtime_dir, std::fs::Permissions::from_mode(0o700))
                .unwrap();
            std::os::unix::fs::chown(&opts.runtime_dir, Some(65534), Some(65534)).unwrap();
            let e = HostSession::connect(&local, &opts)
                .await
                .err()
                .expect("refused");
            assert!(e.to_string().contains("belongs to uid 65534"), "{e}");
            std::fs::remove_dir(&opts.runtime_dir).unwrap();
        }
        // Our own, made by this process: used (two sessions share it), then removed.
        let opts = ConnectOptions::default();
        let one = HostSession::connect(&local, &opts).await.unwrap();
        let two = HostSession::connect(&local, &opts).await.unwrap();
        let mode = std::fs::symlink_metadata(&opts.runtime_dir)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        close_all(vec![Ok(one), Ok(two)], &opts).await;
        assert!(!opts.runtime_dir.exists());
    }

    #[test]
    fn keepalive_reads_seconds_or_durations_and_refuses_less_than_one_second() {
        assert_eq!(parse_keepalive(None), Duration::from_secs(3));
        assert_eq!(parse_keepalive(Some("1")), Duration::from_secs(1));
        assert_eq!(parse_keepalive(Some(" 5s ")), Duration::from_secs(5));
        assert_eq!(parse_keepalive(Some("2m")), Duration::from_secs(120));
        // ssh takes whole seconds: a fraction is cut, not rounded to 0.
        assert_eq!(parse_keepalive(Some("1500ms")), Duration::from_secs(1));
        assert_eq!(parse_keepalive(Some("0")), Duration::from_secs(3));
        assert_eq!(parse_keepalive(Some("500ms")), Duration::from_secs(3));
        assert_eq!(parse_keepalive(Some("soon")), Duration::from_secs(3));
    }

    #[test]
    fn cause_drops_the_host_prefix() {
        let e = classify(
            &t(),
            "ssh: connect to host 10.0.0.9 port 22: Connection refused",
        );
        assert_eq!(
            e.cause(),
            "ssh: connect to host 10.0.0.9 port 22: Connection refused"
        );
    }
}

#[cfg(test)]
mod local_tests {
    use super::*;

    #[tokio::test]
    async fn local_host_with_no_engine_is_engine_down_naming_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let target = HostTarget {
            name: "laptop".into(),
            user: None,
            docker_socket: dir.path().join("no-docker.sock").display().to_string(),
            ..tests::target("local")
        };
        let opts = ConnectOptions::default();
        let s = HostSession::connect(&target, &opts).await.unwrap();
        assert!(s.is_local());
        match s.docker().await {
            Err(e @ HostError::EngineDown { .. }) => {
                assert_eq!(e.kind(), "engine-down");
                assert!(
                    e.to_string()
                        .starts_with("laptop (local): the Docker engine at ")
                );
            }
            Err(e) => panic!("wrong error {e}"),
            Ok(_) => panic!("an engine answered on a missing socket"),
        }
        // A local host's Consul agent is used where it is, without forwarding.
        assert_eq!(
            s.consul_url("http://127.0.0.1:8500/").await.unwrap(),
            "http://127.0.0.1:8500"
        );
        close_all(vec![Ok(s)], &opts).await;
        assert!(!opts.runtime_dir.exists());
    }
}
