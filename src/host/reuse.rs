//! SSH masters kept between fleet commands (what Ansible does with `ControlPersist=60s`):
//! `fleet plan` followed by `fleet deploy` and `fleet status` within a minute pays for one SSH
//! handshake per host, not three. On many hosts the handshakes are most of a command's time
//! (both ends' key exchange is CPU work), so this is what makes a repeated plan fast.
//!
//! - A master is keyed by everything that shapes the connection: address, user, port, key,
//!   ssh config file and host-key mode. Another config, key or `FLEET_SSH_ACCEPT_NEW` gets its
//!   own master, with its own host-key check.
//! - Masters live in a directory only this user can use (`$XDG_RUNTIME_DIR/fleet-ssh`, else
//!   `/tmp/fleet-ssh-<uid>`), checked to be owned by us with mode 0700; otherwise fleet does not
//!   persist at all.
//! - A master exits by itself after `persist` without a channel, and within 15 s of its host
//!   going silent (`ServerAliveInterval=5`, `ServerAliveCountMax=3`).
//! - Two fleet processes starting the same master take turns through a lock file.
//! - `FLEET_SSH_PERSIST=0` (or `off`) turns it off: each command opens and closes its own.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use openssh::Session;

use super::{ConnectOptions, HostError, classify, fnv64, handshake_limit, no_session};
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
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    let private = meta.is_dir() && meta.uid() == uid && meta.permissions().mode() & 0o077 == 0;
    if !private {
        tracing::warn!(
            "{} is not a private directory of this user; SSH masters are not kept",
            dir.display()
        );
        return None;
    }
    Some(dir)
}

/// What makes two connections interchangeable.
fn key(target: &HostTarget, opts: &ConnectOptions) -> String {
    let text = format!(
        "{}\0{:?}\0{:?}\0{:?}\0{:?}\0{}",
        target.address,
        target.user,
        target.port,
        target.identity_file,
        opts.ssh_config,
        opts.accept_new_host_keys
    );
    format!("{:016x}", fnv64(&text))
}

/// A live master for `target`: the one a previous command left, or a new one that stays
/// `persist` after its last channel.
pub async fn connect(
    target: &HostTarget,
    opts: &ConnectOptions,
    dir: &Path,
    persist: Duration,
) -> Result<Session, HostError> {
    let socket = dir.join(key(target, opts));
    let log = socket.with_extension("log");
    let _turn = take_turn(&socket.with_extension("lock"), opts.connect_timeout).await?;
    if socket.exists() {
        let s = Session::resume_mux(socket.clone().into(), Some(log.clone().into()));
        match tokio::time::timeout(Duration::from_secs(2), s.check()).await {
            Ok(Ok(())) => return Ok(s),
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
        .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]);
    if let Some(p) = target.port {
        ssh.arg("-p").arg(p.to_string());
    }
    if let Some(u) = &target.user {
        ssh.arg("-l").arg(u);
    }
    if let Some(k) = &target.identity_file {
        ssh.args(["-o", "IdentitiesOnly=yes", "-i"]).arg(k);
    }
    if let Some(c) = &opts.ssh_config {
        ssh.arg("-F").arg(c);
    }
    ssh.arg(&target.address).kill_on_drop(true);
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
    Ok(Session::resume_mux(socket.into(), Some(log.into())))
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
        let a = key(&target("10.0.0.9"), &o);
        assert_eq!(a, key(&target("10.0.0.9"), &o));
        assert_eq!(a.len(), 16);
        assert_ne!(a, key(&target("10.0.0.10"), &o));
        let strict_off = ConnectOptions {
            accept_new_host_keys: !o.accept_new_host_keys,
            ..o.clone()
        };
        assert_ne!(a, key(&target("10.0.0.9"), &strict_off));
        let other_config = ConnectOptions {
            ssh_config: Some("/etc/other".into()),
            ..o.clone()
        };
        assert_ne!(a, key(&target("10.0.0.9"), &other_config));
        let mut other_user = target("10.0.0.9");
        other_user.user = Some("root".into());
        assert_ne!(a, key(&other_user, &o));
    }

    #[test]
    fn the_cache_dir_is_private() {
        let d = cache_dir().expect("a private cache dir");
        let m = std::fs::metadata(&d).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o700);
        assert!(d.join("0123456789abcdef.lock").as_os_str().len() < 100);
    }
}
