//! SSH masters kept between fleet commands (what Ansible does with `ControlPersist=60s`):
//! `fleet plan` followed by `fleet deploy` and `fleet status` within a minute pays for one SSH
//! handshake per host, not three. On many hosts the handshakes are most of a command's time
//! (both ends' key exchange is CPU work), so this is what makes a repeated plan fast.
//!
//! - A master is keyed by everything that shapes the connection: address, user, port, key,
//!   host-key mode, keepalive, the ssh config file (canonical path and a hash of its content)
//!   and where ssh resolves the destination to (`ssh -G`: host name, port, user, proxies, ...).
//!   Another config, key, `FLEET_SSH_ACCEPT_NEW`, checkout or `HostName` gets its own master,
//!   with its own host-key check. `ssh -G` is a local call (~10 ms, no network), run for each
//!   host in parallel.
//! - Masters live in a directory only this user can use (`$XDG_RUNTIME_DIR/fleet-ssh`, else
//!   `/tmp/fleet-ssh-<uid>`), checked to be owned by us with mode 0700; otherwise fleet does not
//!   persist at all.
//! - A master exits by itself after `persist` without a channel, and within
//!   `KEEPALIVE_MISSES` + 1 keepalive intervals (12 s by default) of its host going silent.
//! - Two fleet processes starting the same master take turns through a lock file.
//! - `FLEET_SSH_PERSIST=0` (or `off`) turns it off: each command opens and closes its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use openssh::Session;

use super::{ConnectOptions, HostError, classify, handshake_limit, make_private_dir, no_session};
use crate::desired::HostTarget;
use crate::errors::chain;

/// `FLEET_SSH_PERSIST`: a duration (`60s`, `5m`), or `0`/`off`/`no` for none. Unset: 60 s.
pub fn persist_from_env() -> Option<Duration> {
    match std::env::var("FLEET_SSH_PERSIST") {
        Err(_) => Some(Duration::from_secs(60)),
        Ok(v) => parse_persist(&v),
    }
}

fn parse_persist(v: &str) -> Option<Duration> {
    match v.trim() {
        "" => Some(Duration::from_secs(60)),
        "0" | "off" | "no" | "false" => None,
        s => match humantime::parse_duration(s) {
            Ok(d) if d >= Duration::from_secs(1) => Some(d),
            _ => {
                tracing::warn!("FLEET_SSH_PERSIST={s:?} is not a duration; not keeping masters");
                None
            }
        },
    }
}

/// The directory masters live in, if it is safe to use: ours alone, mode 0700.
pub fn cache_dir() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(|d| PathBuf::from(d).join("fleet-ssh"))
        // Socket paths are limited to 108 bytes: keep room for the 16-hex name.
        .filter(|d| d.as_os_str().len() < 80)
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/fleet-ssh-{uid}")));
    if let Err(e) = make_private_dir(&dir) {
        tracing::warn!("{}: {e}; SSH masters are not kept", dir.display());
        return None;
    }
    Some(dir)
}

/// What makes two connections interchangeable: the machine ssh would reach and everything that
/// shapes the connection. The ssh config is named by its canonical path and its content's
/// hash, so another checkout's `FLEET_SSH_CONFIG=ssh_config` (the same relative path) or an
/// edited config gets its own master; and ssh itself resolves the destination (`ssh -G`:
/// `HostName`, `Port`, `User`, `ProxyJump`, keys, ... after every `Host` / `Match` block), so a
/// changed `HostName` does too. `None` when that cannot be worked out (an unreadable config,
/// ssh refusing it): then the command opens its own master, which reports ssh's own error.
///
/// Also returns the config's canonical path, which the master must be started with (the key
/// was computed from that file).
async fn key(target: &HostTarget, opts: &ConnectOptions) -> Option<(String, Option<PathBuf>)> {
    let config = match &opts.ssh_config {
        None => None,
        Some(c) => {
            let path = std::fs::canonicalize(c).ok()?;
            let content = std::fs::read(&path).ok()?;
            Some((path, content))
        }
    };
    let mut ssh = tokio::process::Command::new("ssh");
    ssh.arg("-G");
    ssh_args(&mut ssh, target, config.as_ref().map(|(p, _)| p.as_path()));
    let out = tokio::time::timeout(Duration::from_secs(5), ssh.kill_on_drop(true).output())
        .await
        .ok()?
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let key = key_of(target, opts, config.as_ref(), &out.stdout);
    Some((key, config.map(|(path, _)| path)))
}

/// [`key`] from what it gathered: the target as written, the host-key mode, the config (path,
/// content) and `ssh -G`'s resolution.
fn key_of(
    target: &HostTarget,
    opts: &ConnectOptions,
    config: Option<&(PathBuf, Vec<u8>)>,
    resolved: &[u8],
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let text = format!(
        "{}\0{:?}\0{:?}\0{:?}\0{}\0{}\0",
        target.address,
        target.user,
        target.port,
        target.identity_file.as_deref().map(absolute),
        opts.accept_new_host_keys,
        opts.keepalive.as_secs()
    );
    h.update(text.as_bytes());
    match config {
        None => h.update(b"no config\0"),
        Some((path, content)) => {
            h.update(path.as_os_str().as_encoded_bytes());
            h.update(b"\0");
            h.update(Sha256::digest(content));
        }
    }
    h.update(resolved);
    hex::encode(&h.finalize()[..8])
}

/// `path` made absolute (canonical when it exists), so that two checkouts' relative paths
/// differ.
fn absolute(path: &str) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| PathBuf::from(path))
}

/// The arguments that choose where ssh goes, ending with `-- destination`.
fn ssh_args(ssh: &mut tokio::process::Command, target: &HostTarget, config: Option<&Path>) {
    if let Some(p) = target.port {
        ssh.arg("-p").arg(p.to_string());
    }
    if let Some(u) = &target.user {
        ssh.arg("-l").arg(u);
    }
    if let Some(k) = &target.identity_file {
        ssh.args(["-o", "IdentitiesOnly=yes", "-i"])
            .arg(absolute(k));
    }
    if let Some(c) = config {
        ssh.arg("-F").arg(c);
    }
    ssh.arg("--").arg(&target.address);
}

/// A live master for `target`: the one a previous command left, or a new one that stays
/// `persist` after its last channel. `None` when no key can be made for it ([`key`]): the
/// caller opens a master of its own.
pub async fn connect(
    target: &HostTarget,
    opts: &ConnectOptions,
    dir: &Path,
    persist: Duration,
) -> Result<Option<Session>, HostError> {
    let Some((key, config)) = key(target, opts).await else {
        return Ok(None);
    };
    let socket = dir.join(key);
    let log = socket.with_extension("log");
    let _turn = take_turn(&socket.with_extension("lock"), opts.connect_timeout).await?;
    if socket.exists() {
        let s = Session::resume_mux(socket.clone().into(), Some(log.clone().into()));
        match tokio::time::timeout(Duration::from_secs(2), s.check()).await {
            Ok(Ok(())) => return Ok(Some(s)),
            _ => {
                // A master that died (host gone, killed): start over. Detach so that dropping
                // the handle does not try to talk to it again.
                let _ = s.detach();
                let _ = std::fs::remove_file(&socket);
            }
        }
    }
    let _ = std::fs::remove_file(&log);
    let mut ssh = tokio::process::Command::new("ssh");
    ssh.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .arg("-E")
        .arg(&log)
        .arg("-S")
        .arg(&socket)
        .args(["-M", "-f", "-N", "-o", "BatchMode=yes"])
        .arg("-o")
        .arg(format!("ControlPersist={}s", persist.as_secs().max(1)))
        .arg("-o")
        .arg(if opts.accept_new_host_keys {
            "StrictHostKeyChecking=accept-new"
        } else {
            "StrictHostKeyChecking=yes"
        })
        .arg("-o")
        .arg(format!(
            "ConnectTimeout={}",
            opts.connect_timeout.as_secs().max(1)
        ))
        .arg("-o")
        .arg(format!(
            "ServerAliveInterval={}",
            opts.keepalive.as_secs().max(1)
        ))
        .arg("-o")
        .arg(format!("ServerAliveCountMax={}", super::KEEPALIVE_MISSES));
    // The same config file as the key names.
    ssh_args(&mut ssh, target, config.as_deref());
    ssh.kill_on_drop(true);
    let status = match tokio::time::timeout(handshake_limit(opts), ssh.status()).await {
        Err(_) => return Err(no_session(target, opts)),
        Ok(Err(e)) => {
            return Err(HostError::Ssh {
                host: target.name.clone(),
                address: target.address.clone(),
                cause: format!("cannot run ssh: {}", chain(&e)),
            });
        }
        Ok(Ok(s)) => s,
    };
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        return Err(classify(target, &text));
    }
    Ok(Some(Session::resume_mux(socket.into(), Some(log.into()))))
}

/// Holds the per-master lock file until dropped (the lock goes with the file handle).
async fn take_turn(path: &Path, wait: Duration) -> Result<std::fs::File, HostError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| HostError::RuntimeDir {
            path: path.to_path_buf(),
            source,
        })?;
    let deadline = tokio::time::Instant::now() + wait + Duration::from_secs(5);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => {
                return Err(HostError::RuntimeDir {
                    path: path.to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::target;
    use super::*;

    #[test]
    fn persist_values() {
        assert_eq!(parse_persist(""), Some(Duration::from_secs(60)));
        assert_eq!(parse_persist("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_persist("0"), None);
        assert_eq!(parse_persist("off"), None);
        assert_eq!(parse_persist("soon"), None);
        assert_eq!(parse_persist("10ms"), None);
    }

    #[test]
    fn a_master_is_shared_only_by_identical_connections() {
        let o = ConnectOptions::default();
        let k = |t: &HostTarget, o: &ConnectOptions| key_of(t, o, None, b"hostname 10.0.0.9\n");
        let a = k(&target("10.0.0.9"), &o);
        assert_eq!(a, k(&target("10.0.0.9"), &o));
        assert_eq!(a.len(), 16);
        assert_ne!(a, k(&target("10.0.0.10"), &o));
        let strict_off = ConnectOptions {
            accept_new_host_keys: !o.accept_new_host_keys,
            ..o.clone()
        };
        assert_ne!(a, k(&target("10.0.0.9"), &strict_off));
        // A master that keeps its host alive otherwise notices a lost host at another time.
        let slower = ConnectOptions {
            keepalive: o.keepalive * 2,
            ..o.clone()
        };
        assert_ne!(a, k(&target("10.0.0.9"), &slower));
        let mut other_user = target("10.0.0.9");
        other_user.user = Some("root".into());
        assert_ne!(a, k(&other_user, &o));
        // The same config path with another content, or another path with the same content.
        let t = target("10.0.0.9");
        let conf = |p: &str, c: &str| (PathBuf::from(p), c.as_bytes().to_vec());
        let one = key_of(&t, &o, Some(&conf("/a/ssh_config", "x")), b"");
        assert_ne!(one, key_of(&t, &o, Some(&conf("/a/ssh_config", "y")), b""));
        assert_ne!(one, key_of(&t, &o, Some(&conf("/b/ssh_config", "x")), b""));
        assert_ne!(one, key_of(&t, &o, None, b""));
        // Where ssh resolves the destination to.
        assert_ne!(
            key_of(&t, &o, None, b"hostname 10.0.0.9\nport 22\n"),
            key_of(&t, &o, None, b"hostname 10.0.0.10\nport 22\n")
        );
    }

    /// Writes `config` to `dir/ssh_config` and returns the key for `web1` through it, with the
    /// config named by the relative path `ssh_config` from `dir`.
    async fn key_in(dir: &Path, config: &str) -> Option<String> {
        std::fs::write(dir.join("ssh_config"), config).unwrap();
        let o = ConnectOptions {
            ssh_config: Some(dir.join("ssh_config")),
            ..ConnectOptions::default()
        };
        key(&target("web1"), &o).await.map(|(k, _)| k)
    }

    #[tokio::test]
    async fn the_key_follows_the_config_file_and_the_resolved_host_name() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        let conf = |ip: &str| format!("Host web1\n  HostName {ip}\n  Port 2222\n");
        let a = key_in(one.path(), &conf("10.0.0.1"))
            .await
            .expect("ssh -G runs");
        assert_eq!(
            Some(&a),
            key_in(one.path(), &conf("10.0.0.1")).await.as_ref()
        );
        // Another checkout's file of the same relative name and content.
        let b = key_in(two.path(), &conf("10.0.0.1")).await.unwrap();
        assert_ne!(a, b, "another checkout's config shares a master");
        // The same file, its HostName changed.
        let c = key_in(one.path(), &conf("10.0.0.2")).await.unwrap();
        assert_ne!(a, c, "a changed HostName reuses the old master");
        // A config ssh refuses, or none at all: no key, so no reuse.
        assert_eq!(
            key_in(one.path(), "Host web1\n  NoSuchOption 1\n").await,
            None
        );
        let gone = ConnectOptions {
            ssh_config: Some(one.path().join("missing")),
            ..ConnectOptions::default()
        };
        assert_eq!(key(&target("web1"), &gone).await, None);
    }

    /// A relative `FLEET_SSH_CONFIG` names the file it reaches from here, not the string: the
    /// same file by a relative and an absolute path shares a master.
    #[tokio::test]
    async fn a_relative_config_path_is_keyed_by_the_file_it_names() {
        let here = std::env::current_dir().unwrap();
        let dir = tempfile::tempdir_in(&here).unwrap();
        std::fs::write(
            dir.path().join("ssh_config"),
            "Host web1\n  HostName 10.0.0.1\n",
        )
        .unwrap();
        let relative = dir.path().strip_prefix(&here).unwrap().join("ssh_config");
        assert!(relative.is_relative());
        let by = |p: PathBuf| ConnectOptions {
            ssh_config: Some(p),
            ..ConnectOptions::default()
        };
        let a = key(&target("web1"), &by(relative)).await.unwrap();
        let b = key(&target("web1"), &by(dir.path().join("ssh_config")))
            .await
            .unwrap();
        assert_eq!(a, b);
    }

    /// `ssh -G` keys every kept master.
    #[tokio::test]
    async fn the_destination_is_resolved_by_ssh() {
        // What it costs is `cargo xtask bench plan`'s to measure (a warm plan's CPU per host);
        // here: `ssh -G` runs and decides the key, the same config the same key.
        let dir = tempfile::tempdir().unwrap();
        let a = key_in(dir.path(), "Host web1\n  HostName 10.0.0.1\n").await;
        assert!(a.is_some(), "ssh -G did not run");
        assert_eq!(
            a,
            key_in(dir.path(), "Host web1\n  HostName 10.0.0.1\n").await
        );
    }

    #[test]
    fn the_cache_dir_is_private() {
        let d = cache_dir().expect("a private cache dir");
        let m = std::fs::metadata(&d).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777,
            0o700
        );
        assert!(d.join("0123456789abcdef.lock").as_os_str().len() < 100);
    }
}
