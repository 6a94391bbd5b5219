//! pm2 inside a container: is it there (`uses_pm2`), and what are its workers (`read_workers`:
//! `pm2 jlist` exec'd in the container, parsed by `parse_jlist`).
//!
//! A container counts as running pm2 when the app says `pm2 = true`, or, unless it says
//! `pm2 = false`, when its main process is `pm2-runtime` (a word of the inspect's `Path`,
//! `Args`, `Config.Entrypoint` or `Config.Cmd` whose file name is `pm2-runtime`, so
//! `sh -c "pm2-runtime start ..."` and `node_modules/.bin/pm2-runtime` count too). The workers
//! are read with the `pm2` next to that `pm2-runtime` (`node_modules/.bin/pm2` for
//! `node_modules/.bin/pm2-runtime`), else `pm2` on the image's `PATH`. The exec inherits the
//! container's environment, so pm2 finds the daemon of `pm2-runtime` under the same `HOME`
//! (`PM2_HOME`).
//!
//! `pm2 jlist` must never run before that daemon listens: the `pm2` CLI starts a daemon of its
//! own when it finds none (pm2's `Client.start`: `pingDaemon`, then `launchDaemon`), and when
//! it wins the race for `$PM2_HOME/rpc.sock`, `pm2-runtime` hangs after `Launching in no daemon
//! mode` and never starts a worker (seen on the testbed, about one start in a few hundred). So
//! the exec is `node -e NO_DAEMON_GUARD pm2 jlist` (`guarded`): node, which every pm2 image
//! has, runs `pm2 jlist` only when the socket is there, and else exits with `NO_DAEMON_EXIT`.

use std::time::Duration;

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::ContainerInspectResponse;
use futures_util::StreamExt;
use serde::Deserialize;

/// The longest a `pm2 jlist` may take (it starts a Node process in the container).
pub const JLIST_TIMEOUT: Duration = Duration::from_secs(10);

/// One pm2 process, from `pm2 jlist`.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    pub name: String,
    pub pm_id: u32,
    /// `None` when it has no process (pm2 lists pid 0: stopped, errored, between restarts).
    pub pid: Option<u32>,
    /// pm2's word: `online`, `launching`, `waiting restart`, `stopping`, `stopped`, `errored`,
    /// `one-launch-status`.
    pub status: String,
    /// pm2's restart count (`restart_time`).
    pub restarts: u64,
    /// Unix milliseconds of its last start (`pm_uptime`), when online.
    pub started_at_ms: Option<i64>,
    /// CPU % (100 = one core) and memory (RSS bytes) from pm2's `monit`, when online.
    pub cpu: Option<f64>,
    pub memory: Option<u64>,
}

impl Worker {
    pub fn is_online(&self) -> bool {
        self.status == "online"
    }

    /// pm2 gave up on it (`errored`: more unstable restarts than `max_restarts`) and will not
    /// start it again by itself. `stopped` is not that: pm2 also says it for a moment between
    /// a worker's exit and its restart (`handleExit` in pm2's `lib/God.js`).
    pub fn is_given_up(&self) -> bool {
        self.status == "errored"
    }

    /// `pm2 worker 1 (app)`, as messages name a worker.
    pub fn label(&self) -> String {
        format!("pm2 worker {} ({})", self.pm_id, self.name)
    }
}

/// Why the workers of a container could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Pm2Error {
    #[error("pm2 jlist: {0}")]
    Exec(String),
    #[error("pm2 jlist did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("pm2 jlist exited with code {code}: {output}")]
    Exit { code: i64, output: String },
    #[error("pm2 jlist printed no process list: {0}")]
    Parse(String),
    #[error("pm2 has not started its daemon yet: {0}")]
    NoDaemon(String),
}

/// The exit code of `NO_DAEMON_GUARD` when pm2's daemon socket is not there.
const NO_DAEMON_EXIT: i64 = 3;

/// A Node script: run the command in its arguments (`pm2 jlist`) if pm2's RPC socket exists
/// under the home pm2 uses (`PM2_HOME`, else `$HOME/.pm2`), else exit `NO_DAEMON_EXIT`.
const NO_DAEMON_GUARD: &str = r#"const fs = require('fs'), path = require('path');
const home = process.env.PM2_HOME || path.join(process.env.HOME || '/root', '.pm2');
const sock = path.join(home, 'rpc.sock');
let up = false;
try { up = fs.statSync(sock).isSocket(); } catch (e) {}
if (!up) { console.error('no ' + sock); process.exit(3); }
const r = require('child_process').spawnSync(process.argv[1], process.argv.slice(2), { stdio: 'inherit' });
if (r.error) { console.error(String(r.error.message || r.error)); process.exit(127); }
process.exit(r.status === null ? 1 : r.status);
"#;

/// `cmd` (from `jlist_command`) run by `NO_DAEMON_GUARD`.
fn guarded(cmd: &[String]) -> Vec<String> {
    ["node", "-e", NO_DAEMON_GUARD]
        .into_iter()
        .map(String::from)
        .chain(cmd.iter().cloned())
        .collect()
}

// What fleet reads of `pm2 jlist`'s answer; pm2 writes much more (the whole environment of
// each process among it), which serde skips.
#[derive(Deserialize)]
struct JlistProcess {
    name: String,
    pm_id: u32,
    #[serde(default)]
    pid: Option<u32>,
    pm2_env: JlistEnv,
    #[serde(default)]
    monit: Option<JlistMonit>,
}

#[derive(Deserialize)]
struct JlistEnv {
    status: String,
    #[serde(default)]
    restart_time: u64,
    #[serde(default)]
    pm_uptime: Option<i64>,
}

#[derive(Deserialize)]
struct JlistMonit {
    #[serde(default)]
    memory: Option<u64>,
    #[serde(default)]
    cpu: Option<f64>,
}

/// The workers in `pm2 jlist`'s output, in pm2's order. pm2 may print lines of its own before
/// the list (starting its daemon): the list is the last line that starts with `[`.
pub fn parse_jlist(text: &str) -> Result<Vec<Worker>, Pm2Error> {
    let json = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .ok_or_else(|| Pm2Error::Parse(one_line(text)))?;
    let list: Vec<JlistProcess> =
        serde_json::from_str(json).map_err(|e| Pm2Error::Parse(e.to_string()))?;
    Ok(list
        .into_iter()
        .map(|p| {
            let online = p.pm2_env.status == "online";
            let monit = p.monit.filter(|_| online);
            Worker {
                name: p.name,
                pm_id: p.pm_id,
                pid: p.pid.filter(|n| *n > 0),
                restarts: p.pm2_env.restart_time,
                started_at_ms: p.pm2_env.pm_uptime.filter(|_| online),
                cpu: monit.as_ref().and_then(|m| m.cpu),
                memory: monit.as_ref().and_then(|m| m.memory),
                status: p.pm2_env.status,
            }
        })
        .collect())
}

/// At most 200 characters of `text` on one line, for messages.
fn one_line(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let s = words.join(" ");
    if s.is_empty() {
        "(nothing)".into()
    } else {
        s.chars().take(200).collect()
    }
}

/// The `pm2-runtime` word among `words` (each split on whitespace), if any.
fn runtime_word<'a>(words: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    words
        .into_iter()
        .flat_map(str::split_whitespace)
        .find(|w| w.rsplit('/').next() == Some("pm2-runtime"))
}

/// The command that lists the workers of a container (`pm2 jlist`, with the `pm2` next to its
/// `pm2-runtime`), or `None` when the container is not read as running pm2. `setting` is the
/// app's `pm2` key.
pub fn jlist_command(i: &ContainerInspectResponse, setting: Option<bool>) -> Option<Vec<String>> {
    if setting == Some(false) {
        return None;
    }
    let cfg = i.config.as_ref();
    let words = i
        .path
        .iter()
        .chain(i.args.iter().flatten())
        .chain(
            cfg.and_then(|c| c.entrypoint.as_ref())
                .into_iter()
                .flatten(),
        )
        .chain(cfg.and_then(|c| c.cmd.as_ref()).into_iter().flatten())
        .map(String::as_str);
    let pm2 = match runtime_word(words) {
        Some(w) => format!("{}pm2", w.strip_suffix("pm2-runtime").unwrap_or("")),
        None if setting == Some(true) => "pm2".into(),
        None => return None,
    };
    Some(vec![pm2, "jlist".into()])
}

/// Run `cmd` (from `jlist_command`, `guarded`) in running container `id` and parse what it
/// prints.
pub async fn read_workers(
    docker: &Docker,
    id: &str,
    cmd: &[String],
) -> Result<Vec<Worker>, Pm2Error> {
    let run = async {
        let err = |e: bollard::errors::Error| Pm2Error::Exec(crate::errors::chain(&e));
        let exec = docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(guarded(cmd)),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(err)?;
        let started = docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(err)?;
        let (mut out, mut errs) = (Vec::new(), Vec::new());
        if let StartExecResults::Attached { mut output, .. } = started {
            use bollard::container::LogOutput;
            while let Some(item) = output.next().await {
                match item.map_err(err)? {
                    LogOutput::StdErr { message } => errs.extend_from_slice(&message),
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        out.extend_from_slice(&message)
                    }
                    LogOutput::StdIn { .. } => {}
                }
            }
        }
        let code = docker
            .inspect_exec(&exec.id)
            .await
            .map_err(err)?
            .exit_code
            .unwrap_or(0);
        let out = String::from_utf8_lossy(&out);
        if code != 0 {
            let errs = String::from_utf8_lossy(&errs);
            let output = one_line(if errs.trim().is_empty() { &out } else { &errs });
            return Err(if code == NO_DAEMON_EXIT {
                Pm2Error::NoDaemon(output)
            } else {
                Pm2Error::Exit { code, output }
            });
        }
        parse_jlist(&out)
    };
    tokio::time::timeout(JLIST_TIMEOUT, run)
        .await
        .unwrap_or(Err(Pm2Error::Timeout(JLIST_TIMEOUT)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from a koa container on the testbed (`docker exec C pm2 jlist`), with
    /// CRASH_WORKER=1: worker 1 exits at start until pm2 gives up.
    const ERRORED: &str = include_str!("fixtures/pm2-jlist-errored.json");
    /// The same app, both workers up, after worker 1 crashed once (`GET /crash`).
    const RESTARTED: &str = include_str!("fixtures/pm2-jlist-restarted.json");

    #[test]
    fn a_real_jlist_parses_into_workers() {
        let w = parse_jlist(ERRORED).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(
            w[0],
            Worker {
                name: "app".into(),
                pm_id: 0,
                pid: Some(16),
                status: "online".into(),
                restarts: 0,
                started_at_ms: Some(1_796_486_368_130),
                cpu: Some(1.1),
                memory: Some(61_530_112),
            }
        );
        assert_eq!(
            w[1],
            Worker {
                name: "app".into(),
                pm_id: 1,
                pid: None,
                status: "errored".into(),
                restarts: 15,
                started_at_ms: None,
                cpu: None,
                memory: None,
            }
        );
        assert!(w[1].is_given_up() && !w[1].is_online());
        assert_eq!(w[1].label(), "pm2 worker 1 (app)");

        let w = parse_jlist(RESTARTED).unwrap();
        assert!(w.iter().all(Worker::is_online));
        assert_eq!(
            w.iter().map(|w| (w.pm_id, w.restarts)).collect::<Vec<_>>(),
            [(0, 0), (1, 1)]
        );
    }

    #[test]
    fn lines_before_the_list_are_skipped_and_no_list_is_an_error() {
        let text = format!("[PM2] Spawning PM2 daemon with pm2_home=/tmp/.pm2\n{RESTARTED}");
        assert_eq!(parse_jlist(&text).unwrap().len(), 2);
        assert_eq!(parse_jlist("[]\n").unwrap(), vec![]);
        assert_eq!(
            parse_jlist("sh: pm2: not found\n"),
            Err(Pm2Error::Parse("sh: pm2: not found".into()))
        );
        assert!(matches!(
            parse_jlist("[{\"name\": 1}]"),
            Err(Pm2Error::Parse(_))
        ));
    }

    fn inspect(path: &str, args: &[&str]) -> ContainerInspectResponse {
        let mut i = ContainerInspectResponse {
            path: Some(path.into()),
            args: Some(args.iter().map(|a| a.to_string()).collect()),
            ..Default::default()
        };
        i.config = Some(bollard::models::ContainerConfig {
            cmd: Some(
                std::iter::once(path)
                    .chain(args.iter().copied())
                    .map(str::to_string)
                    .collect(),
            ),
            ..Default::default()
        });
        i
    }

    /// The guard as the container's node runs it (this machine's node: CI installs it for
    /// manifests/koa): no socket, no `pm2` run; a listening socket, the command runs.
    #[test]
    fn the_guard_runs_pm2_only_once_its_daemon_listens() {
        use std::process::Command;
        let home = std::env::temp_dir().join(format!("fleet-pm2-guard-{}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        let run = || {
            let cmd = guarded(&["echo".into(), "jlist".into()]);
            Command::new(&cmd[0])
                .args(&cmd[1..])
                .env("PM2_HOME", &home)
                .output()
                .expect("node on PATH")
        };
        let o = run();
        assert_eq!(o.status.code(), Some(NO_DAEMON_EXIT as i32));
        assert!(o.stdout.is_empty());
        let sock = std::os::unix::net::UnixListener::bind(home.join("rpc.sock")).unwrap();
        let o = run();
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        assert_eq!(String::from_utf8_lossy(&o.stdout), "jlist\n");
        drop(sock);
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn pm2_runtime_is_found_in_the_main_process_and_the_key_decides_first() {
        let koa = inspect(
            "pm2-runtime",
            &["start", "ecosystem.json", "--env", "docker"],
        );
        let jlist = |c: &[&str]| Some(c.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(jlist_command(&koa, None), jlist(&["pm2", "jlist"]));
        assert_eq!(jlist_command(&koa, Some(true)), jlist(&["pm2", "jlist"]));
        assert_eq!(jlist_command(&koa, Some(false)), None);
        let shell = inspect("/bin/sh", &["-c", "exec pm2-runtime start app.js"]);
        assert_eq!(jlist_command(&shell, None), jlist(&["pm2", "jlist"]));
        let bin = inspect(
            "node",
            &["node_modules/.bin/pm2-runtime", "start", "app.js"],
        );
        assert_eq!(
            jlist_command(&bin, None),
            jlist(&["node_modules/.bin/pm2", "jlist"])
        );
        let plain = inspect("node", &["./app.js"]);
        assert_eq!(jlist_command(&plain, None), None);
        assert_eq!(jlist_command(&plain, Some(true)), jlist(&["pm2", "jlist"]));
        // A name that only contains the word is not pm2-runtime.
        let other = inspect("my-pm2-runtime-wrapper", &[]);
        assert_eq!(jlist_command(&other, None), None);
    }
}
