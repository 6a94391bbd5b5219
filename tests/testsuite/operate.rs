//! Issue 8 acceptance, through the real binary on the testbed: `fleet logs`, `status` (table and
//! JSON), `info`, `restart` / `stop` / `start`, `exec`, `destroy` (then `plan` is all create).
//!
//! Each test uses a project of its own (`optest...`), so other users of the shared testbed never
//! see its containers, and removes what it started (`fleet destroy`, also after a failure).
//! Instances are started by `support::operate::start_instances` the way `apply` will.

use crate::support;
use crate::support::operate as operate_support;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet::operate::status::{Presence, StatusDoc};
use operate_support as ops;
use support::Testbed;

const SECRET: &str = "optest-s3cret-v4lue-never-printed";

/// A test's own project: a manifest in a temp dir, cleaned with `fleet destroy` on drop.
struct Project {
    tb: Testbed,
    name: String,
    dir: tempfile::TempDir,
}

impl Project {
    fn new(tb: Testbed, test: &str, hosts: &[&'static str], apps: &str) -> Project {
        let name = format!("optest{}{}", std::process::id(), test);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("fleet.toml"),
            ops::manifest(&tb, &name, hosts, apps),
        )
        .unwrap();
        Project { tb, name, dir }
    }

    fn manifest(&self) -> PathBuf {
        self.dir.path().join("fleet.toml")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.tb.fleet();
        c.arg("-f")
            .arg(self.manifest())
            .args(args)
            .env("OPTEST_SECRET", SECRET)
            .stdin(Stdio::null());
        c
    }

    /// Run fleet; (exit code, stdout, stderr). Fails the test if the secret ever shows.
    fn fleet(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.cmd(args).output().expect("run fleet");
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        );
        assert!(
            !o.contains(SECRET) && !e.contains(SECRET),
            "secret printed by {args:?}"
        );
        (out.status.code().unwrap_or(-1), o, e)
    }

    async fn start(&self, entrypoints: &[(&str, &[&str])]) {
        // SAFETY: tests in this file only read this variable; it is set before any thread reads.
        unsafe { std::env::set_var("OPTEST_SECRET", SECRET) };
        let d = ops::resolve(&self.manifest(), "test");
        ops::start_instances(&self.tb, &d, entrypoints).await;
    }

    fn status(&self) -> StatusDoc {
        let (code, out, err) = self.fleet(&["status", "test", "--json"]);
        assert_eq!(code, 0, "{out}\n{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}\n{out}"))
    }
}

impl Drop for Project {
    /// `OPTEST_KEEP=1` leaves the project running (and its manifest on disk) to look at by hand;
    /// remove it later with `fleet -f <manifest> destroy test --yes`.
    fn drop(&mut self) {
        if std::env::var_os("OPTEST_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!(
                "OPTEST_KEEP: kept {}",
                dir.keep().join("fleet.toml").display()
            );
            return;
        }
        ops::destroy_quietly(&self.tb, &self.manifest());
    }
}

const SH: &[&str] = &["/bin/busybox", "sh"];

/// Counts lines equal to `line`.
fn count(out: &str, line: &str) -> usize {
    out.lines().filter(|l| *l == line).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_keep_streams_apart_marked_merged_and_followed() {
    let Some(tb) = Testbed::get("logs_keep_streams_apart") else {
        return;
    };
    let p = Project::new(
        tb,
        "logs",
        &["h1", "h2"],
        r#"
[apps.talker]
image = "10.200.1.1:5000/fleet-test/hello:v1"
roles = ["web"]
command = ["-c", "i=0; while [ $i -lt 500 ]; do i=$((i+1)); echo out-$i; echo err-$i >&2; /bin/busybox sleep 0.2; done; /bin/busybox sleep 3600"]
"#,
    );
    p.start(&[("talker", SH)]).await;
    std::thread::sleep(Duration::from_secs(2));

    let (code, out, err) = p.fleet(&["logs", "test"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for h in ["h1", "h2"] {
        for n in 1..=5 {
            assert_eq!(
                count(&out, &format!("talker#1@{h} (out): out-{n}")),
                1,
                "{out}"
            );
            assert_eq!(
                count(&out, &format!("talker#1@{h} (err): err-{n}")),
                1,
                "{out}"
            );
        }
    }
    assert!(
        !out.contains("(out): err-") && !out.contains("(err): out-"),
        "a line under the wrong mark:\n{out}"
    );
    // Merged by time across hosts: the engine's timestamps never go back.
    let (code, stamped, _) = p.fleet(&["logs", "test", "--timestamps"]);
    assert_eq!(code, 0);
    let times: Vec<i128> = stamped
        .lines()
        .map(|l| fleet::operate::logs::parse_time(l.split(' ').next().unwrap()).unwrap())
        .collect();
    assert!(times.len() >= 20, "{stamped}");
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "not merged by time:\n{stamped}"
    );
    assert!(stamped.contains(" talker#1@h2 (err): err-1"), "{stamped}");

    let (code, errs, _) = p.fleet(&["logs", "test", "talker", "--stream", "err"]);
    assert_eq!(code, 0);
    assert!(errs.contains("talker#1@h1 (err): err-1"), "{errs}");
    assert!(
        !errs.contains("(out)"),
        "--stream err printed stdout:\n{errs}"
    );

    let (code, tail, _) = p.fleet(&[
        "logs", "test", "--host", "h2", "--tail", "2", "--stream", "out",
    ]);
    assert_eq!(code, 0);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(
        tail.lines().all(|l| l.starts_with("talker#1@h2 (out): ")),
        "{tail}"
    );

    // -f: follows both hosts, and picks h1 up again after a restart (a new start of the
    // container writes out-1 again, with a new time).
    let mut child = p
        .cmd(&["logs", "test", "-f", "--stream", "out"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let seen = seen.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                seen.lock().unwrap().push(l);
            }
        })
    };
    let wait_for = |what: &dyn Fn(&[String]) -> bool, secs: u64| {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            if what(&seen.lock().unwrap()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    };
    let h1_first = "talker#1@h1 (out): out-1".to_string();
    assert!(
        wait_for(&|s| s.contains(&h1_first), 20),
        "follow printed no backlog"
    );
    let before = seen.lock().unwrap().len();
    assert!(
        wait_for(&|s| s.len() > before + 4, 10),
        "follow printed nothing new"
    );
    let (code, out, err) = p.fleet(&["restart", "test", "talker", "--host", "h1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("talker#1@h1") && out.contains("restarted"),
        "{out}"
    );
    assert!(
        wait_for(&|s| s.iter().filter(|l| **l == h1_first).count() == 2, 20),
        "follow did not pick h1 up again after the restart:\n{}",
        seen.lock().unwrap().join("\n")
    );
    // A deploy replacing h2's instance: a new container (new version) appears, the old one goes.
    let mut next = ops::resolve(&p.manifest(), "test");
    next.hosts.retain(|h| h.target.name == "h2");
    for i in &mut next.hosts[0].instances {
        i.version = "v1b".into();
        i.container
            .labels
            .insert("fleet.version".into(), "v1b".into());
    }
    let old_h2 = p.fleet(&["stop", "test", "talker", "--host", "h2"]);
    assert_eq!(old_h2.0, 0, "{old_h2:?}");
    ops::start_instances(&p.tb, &next, &[("talker", SH)]).await;
    let h2_first = "talker#1@h2 (out): out-1".to_string();
    assert!(
        wait_for(&|s| s.iter().filter(|l| **l == h2_first).count() == 2, 20),
        "follow did not pick up the replacing container on h2:\n{}",
        seen.lock().unwrap().join("\n")
    );

    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    assert!(
        status.success(),
        "logs -f did not end cleanly on Ctrl-C: {status}"
    );
    let lines = seen.lock().unwrap();
    assert!(
        lines.iter().all(|l| l.contains(" (out): ")),
        "stderr while following --stream out"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_restarts_health_and_lifecycle_keeps_consul_in_step() {
    let Some(tb) = Testbed::get("status_shows_restarts") else {
        return;
    };
    let p = Project::new(
        tb,
        "status",
        &["h1", "h2"],
        r#"
[apps.steady]
image = "10.200.1.1:5000/fleet-test/hello:v1"
roles = ["web"]
port = 8080
health = { http = "/health", interval = "1s", timeout = "1s" }
service = { name = "steady", tags = ["http"] }
env = { API_TOKEN = { env = "OPTEST_SECRET" }, MODE = "plain-value" }

[apps.crasher]
image = "10.200.1.1:5000/fleet-test/hello:v1"
roles = ["web"]
port = 8081
restart = "always"
health = { http = "/health", interval = "1s", timeout = "1s" }
service = { name = "crasher" }
command = ["-c", "echo starting; /bin/busybox httpd -p 8081 -h /app/www; /bin/busybox sleep 1; echo dying >&2; exit 3"]
"#,
    );
    p.start(&[("crasher", SH)]).await;

    // The restart policy brings the crasher back; status counts it. The steady app's check
    // passes within a few intervals.
    let until = Instant::now() + Duration::from_secs(30);
    let doc = loop {
        let doc = p.status();
        let crashed = doc
            .instances
            .iter()
            .filter(|r| r.app == "crasher")
            .all(|r| r.restarts.unwrap_or(0) >= 1);
        let healthy = doc
            .instances
            .iter()
            .filter(|r| r.app == "steady")
            .all(|r| r.health == "passing");
        if crashed && healthy {
            break doc;
        }
        assert!(
            Instant::now() < until,
            "no restart count or health:\n{}",
            serde_json::to_string_pretty(&doc).unwrap()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(doc.format_version, 1);
    assert_eq!(doc.project, p.name);
    assert_eq!(doc.environment, "test");
    assert!(doc.faults.is_empty(), "{:?}", doc.faults);
    assert_eq!(doc.instances.len(), 4, "two apps on two hosts");
    for r in &doc.instances {
        assert_eq!(r.presence, Presence::Desired);
        assert_eq!(r.version.as_deref(), Some("v1"));
        assert!(r.container_id.as_ref().is_some_and(|id| id.len() == 12));
        if r.app == "crasher" {
            assert!(
                ["passing", "critical"].contains(&r.health.as_str()),
                "crasher health {}",
                r.health
            );
        } else {
            assert_eq!(r.state, "running");
            assert!(
                r.uptime_secs.is_some() && r.memory_bytes.is_some() && r.cpu_percent.is_some(),
                "{r:?}"
            );
        }
    }
    // The JSON validates against the documented types: every documented required field is
    // there (a missing one fails the typed parse above; this checks the names).
    let (_, raw, _) = p.fleet(&["status", "test", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    for k in [
        "format_version",
        "project",
        "environment",
        "observed_at",
        "instances",
        "faults",
    ] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    for k in [
        "app",
        "instance",
        "host",
        "presence",
        "container_id",
        "container_name",
        "version",
        "desired_version",
        "state",
        "health",
        "restarts",
        "uptime_secs",
        "exit_code",
        "cpu_percent",
        "memory_bytes",
        "memory_limit_bytes",
    ] {
        assert!(
            v["instances"][0].get(k).is_some(),
            "missing instances[].{k}"
        );
    }

    // The table.
    let (code, table, err) = p.fleet(&["status", "test"]);
    assert_eq!(code, 0, "{table}\n{err}");
    for w in [
        "app", "health", "uptime", "steady", "crasher", "h1", "h2", "passing",
    ] {
        assert!(table.contains(w), "{w} not in\n{table}");
    }
    let (_, only, _) = p.fleet(&["status", "test", "crasher"]);
    assert!(!only.contains("steady"), "{only}");

    // info: secret masked (the reference, never the value), plain values shown.
    let (code, info, err) = p.fleet(&["info", "test", "steady", "1", "--host", "h1"]);
    assert_eq!(code, 0, "{info}\n{err}");
    assert!(info.contains("steady#1@h1"), "{info}");
    assert!(info.contains("(secret from env OPTEST_SECRET)"), "{info}");
    assert!(info.contains("plain-value"), "{info}");
    assert!(info.contains("unless-stopped"), "{info}");
    assert!(info.contains("check service:"), "{info}");
    let (_, cinfo, _) = p.fleet(&["info", "test", "crasher", "--host", "h2"]);
    assert!(
        cinfo.contains("always") && cinfo.contains("last exit code"),
        "{cinfo}"
    );

    // stop: deregistered first, then stopped; start: registered again at the real port.
    let services = |p: &Project| {
        let rt = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| rt.block_on(ops::leftovers(&p.tb, &p.name, &["h1", "h2"])))
    };
    let (_, before, _) = services(&p);
    assert_eq!(before, 4);
    let (code, out, err) = p.fleet(&["stop", "test", "steady", "--instance", "1", "--host", "h1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("deregistered") && out.contains("stopped"),
        "{out}"
    );
    assert_eq!(services(&p).1, 3);
    let stopped = p.status();
    let r = stopped
        .instances
        .iter()
        .find(|r| r.app == "steady" && r.host == "h1")
        .unwrap();
    assert_eq!(r.state, "exited");
    assert_eq!(r.health, "unregistered");
    let (code, out, err) = p.fleet(&["start", "test", "steady", "--host", "h1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("started") && out.contains("registered"),
        "{out}"
    );
    let (code, again, err) = p.fleet(&["start", "test", "steady", "--host", "h1"]);
    assert_eq!(code, 0, "{again}\n{err}");
    assert!(again.contains("already running"), "{again}");
    assert_eq!(services(&p).1, 4);

    // exec: output and the command's exit code.
    let (code, out, _) = p.fleet(&[
        "exec",
        "test",
        "steady",
        "--host",
        "h2",
        "--",
        "/bin/busybox",
        "cat",
        "/app/VERSION",
    ]);
    assert_eq!((code, out.trim()), (0, "v1"));
    let (code, _, _) = p.fleet(&[
        "exec",
        "test",
        "steady",
        "--",
        "/bin/busybox",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(code, 7);

    // The manifest changes: crasher removed, steady scaled to 2. Its containers are now rows
    // of their own (unwanted), and the instance nobody started is missing.
    let text = std::fs::read_to_string(p.manifest()).unwrap();
    let cut = text.find("[apps.crasher]").unwrap();
    let end = text.find("[environments.test]").unwrap();
    let text = format!("{}{}", &text[..cut], &text[end..])
        .replace("[apps.steady]\n", "[apps.steady]\ninstances = 2\n");
    std::fs::write(p.manifest(), text).unwrap();
    let doc = p.status();
    let presence = |app: &str, n: u32, host: &str| {
        doc.instances
            .iter()
            .find(|r| r.app == app && r.instance == Some(n) && r.host == host)
            .map(|r| r.presence)
    };
    assert_eq!(presence("crasher", 1, "h1"), Some(Presence::Unwanted));
    assert_eq!(presence("steady", 2, "h2"), Some(Presence::Missing));
    assert_eq!(presence("steady", 1, "h2"), Some(Presence::Desired));
    let (_, table, _) = p.fleet(&["status", "test"]);
    assert!(
        table.contains("not in manifest") && table.contains("missing"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn destroy_leaves_nothing_and_plan_then_creates_everything() {
    let Some(tb) = Testbed::get("destroy_leaves_nothing") else {
        return;
    };
    let hosts = ["h1", "h2", "h3"];
    let p = Project::new(
        tb,
        "destroy",
        &hosts,
        r#"
[apps.hello]
image = "10.200.1.1:5000/fleet-test/hello:v1"
roles = ["web"]
port = 8080
health = { http = "/health", interval = "2s", timeout = "1s" }
service = { name = "hello", tags = ["http"] }
config = { greeting = "hello", colour = "blue" }
"#,
    );
    // A real deploy: its registrations (IDs carrying the container), KV config, release
    // ledger and lock are what destroy has to find.
    let (code, out, err) = p.fleet(&["deploy", "test", "--yes"]);
    assert_eq!(code, 0, "deploy failed:\n{out}\n{err}");
    let (c, s, k) = ops::leftovers(&p.tb, &p.name, &hosts).await;
    assert_eq!((c, s), (3, 3), "what the deploy made");
    assert!(k >= 2, "the config keys and the ledger: {k}");

    // No terminal and no --yes: refuses, and removes nothing.
    let (code, out, err) = p.fleet(&["destroy", "test"]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(err.contains("--yes"), "{err}");
    assert!(
        out.contains("hello#1@h1") && out.contains(&format!("{}/test/hello/greeting", p.name)),
        "the list first:\n{out}"
    );
    assert_eq!(ops::leftovers(&p.tb, &p.name, &hosts).await, (3, 3, k));

    let (code, out, err) = p.fleet(&["destroy", "test", "--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("Removed 3 containers, 3 services, "), "{out}");
    assert_eq!(ops::leftovers(&p.tb, &p.name, &hosts).await, (0, 0, 0));

    let (code, out, err) = p.fleet(&["plan", "test", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{out}\n{err}");
    for h in hosts {
        assert!(out.contains(h), "{out}");
    }
    assert!(
        out.contains("Plan: 3 to create, 0 to replace, 0 to remove, 0 unchanged.")
            && out.contains("Consul: 3 to register, 0 to update, 0 to deregister.")
            && out.contains("KV: 2 to put, 0 to delete."),
        "every instance, registration and key is a create:\n{out}"
    );

    let (code, out, _) = p.fleet(&["destroy", "test", "--yes"]);
    assert_eq!(code, 0);
    assert!(out.contains("Nothing to remove."), "{out}");
}
