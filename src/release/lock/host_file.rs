//! The deploy lock without Consul: a file on the environment's first host, created atomically
//! under a `flock` of the guard file, with an expiry its holder renews every TTL/2.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::{Backend, DeployLock, Holder, LockError, died_here, run};
use crate::host::HostSession;
use crate::host::sh_quote;
use crate::identity::names::STATE_DIR;

/// Expiry of a host lock file: longer than Consul's, as each renewal is an SSH round trip.
pub const FILE_TTL: Duration = Duration::from_secs(30);

/// How often a holder of a host lock file looks that it still holds it (renewing at TTL / 2).
const FILE_CHECK: Duration = Duration::from_secs(2);

pub use crate::identity::names::lock_file;

/// A host lock file held: its host and path, and the token that says it is ours.
pub(super) struct Held {
    pub(super) host: Arc<HostSession>,
    pub(super) path: String,
    pub(super) token: String,
}

impl Held {
    /// Rewrites the holder in the file, keeping its expiry; false when the file is not ours.
    pub(super) async fn set_holder(&self, holder_json: &str) -> Result<bool, LockError> {
        let Held { host, path, token } = self;
        let script = format!(
            "{guard}\nif grep -q '\"token\":\"{token}\"' \"$f\" 2>/dev/null; then\n  exp=$(sed -n 's/^{{\"expires\":\\([0-9]*\\),.*/\\1/p' \"$f\")\n  printf '{{\"expires\":%s,\"token\":\"%s\",\"holder\":%s}}\\n' \"$exp\" {token} {h} > \"$f.tmp\" && mv \"$f.tmp\" \"$f\" && echo OK\nelse echo LOST; fi",
            guard = guard_prelude(path),
            h = sh_quote(holder_json),
        );
        Ok(run(host, &script).await?.starts_with("OK"))
    }

    /// Removes the file (only if it is still ours).
    pub(super) async fn release(self) -> Result<(), LockError> {
        let Held { host, path, token } = self;
        let script = format!(
            "{}\nif grep -q '\"token\":\"{token}\"' \"$f\" 2>/dev/null; then rm -f \"$f\"; fi\necho OK",
            guard_prelude(&path)
        );
        run(&host, &script).await.map(|_| ())
    }
}

impl DeployLock {
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
        let held = Held {
            host: host.clone(),
            path: path.clone(),
            token: token.clone(),
        };
        Ok(DeployLock::taken(
            Backend::Host(held),
            holder,
            took_over,
            |lost| renew_file(host, path, token, ttl, lost),
        ))
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
        "set -e\nf={}\nmkdir -p {STATE_DIR}\nexec 9>>{STATE_DIR}/.guard\nflock -x -w 20 9",
        sh_quote(path)
    )
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

#[cfg(test)]
mod tests {
    use super::*;

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
