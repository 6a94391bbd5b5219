//! `pre_deploy` / `post_deploy` hooks: commands from the manifest, run on the machine fleet runs
//! on (not on the hosts), so they can use the same checkout, credentials and tools as the
//! person or CI job deploying. Each runs with `sh -c`; its output is streamed line by line with
//! a `[pre_deploy]` prefix to stderr (stdout stays clean for `--json`). A non-zero exit is an
//! error naming the hook, the command and the code: a failing `pre_deploy` stops the deploy
//! before anything changes.

use std::collections::BTreeMap;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

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

/// Runs one hook command, its output streamed to stderr as `[kind] line`.
pub async fn run(kind: HookKind, cmd: &str, env: &[(String, String)]) -> Result<(), HookError> {
    run_with(kind, cmd, env, &mut |line| {
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

/// `run`, handing each prefixed output line (stdout and stderr, in arrival order) to `out`.
pub async fn run_with(
    kind: HookKind,
    cmd: &str,
    env: &[(String, String)],
    out: &mut (dyn FnMut(String) + Send),
) -> Result<(), HookError> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("FLEET_HOOK", kind.name())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HookError::Spawn {
            kind,
            command: cmd.to_string(),
            source,
        })?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let pipes: [Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as _),
        child.stderr.take().map(|p| Box::new(p) as _),
    ];
    for pipe in pipes.into_iter().flatten() {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let prefix = format!("[{}] ", kind.name());
    while let Some(line) = rx.recv().await {
        out(format!("{prefix}{line}"));
    }
    let status = child.wait().await.map_err(|source| HookError::Spawn {
        kind,
        command: cmd.to_string(),
        source,
    })?;
    match status.code() {
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
        let r = run_with(kind, cmd, env, &mut |l| lines.push(l)).await;
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
    async fn a_killed_hook_is_not_a_success() {
        let (_, r) = capture(HookKind::PreDeploy, "kill -9 $$", &[]).await;
        assert!(matches!(r, Err(HookError::Killed { .. })), "{r:?}");
    }
}
