//! Faults in the middle of a deploy, on the testbed (issue 15): h2's link cut while it pulls,
//! starts or drains; h2's dockerd killed, its Consul agent stopped; the registry down; h2 slow.
//! Each test deploys v1 of its own hello project to h1..h3, starts a v2 deploy, injects the
//! fault when fleet's progress line says the moment has come, and checks:
//!
//! - the report names the fault plainly, within 15 s of it (`FLEET_SSH_KEEPALIVE=1` here:
//!   a silent host is lost after 4 s; the default, 3 s, gives 12 s);
//! - a probe that looks every instance up in the cluster's catalog, as a client would, and calls
//!   it, never fails and never finds h1 or h3 without a passing instance;
//! - once the fault clears, one deploy converges: one container per instance, the new version,
//!   and `fleet plan --detailed-exitcode` exits 0.
//!
//! The faults touch the shared testbed (a cut link, a killed daemon), so these tests have it to
//! themselves (`Testbed::exclusive`), and each guard puts the testbed back when dropped, failed
//! test or not.

use crate::support;
use crate::support::project;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use project::{Agents, Project, containers, text};
use support::{LinkCut, Run, Testbed};

/// Runs `sh -c script` here (the outer namespace); panics when it fails.
fn sh(script: &str) {
    let o = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Traffic towards `host` limited to `rate` (a token bucket on the outer end of its veth), so
/// a pull takes seconds. Removed when dropped.
struct Throttle(String);

impl Throttle {
    fn new(host: &str, rate: &str) -> Throttle {
        let veth = format!("fleet-{host}");
        sh(&format!(
            "tc qdisc replace dev {veth} root tbf rate {rate} burst 16kb latency 200ms"
        ));
        Throttle(veth)
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        let _ = Command::new("tc")
            .args(["qdisc", "del", "dev", &self.0, "root"])
            .status();
    }
}

/// A testbed daemon killed with SIGKILL, to be started again exactly as it ran: the same
/// command line, in the same namespaces (those of the host's sshd, which the daemon shared),
/// logging where it logged. `restart` is explicit; dropping a `Killed` restarts it too.
struct Killed {
    argv: Vec<String>,
    /// `nsenter` options joining the host, or none for a daemon of the outer namespace.
    enter: Vec<String>,
    log: PathBuf,
    pidfile: PathBuf,
    /// Docker writes its own pid file.
    write_pid: bool,
    restarted: bool,
}

fn pid_in(file: &Path) -> u32 {
    std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .parse()
        .unwrap()
}

impl Killed {
    /// Kills the daemon whose pid is in `pidfile`; `host`: the testbed host it runs in.
    fn kill(tb: &Testbed, pidfile: PathBuf, log: PathBuf, host: Option<&str>) -> Killed {
        let pid = pid_in(&pidfile);
        let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let enter = match host {
            Some(h) => {
                let sshd = pid_in(&tb.dir.join(h).join("run/sshd.pid"));
                vec![
                    format!("--net=/var/run/netns/{h}"),
                    format!("--mount=/proc/{sshd}/ns/mnt"),
                    format!("--uts=/proc/{sshd}/ns/uts"),
                ]
            }
            None => Vec::new(),
        };
        let write_pid = !argv[0].ends_with("dockerd");
        sh(&format!("kill -KILL {pid}"));
        let t0 = Instant::now();
        while Path::new(&format!("/proc/{pid}/stat")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false)
        {
            assert!(t0.elapsed() < Duration::from_secs(10), "{pid} did not die");
            std::thread::sleep(Duration::from_millis(50));
        }
        Killed {
            argv,
            enter,
            log,
            pidfile,
            write_pid,
            restarted: false,
        }
    }

    fn restart(&mut self) {
        use std::os::unix::process::CommandExt;
        if self.restarted {
            return;
        }
        self.restarted = true;
        let log = || {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&self.log)
                .unwrap()
        };
        if !self.write_pid {
            // dockerd refuses to start while its pid file names a live process, and a killed
            // daemon whose parent (`cargo xtask ci`) still runs stays a zombie until then.
            let _ = std::fs::remove_file(&self.pidfile);
        }
        let mut cmd = if self.enter.is_empty() {
            Command::new(&self.argv[0])
        } else {
            let mut c = Command::new("nsenter");
            c.args(&self.enter).arg("--").arg(&self.argv[0]);
            c
        };
        // A daemon of the testbed: it outlives this test, never waited for (as `testbed up`
        // starts it).
        #[allow(clippy::zombie_processes)]
        let child = cmd
            .args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(log())
            .stderr(log())
            .process_group(0)
            .spawn()
            .unwrap();
        // nsenter execs the daemon: the same pid.
        if self.write_pid {
            std::fs::write(&self.pidfile, format!("{}\n", child.id())).unwrap();
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.restart();
    }
}

/// Waits until `ok()` or panics naming `what`.
fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < within, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A client of the `watched` hosts: looks up the project's passing instances in the cluster's
/// catalog, as a load balancer would, and calls each, until stopped.
struct Probe {
    done: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl Probe {
    async fn start(tb: &Testbed, project: &str, watched: &[&str]) -> Probe {
        let agents = Agents::open_hosts(tb, watched).await;
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let project = project.to_string();
        let task = tokio::spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                for (node, list) in agents
                    .nodes
                    .clone()
                    .iter()
                    .zip(agents.passing(&project).await)
                {
                    if list.is_empty() {
                        failed.push(format!("{node}: no passing instance"));
                    }
                    for (addr, port, _) in list {
                        match agents.get(&addr, port).await {
                            Ok(_) => ok += 1,
                            Err(e) => failed.push(format!("{node} {addr}:{port}: {e}")),
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            agents.close().await;
            (ok, failed)
        });
        Probe { done, task }
    }

    /// Stops the probe; panics if any request failed or a host had nothing passing.
    async fn check(self) {
        self.done.store(true, Ordering::SeqCst);
        let (ok, failed) = self.task.await.unwrap();
        assert!(
            failed.is_empty(),
            "{} failed probes ({ok} ok): {failed:?}",
            failed.len()
        );
        assert!(ok > 5, "the probe barely ran ({ok} requests)");
    }
}

/// The fault tests' project: hello, v1 deployed on h1..h3; its v2 built and pushed.
struct Story<'a> {
    tb: &'a Testbed,
    p: Project,
    v1: String,
    v2: String,
    before: Vec<Vec<(String, String)>>,
}

impl<'a> Story<'a> {
    fn new(tb: &'a Testbed, prefix: &str, v2: impl FnOnce(&Project)) -> Story<'a> {
        let p = Project::named(tb, prefix);
        p.set_version("v1");
        let v1 = p.tag();
        let o = p.run(tb, &["deploy", "production", "--yes"]);
        assert!(o.status.success(), "v1: {}", text(&o));
        p.set_version("v2");
        v2(&p);
        let v2 = p.tag();
        let o = p.run(tb, &["build", "--push"]);
        assert!(o.status.success(), "build v2: {}", text(&o));
        let before = tb
            .hosts
            .iter()
            .map(|h| containers(tb, &h.name, &p.name))
            .collect();
        Story {
            tb,
            p,
            v1,
            v2,
            before,
        }
    }

    fn containers(&self) -> Vec<Vec<(String, String)>> {
        self.tb
            .hosts
            .iter()
            .map(|h| containers(self.tb, &h.name, &self.p.name))
            .collect()
    }

    /// `fleet deploy production --yes --no-build --json ARGS`, in the background, with
    /// `FLEET_SSH_KEEPALIVE=keepalive`.
    fn deploy(&self, keepalive: &str, args: &[&str]) -> Run {
        let mut a = vec!["deploy", "production", "--yes", "--no-build", "--json"];
        a.extend_from_slice(args);
        let mut cmd = self.p.fleet(self.tb, &a);
        cmd.env("FLEET_SSH_KEEPALIVE", keepalive);
        Run::start(cmd)
    }

    /// After the fault cleared: one deploy converges on `version`, one container per instance,
    /// and the plan has nothing left to do.
    fn converges(&self, version: &str) {
        let o = self
            .p
            .run(self.tb, &["deploy", "production", "--yes", "--no-build"]);
        assert!(o.status.success(), "converging deploy: {}", text(&o));
        for (h, c) in self.tb.hosts.iter().zip(self.containers()) {
            assert_eq!(c.len(), 1, "{}: one container per instance: {c:?}", h.name);
            assert_eq!(c[0].1, version, "{}: {c:?}", h.name);
        }
        let o = self
            .p
            .run(self.tb, &["plan", "production", "--detailed-exitcode"]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "plan after converging: {}",
            text(&o)
        );
    }
}

/// The report (`--json`) of a failed deploy and its one failure on `host`.
fn failed_on(status: ExitStatus, out: &str, host: &str) -> (serde_json::Value, serde_json::Value) {
    assert_eq!(status.code(), Some(1), "the deploy must fail: {out}");
    let report: serde_json::Value =
        serde_json::from_str(out).unwrap_or_else(|e| panic!("--json report: {e}: {out}"));
    let f = report["failures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["host"] == host)
        .unwrap_or_else(|| panic!("no failure on {host}: {report:#}"))
        .clone();
    (report, f)
}

/// When the line saying `needle` came.
fn line_at(lines: &[(Instant, String)], needle: &str) -> Instant {
    lines
        .iter()
        .find(|(_, l)| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}: {lines:#?}"))
        .0
}

/// A progress line of `host` (lines are `<time> <host>  <message>`) containing `what`.
fn says(line: &str, host: &str, what: &str) -> bool {
    line.split_whitespace().nth(1) == Some(host) && line.contains(what)
}

/// Cut h2's link at the moment its progress line says `moment`; the report names the lost
/// connection and `doing`; h1 and h3 keep serving and end on v1 (`pulled_only`: nothing
/// changed anywhere) or are rolled back to it.
async fn link_cut(
    tb: Testbed,
    prefix: &str,
    moment: &str,
    doing: &str,
    drain: &str,
    pulled_only: bool,
) {
    let big = pulled_only;
    let s = Story::new(&tb, prefix, |p| {
        if big {
            // A layer of its own, big enough that a throttled pull takes a while.
            let blob: Vec<u8> = (0..3_000_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            std::fs::write(p.root.join("app/blob"), blob).unwrap();
            let df = p.root.join("app/Dockerfile");
            let d = std::fs::read_to_string(&df).unwrap();
            std::fs::write(
                df,
                d.replace("COPY start.sh", "COPY blob /app/\nCOPY start.sh"),
            )
            .unwrap();
        }
    });
    let _cleanup = s.p.cleanup(&tb);
    let _throttle = pulled_only.then(|| Throttle::new("h2", "1mbit"));
    let probe = Probe::start(&tb, &s.p.name, &["h1", "h3"]).await;
    let mut run = s.deploy("1", &["--drain", drain]);
    run.wait_line(Duration::from_secs(60), |l| says(l, "h2", moment));
    let cut = LinkCut::cut("h2");
    let t_cut = Instant::now();
    let (status, out, lines) = run.finish(Duration::from_secs(90));
    probe.check().await;
    let (report, f) = failed_on(status, &out, "h2");
    assert_eq!(f["fault"], "connection-lost", "{report:#}");
    let reason = f["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("connection lost while ")
            && reason.contains(doing)
            && reason.ends_with("(10.200.2.2)"),
        "{reason}"
    );
    let noticed = line_at(&lines, "FAILED: connection lost") - t_cut;
    assert!(
        noticed < Duration::from_secs(15),
        "the lost host was noticed after {noticed:?}"
    );
    // h2 is still cut off: read h1 and h3.
    if pulled_only {
        for (i, h) in [(0, "h1"), (2, "h3")] {
            let c = containers(&tb, h, &s.p.name);
            assert_eq!(c, s.before[i], "a fault while pulling changed {h}");
        }
        assert!(report["steps"].as_array().unwrap().is_empty(), "{report:#}");
    } else {
        rolled_back(&tb, &s, &report);
    }
    drop(cut);
    if pulled_only {
        assert_eq!(s.containers()[1], s.before[1], "h2 changed while pulling");
    }
    s.converges(&s.v2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_link_cut_while_pulling_changes_nothing() {
    let Some(tb) = Testbed::exclusive("e2e_link_cut_while_pulling_changes_nothing") else {
        return;
    };
    link_cut(tb, "fcp", "pull ", "while pulling ", "2s", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_link_cut_while_starting_rolls_the_others_back() {
    let Some(tb) = Testbed::exclusive("e2e_link_cut_while_starting_rolls_the_others_back") else {
        return;
    };
    link_cut(
        tb,
        "fcs",
        "hello#1 replace",
        "starting hello#1",
        "2s",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_link_cut_while_draining_rolls_the_others_back() {
    let Some(tb) = Testbed::exclusive("e2e_link_cut_while_draining_rolls_the_others_back") else {
        return;
    };
    // Noticed in the drain or when stopping the old container right after it.
    link_cut(
        tb,
        "fcd",
        "draining the old container",
        "the old container of hello#1",
        "3s",
        false,
    )
    .await;
}

/// h1 and h3 back on v1, each with one container.
fn rolled_back(tb: &Testbed, s: &Story, report: &serde_json::Value) {
    for h in ["h1", "h3"] {
        let c = containers(tb, h, &s.p.name);
        assert_eq!(c.len(), 1, "{h}: {c:?}");
        assert_eq!(c[0].1, s.v1, "{h} is rolled back to v1: {report:#}");
    }
}

/// h2's `daemon` (`docker` or `consul`, by its pid file) SIGKILLed when h2's instance starts:
/// the failure is `fault`, its reason starts with `says` and comes well before the 10 s
/// health deadline; h1 and h3 are rolled back. Once the daemon runs again (`ready` answers on
/// h2), a deploy converges.
async fn daemon_killed(
    tb: &Testbed,
    prefix: &str,
    daemon: &str,
    fault: &str,
    says_: &str,
    ready: &str,
) {
    let s = Story::new(tb, prefix, |_| {});
    let _cleanup = s.p.cleanup(tb);
    let probe = Probe::start(tb, &s.p.name, &["h1", "h3"]).await;
    let mut run = s.deploy("1", &[]);
    run.wait_line(Duration::from_secs(60), |l| {
        says(l, "h2", "hello#1 replace")
    });
    let log = if daemon == "docker" {
        "dockerd"
    } else {
        daemon
    };
    let mut killed = Killed::kill(
        tb,
        tb.dir.join(format!("h2/run/{daemon}.pid")),
        tb.dir.join(format!("h2/{log}.log")),
        Some("h2"),
    );
    let t_kill = Instant::now();
    let (status, out, lines) = run.finish(Duration::from_secs(90));
    probe.check().await;
    let (report, f) = failed_on(status, &out, "h2");
    assert_eq!(f["fault"], fault, "{report:#}");
    let reason = f["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("{says_} while starting hello#1 (10.200.2.2)")),
        "{reason}"
    );
    let noticed = line_at(&lines, &format!("FAILED: {says_}")) - t_kill;
    assert!(
        noticed < Duration::from_secs(8),
        "noticed after {noticed:?}"
    );
    rolled_back(tb, &s, &report);
    killed.restart();
    wait_until(
        &format!("h2's {daemon} answers again"),
        Duration::from_secs(60),
        || tb.ssh("h2", ready).status.success(),
    );
    s.converges(&s.v2);
}

/// h2's dockerd SIGKILLed while its instance starts: the engine is named at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_a_killed_engine_is_named_and_the_next_deploy_converges() {
    let Some(tb) = Testbed::exclusive("e2e_a_killed_engine_is_named_and_the_next_deploy_converges")
    else {
        return;
    };
    let says_ = "the Docker engine stopped answering";
    daemon_killed(
        &tb,
        "fke",
        "docker",
        "engine-down",
        says_,
        "docker info >/dev/null",
    )
    .await;
}

/// h2's Consul agent stopped while its instance starts: named at once, not at the health
/// deadline. The agent keeps its services across the restart, as Consul's agents do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_a_stopped_agent_is_named_and_the_next_deploy_converges() {
    let Some(tb) = Testbed::exclusive("e2e_a_stopped_agent_is_named_and_the_next_deploy_converges")
    else {
        return;
    };
    let says_ = "the Consul agent stopped answering";
    let ready = "curl -sf http://127.0.0.1:8500/v1/agent/self >/dev/null";
    daemon_killed(&tb, "fka", "consul", "agent-down", says_, ready).await;
}

/// The registry down: the deploy fails before any host changes (every image is pulled on
/// every host first), naming the image and the registry; KV and containers are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_a_registry_that_is_down_fails_the_deploy_before_any_host_changes() {
    let Some(tb) =
        Testbed::exclusive("e2e_a_registry_that_is_down_fails_the_deploy_before_any_host_changes")
    else {
        return;
    };
    let s = Story::new(&tb, "frd", |p| {
        p.edit(|t| t.replace("greeting = \"hello\"", "greeting = \"hi\""));
    });
    let _cleanup = s.p.cleanup(&tb);
    let probe = Probe::start(&tb, &s.p.name, &["h1", "h2", "h3"]).await;
    let mut registry = Killed::kill(
        &tb,
        tb.dir.join("registry.pid"),
        tb.dir.join("registry.log"),
        None,
    );
    let (status, out, _) = s.deploy("1", &[]).finish(Duration::from_secs(90));
    probe.check().await;
    let (report, f) = failed_on(status, &out, "h1");
    let reason = f["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "pulling {}/{}/hello:{}",
            tb.registry, s.p.name, s.v2
        )) && reason.contains("nothing was changed on any host"),
        "{reason}"
    );
    assert!(report["steps"].as_array().unwrap().is_empty(), "{report:#}");
    assert_eq!(report["kv"]["put"], 0, "KV changed: {report:#}");
    assert_eq!(s.containers(), s.before, "a host changed");
    registry.restart();
    wait_until(
        "the registry answers again",
        Duration::from_secs(30),
        || std::net::TcpStream::connect(&tb.registry).is_ok(),
    );
    s.converges(&s.v2);
}

/// h2 goes silent for 5 s (its sshd stopped, then continued: the kernel here has no netem)
/// while `--parallel 2` works on 3 hosts: h1 finishes, h3 starts only then (never 3 at once)
/// and finishes while h2 is still stuck; h2 finishes after; the deploy succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_a_slow_host_holds_only_its_own_slot() {
    let Some(tb) = Testbed::exclusive("e2e_a_slow_host_holds_only_its_own_slot") else {
        return;
    };
    let s = Story::new(&tb, "fsl", |_| {});
    let _cleanup = s.p.cleanup(&tb);
    let probe = Probe::start(&tb, &s.p.name, &["h1", "h3"]).await;
    // The default keepalive (3 s: lost after 12 s) outlasts the 5 s stall.
    let mut run = s.deploy("3", &["--parallel", "2"]);
    run.wait_line(Duration::from_secs(60), |l| {
        says(l, "h2", "hello#1 replace")
    });
    let sshd: Vec<String> = String::from_utf8(
        Command::new("ip")
            .args(["netns", "pids", "h2"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .lines()
    .filter(|p| {
        std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sshd")
    })
    .map(str::to_string)
    .collect();
    assert!(!sshd.is_empty(), "no sshd in h2");
    sh(&format!("kill -STOP {}", sshd.join(" ")));
    std::thread::sleep(Duration::from_secs(5));
    sh(&format!("kill -CONT {}", sshd.join(" ")));
    let (status, out, lines) = run.finish(Duration::from_secs(90));
    probe.check().await;
    assert!(status.success(), "{out}\n{lines:#?}");
    let done = |h: &str| line_at(&lines, &format!("{h:>6}  hello#1 replaced"));
    let began = |h: &str| line_at(&lines, &format!("{h:>6}  hello#1 replace "));
    assert!(
        began("h3") >= done("h1"),
        "h3 started before a slot was free (--parallel 2): {lines:#?}"
    );
    assert!(
        done("h3") < done("h2"),
        "the slow host held the others back: {lines:#?}"
    );
    s.converges(&s.v2);
}

/// A deploy of a version that fails its health check is killed (SIGKILL) while it waits for
/// the new containers: each host is left with the old container (serving) and an unproven new
/// one. The next deploy of that version health-gates the leftover, finds it failing, and keeps
/// the old one: it is never removed for the unproven one, and a client never misses a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_an_unhealthy_leftover_is_never_promoted() {
    let Some(tb) = Testbed::exclusive("e2e_an_unhealthy_leftover_is_never_promoted") else {
        return;
    };
    let s = Story::new(&tb, "fup", |p| {
        p.break_health();
        p.edit(|t| t.replace("deadline = \"10s\"", "deadline = \"60s\""));
    });
    let _cleanup = s.p.cleanup(&tb);
    let probe = Probe::start(&tb, &s.p.name, &["h1", "h2", "h3"]).await;
    let mut run = s.deploy("1", &[]);
    for h in ["h1", "h2", "h3"] {
        run.wait_line(Duration::from_secs(60), |l| says(l, h, "hello#1 replace"));
    }
    wait_until(
        "a new container beside the old on every host",
        Duration::from_secs(30),
        || s.containers().iter().all(|c| c.len() == 2),
    );
    run.child.kill().unwrap(); // SIGKILL: no rollback
    let _ = run.finish(Duration::from_secs(10));
    let o = s.p.run(&tb, &["lock", "release", "production", "--yes"]);
    assert!(o.status.success(), "{}", text(&o));
    // The manifest still says v2; its deadline back to 10 s.
    s.p.edit(|t| t.replace("deadline = \"60s\"", "deadline = \"10s\""));
    let (status, out, _) = s.deploy("1", &[]).finish(Duration::from_secs(90));
    probe.check().await;
    let (report, f) = failed_on(status, &out, "h1");
    assert!(f.get("fault").is_none(), "{report:#}");
    let reason = f["reason"].as_str().unwrap();
    assert!(
        reason.contains("health check failed") && reason.contains("keeps serving"),
        "{reason}"
    );
    // Every host converged its slot at once, each fell back: the old container alone, and
    // its registration alone (the leftover's, made by the failed gate, is gone too).
    for (h, c) in tb.hosts.iter().zip(s.containers()) {
        assert_eq!(c.len(), 1, "{}: {c:?}", h.name);
        assert_eq!(c[0].1, s.v1, "{}: the old container was removed", h.name);
    }
    let agents = Agents::open(&tb).await;
    let regs = agents.all(&s.p.name).await;
    agents.close().await;
    assert_eq!(regs.len(), 3, "{regs:?}");
    assert!(regs.iter().all(|(_, v)| v.contains(&s.v1)), "{regs:?}");
    // A good version converges everything, leftovers included.
    s.p.set_version("v3");
    let path = s.p.root.join("app/start.sh");
    let start = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        start.replace(
            "echo 'no health file today' >&2",
            "$b cp /app/www/health /www/health",
        ),
    )
    .unwrap();
    let v3 = s.p.tag();
    let o = s.p.run(&tb, &["build", "--push"]);
    assert!(o.status.success(), "{}", text(&o));
    s.converges(&v3);
}
