//! `pre_deploy` / `post_deploy` hooks: commands from the manifest, run on the machine fleet runs
//! on (not on the hosts), so they can use the same checkout, credentials and tools as the
//! person or CI job deploying. Each runs with `sh -c`; its output is streamed line by line with
//! a `[pre_deploy]` prefix to stderr (stdout stays clean for `--json`). A non-zero exit is an
//! error naming the hook, the command and the code: a failing `pre_deploy` stops the deploy
//! before anything changes.
//!
//! A hook cannot hold a deploy (and its lock) for ever:
//! - output is read as bytes and shown as lossy UTF-8, so a line that is not UTF-8 neither
//!   stops the reading nor leaves the hook to die of SIGPIPE on its next write;
//! - each command runs in its own process group and is bounded by [`timeout_from_env`]
//!   (`FLEET_HOOK_TIMEOUT`, default 10 minutes): past it the group gets SIGTERM, then SIGKILL,
//!   and the hook fails;
//! - a hook is done when its shell exits. A background process it left that still holds the
//!   output pipe open gets [`LINGER`] to finish writing (never past the timeout), then its
//!   group is stopped the same way; fleet does not wait for the pipe's end. (Redirect a
//!   background job's output, e.g. `job >/dev/null 2>&1 &`, to let it outlive the hook.)

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// How long a finished hook's leftover background processes may keep its output open.
pub const LINGER: Duration = Duration::from_secs(2);

/// The bound on one hook command when `FLEET_HOOK_TIMEOUT` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// A longer line is shown in pieces of this many bytes (a hook printing without newlines
/// must not grow fleet's memory without bound).
const MAX_LINE: usize = 64 * 1024;

/// `FLEET_HOOK_TIMEOUT` (a duration: `90s`, `15m`), else [`DEFAULT_TIMEOUT`].
pub fn timeout_from_env() -> Duration {
    match std::env::var("FLEET_HOOK_TIMEOUT") {
        Ok(v) if !v.trim().is_empty() => match humantime::parse_duration(v.trim()) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                tracing::warn!(
                    "FLEET_HOOK_TIMEOUT={v:?} is not a duration; hooks are bounded by {}",
                    humantime::format_duration(DEFAULT_TIMEOUT)
                );
                DEFAULT_TIMEOUT
            }
        },
        _ => DEFAULT_TIMEOUT,
    }
}

/// Which hook runs. `FLEET_HOOK` carries its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    PreDeploy,
    PostDeploy,
}

impl HookKind {
    /// The manifest key: `pre_deploy` / `post_deploy`.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::PreDeploy => "pre_deploy",
            HookKind::PostDeploy => "post_deploy",
        }
    }
}

impl std::fmt::Display for HookKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("the {kind} hook `{command}` failed with exit code {code}")]
    Failed {
        kind: HookKind,
        command: String,
        code: i32,
    },
    #[error("the {kind} hook `{command}` was killed by a signal")]
    Killed { kind: HookKind, command: String },
    #[error(
        "the {kind} hook `{command}` did not finish within {} (FLEET_HOOK_TIMEOUT); it was stopped",
        humantime::format_duration(*.after)
    )]
    TimedOut {
        kind: HookKind,
        command: String,
        after: Duration,
    },
    #[error("cannot run the {kind} hook `{command}`: {source}")]
    Spawn {
        kind: HookKind,
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// The environment every hook gets: `FLEET_PROJECT`, `FLEET_ENV`, `FLEET_VERSION` (every app's
/// version, `app=tag,...` sorted by app), `FLEET_APPS` (the apps this deploy changes,
/// comma-separated). Add your own pairs (e.g. `FLEET_OUTCOME` for `post_deploy`) after these.
pub fn env_for(
    project: &str,
    env: &str,
    versions: &BTreeMap<String, String>,
    changed_apps: &[String],
) -> Vec<(String, String)> {
    vec![
        ("FLEET_PROJECT".into(), project.into()),
        ("FLEET_ENV".into(), env.into()),
        ("FLEET_VERSION".into(), versions_text(versions)),
        ("FLEET_APPS".into(), changed_apps.join(",")),
    ]
}

/// `app=tag,...` in app order.
pub fn versions_text(versions: &BTreeMap<String, String>) -> String {
    versions
        .iter()
        .map(|(a, v)| format!("{a}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs one hook command, its output streamed to stderr as `[kind] line`, bounded by
/// [`timeout_from_env`].
pub async fn run(kind: HookKind, cmd: &str, env: &[(String, String)]) -> Result<(), HookError> {
    run_with(kind, cmd, env, timeout_from_env(), &mut |line| {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{line}");
    })
    .await
}

/// Runs every command of a hook in order; stops at the first failure.
pub async fn run_all(
    kind: HookKind,
    cmds: &[String],
    env: &[(String, String)],
) -> Result<(), HookError> {
    for cmd in cmds {
        run(kind, cmd, env).await?;
    }
    Ok(())
}

/// A hook's process group: stopped when dropped unless [`Group::done`] said nothing of it
/// can be left (fleet interrupted mid-hook leaves no hook behind either).
struct Group {
    pgid: Option<libc::pid_t>,
}

impl Group {
    fn alive(&self) -> bool {
        // SAFETY: kill with signal 0 only checks that the group exists.
        self.pgid.is_some_and(|g| unsafe { libc::kill(-g, 0) } == 0)
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(g) = self.pgid {
            // SAFETY: signals the hook's own process group (made with `process_group(0)`).
            unsafe { libc::kill(-g, sig) };
        }
    }

    /// Waits up to `limit` for the group to be gone, reaping the shell (a zombie still
    /// counts as the group's).
    async fn wait_gone(&self, shell: &mut tokio::process::Child, limit: Duration) {
        let until = Instant::now() + limit;
        while {
            let _ = shell.try_wait();
            self.alive()
        } && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then SIGKILL if any of the group is still there after a moment.
    async fn stop(&mut self, shell: &mut tokio::process::Child) {
        self.signal(libc::SIGTERM);
        self.wait_gone(shell, Duration::from_secs(2)).await;
        if self.alive() {
            self.signal(libc::SIGKILL);
            self.wait_gone(shell, Duration::from_secs(1)).await;
        }
        self.pgid = None;
    }

    /// The shell exited and the pipes closed: whatever is left of the group (output
    /// redirected elsewhere) is not ours to stop.
    fn done(&mut self) {
        self.pgid = None;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// Sends `pipe`'s lines (bytes up to `\n`, lossy UTF-8, `\r\n` trimmed) to `tx` until its end.
async fn read_lines(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let mut line: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    let send = |line: &mut Vec<u8>| {
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let text = String::from_utf8_lossy(line).into_owned();
        line.clear();
        tx.send(text).is_ok()
    };
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            line.push(b);
            if (b == b'\n' || line.len() >= MAX_LINE) && !send(&mut line) {
                // Nobody reads any more: keep draining so the writer never meets a closed
                // pipe.
                line.clear();
            }
        }
    }
    if !line.is_empty() {
        send(&mut line);
    }
}

/// `run`, handing each prefixed output line (stdout and stderr, in arrival order) to `out`;
/// the command is stopped after `timeout`.
pub async fn run_with(
    kind: HookKind,
    cmd: &str,
    env: &[(String, String)],
    timeout: Duration,
    out: &mut (dyn FnMut(String) + Send),
) -> Result<(), HookError> {
    let deadline = Instant::now() + timeout;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("FLEET_HOOK", kind.name())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HookError::Spawn {
            kind,
            command: cmd.to_string(),
            source,
        })?;
    let mut group = Group {
        pgid: child.id().map(|p| p as libc::pid_t),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut readers = Vec::new();
    let pipes: [Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as _),
        child.stderr.take().map(|p| Box::new(p) as _),
    ];
    for pipe in pipes.into_iter().flatten() {
        readers.push(tokio::spawn(read_lines(pipe, tx.clone())));
    }
    drop(tx);
    let prefix = format!("[{}] ", kind.name());
    let mut status = None;
    let mut closed = false;
    // Until the shell exits: the timeout; after: a moment for the pipes to close.
    let mut until = deadline;
    let mut timed_out = false;
    while status.is_none() || !closed {
        tokio::select! {
            line = rx.recv(), if !closed => match line {
                Some(line) => out(format!("{prefix}{line}")),
                None => closed = true,
            },
            st = child.wait(), if status.is_none() => {
                status = Some(st.map_err(|source| HookError::Spawn {
                    kind,
                    command: cmd.to_string(),
                    source,
                })?);
                until = deadline.min(Instant::now() + LINGER);
            }
            _ = tokio::time::sleep_until(until) => {
                timed_out = status.is_none();
                break;
            }
        }
    }
    if closed && status.is_some() {
        group.done();
    } else {
        // Past the deadline, or the shell exited and something it started holds the pipes.
        group.stop(&mut child).await;
        if !timed_out {
            out(format!(
                "{prefix}(the hook exited; stopped what it left running with its output open)"
            ));
        }
        if status.is_none() {
            status = child.wait().await.ok();
        }
        // What was written before the stop, without waiting for the pipes' end.
        for r in &readers {
            r.abort();
        }
        while let Ok(line) = rx.try_recv() {
            out(format!("{prefix}{line}"));
        }
    }
    if timed_out {
        return Err(HookError::TimedOut {
            kind,
            command: cmd.to_string(),
            after: timeout,
        });
    }
    match status.and_then(|s| s.code()) {
        Some(0) => Ok(()),
        Some(code) => Err(HookError::Failed {
            kind,
            command: cmd.to_string(),
            code,
        }),
        None => Err(HookError::Killed {
            kind,
            command: cmd.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn capture(
        kind: HookKind,
        cmd: &str,
        env: &[(String, String)],
    ) -> (Vec<String>, Result<(), HookError>) {
        let mut lines = Vec::new();
        let r = run_with(kind, cmd, env, Duration::from_secs(30), &mut |l| {
            lines.push(l)
        })
        .await;
        (lines, r)
    }

    #[tokio::test]
    async fn hooks_see_fleet_variables_and_output_is_prefixed() {
        let versions = BTreeMap::from([
            ("web".to_string(), "v2".to_string()),
            ("api".to_string(), "v1".to_string()),
        ]);
        let env = env_for("shop", "production", &versions, &["web".into()]);
        let (lines, r) = capture(
            HookKind::PreDeploy,
            "echo \"$FLEET_HOOK $FLEET_PROJECT $FLEET_ENV $FLEET_VERSION $FLEET_APPS\"; echo oops >&2",
            &env,
        )
        .await;
        r.unwrap();
        assert!(
            lines
                .contains(&"[pre_deploy] pre_deploy shop production api=v1,web=v2 web".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"[pre_deploy] oops".to_string()),
            "{lines:?}"
        );
    }

    #[tokio::test]
    async fn a_failing_hook_names_itself_and_its_exit_code() {
        let (lines, r) = capture(HookKind::PostDeploy, "echo bye; exit 3", &[]).await;
        assert_eq!(lines, vec!["[post_deploy] bye".to_string()]);
        let e = r.unwrap_err();
        assert!(matches!(e, HookError::Failed { code: 3, .. }));
        assert_eq!(
            e.to_string(),
            "the post_deploy hook `echo bye; exit 3` failed with exit code 3"
        );
    }

    #[tokio::test]
    async fn run_all_stops_at_the_first_failure() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let cmds = vec!["false".to_string(), format!("touch {}", marker.display())];
        let e = run_all(HookKind::PreDeploy, &cmds, &[]).await.unwrap_err();
        assert!(matches!(e, HookError::Failed { code: 1, .. }));
        assert!(
            !marker.exists(),
            "the second command ran after the first failed"
        );
    }

    #[tokio::test]
    async fn output_that_is_not_utf8_is_shown_lossily_and_read_to_the_end() {
        // Before: reading stopped at the bad line, and the hook died of SIGPIPE writing more.
        let (lines, r) = capture(
            HookKind::PreDeploy,
            "printf 'caf\\351\\n'; sleep 0.2; seq 1 20000; echo done >&2",
            &[],
        )
        .await;
        r.unwrap();
        assert_eq!(lines[0], "[pre_deploy] caf\u{fffd}");
        assert!(lines.contains(&"[pre_deploy] 20000".to_string()));
        assert!(lines.contains(&"[pre_deploy] done".to_string()));
        assert_eq!(lines.len(), 20002);
    }

    /// No such process, or a zombie (dead; reaped whenever its new parent gets to it).
    fn gone(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
        }
    }

    #[tokio::test]
    async fn a_background_child_holding_the_output_does_not_hold_the_hook() {
        let dir = tempfile::tempdir().unwrap();
        let pid = dir.path().join("pid");
        let t0 = std::time::Instant::now();
        let (lines, r) = capture(
            HookKind::PreDeploy,
            &format!(
                "(sleep 30; echo late) & echo $! > {}; echo started",
                pid.display()
            ),
            &[],
        )
        .await;
        r.unwrap();
        assert!(
            t0.elapsed() < LINGER + Duration::from_secs(3),
            "{:?}",
            t0.elapsed()
        );
        assert!(
            lines.contains(&"[pre_deploy] started".to_string()),
            "{lines:?}"
        );
        assert!(!lines.iter().any(|l| l.contains("late")));
        assert!(
            gone(&std::fs::read_to_string(&pid).unwrap()),
            "left running"
        );
        // A background job whose output goes elsewhere is not ours to stop.
        let (_, r) = capture(
            HookKind::PreDeploy,
            &format!("sleep 30 >/dev/null 2>&1 & echo $! > {}", pid.display()),
            &[],
        )
        .await;
        r.unwrap();
        let kept = std::fs::read_to_string(&pid).unwrap();
        assert!(!gone(&kept), "a detached background job was stopped");
        // SAFETY: ends the sleep this test started.
        unsafe { libc::kill(kept.trim().parse().unwrap(), libc::SIGKILL) };
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_stopped_with_everything_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid = dir.path().join("pid");
        let t0 = std::time::Instant::now();
        let mut lines = Vec::new();
        // Ignores SIGTERM, and a child of it holds the pipe too.
        let cmd = format!(
            "trap '' TERM; sleep 60 & echo $! > {}; echo begin; sleep 60",
            pid.display()
        );
        let r = run_with(
            HookKind::PostDeploy,
            &cmd,
            &[],
            Duration::from_secs(1),
            &mut |l| lines.push(l),
        )
        .await;
        let e = r.unwrap_err();
        assert!(matches!(e, HookError::TimedOut { .. }), "{e}");
        assert!(e.to_string().contains("did not finish within 1s"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
        assert_eq!(lines, vec!["[post_deploy] begin".to_string()]);
        assert!(
            gone(&std::fs::read_to_string(&pid).unwrap()),
            "left running"
        );
    }

    #[tokio::test]
    async fn a_killed_hook_is_not_a_success() {
        let (_, r) = capture(HookKind::PreDeploy, "kill -9 $$", &[]).await;
        assert!(matches!(r, Err(HookError::Killed { .. })), "{r:?}");
    }
}
