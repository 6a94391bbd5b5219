//! `fleet setup` against the testbed's bare hosts b1..b3 (`cargo xtask testbed up --bare 3`:
//! sshd and dockerd, no Consul agent), through the real binary: the Consul agents as
//! containers from `[consul.agent]` (the stand-in image `fleet-test/consul:standin`, which takes
//! `consul agent`'s flags and models members, quorum and the leader), docs/setup.md.
//!
//! The tests share b1..b3 (an agent uses the host's network and ports), so they run one at a
//! time, each starting from hosts without an agent.

use crate::support;

use crate::support::koa;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static BARE: Mutex<()> = Mutex::new(());

struct Bare {
    tb: support::Testbed,
    dir: PathBuf,
}

fn bare(test: &str) -> Option<Bare> {
    let tb = support::Testbed::get(test)?;
    let dir = tb.dir.join("bare");
    if !dir.join("READY").exists() {
        if std::env::var_os("FLEET_TESTBED").is_some() {
            panic!(
                "no bare hosts in {}: run `cargo xtask testbed up --bare 3 --dir {}`",
                dir.display(),
                tb.dir.display()
            );
        }
        eprintln!("SKIPPED {test}: no bare hosts (cargo xtask testbed up --bare 3)");
        return None;
    }
    let b = Bare { tb, dir };
    b.clear();
    Some(b)
}

fn sh(script: &str) -> Output {
    Command::new("sh").args(["-c", script]).output().unwrap()
}

fn curl(url: &str) -> String {
    let out = sh(&format!("curl -s --max-time 2 {url}"));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The bare hosts' stand-in store, from the machine.
const STORE: &str = "http://127.0.0.1:8310";

impl Bare {
    fn docker(&self, n: u32) -> String {
        format!(
            "docker -H unix://{}",
            self.dir.join(format!("b{n}/run/docker.sock")).display()
        )
    }

    /// Removes every agent container of any project from b1..b3.
    fn clear(&self) {
        for n in 1..=3 {
            let d = self.docker(n);
            sh(&format!(
                "ids=$({d} ps -aq --filter label=fleet.kind=agent); [ -z \"$ids\" ] || {d} rm -f $ids >/dev/null"
            ));
        }
    }

    /// A project on b1..b3 with `[consul.agent]` of this image tag.
    fn project(&self, name: &str, tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("fleet-setup-{name}"));
        std::fs::create_dir_all(&p).unwrap();
        let key = self.tb.identity_file();
        let mut m = format!("[project]\nname = \"{name}\"\n");
        for n in 1..=3 {
            m.push_str(&format!(
                "[hosts.b{n}]\naddress = \"10.201.{n}.2\"\nuser = \"root\"\nidentity_file = \"{}\"\n",
                key.display()
            ));
        }
        m.push_str(&format!(
            "[apps]\n[consul]\naddress = \"http://127.0.0.1:8500\"\n[consul.agent]\nimage = \"fleet-test/consul:{tag}\"\nservers = [\"b1\", \"b2\", \"b3\"]\n[environments.production]\n"
        ));
        std::fs::write(p.join("fleet.toml"), m).unwrap();
        p
    }

    fn setup(&self, project: &Path, args: &[&str]) -> Output {
        let mut c = self.tb.fleet();
        c.env("FLEET_SSH_CONFIG", self.dir.join("ssh_config"))
            .current_dir(project)
            .args(["setup", "production"])
            .args(args);
        c.output().unwrap()
    }

    fn running(&self, n: u32, project: &str) -> bool {
        let out = sh(&format!(
            "{} ps -q --filter label=fleet.project={project} --filter label=fleet.kind=agent",
            self.docker(n)
        ));
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn alive_members() -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&curl(&format!("{STORE}/v1/agent/members")))
        .unwrap_or(serde_json::Value::Null);
    let mut names: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["Status"] == 1)
        .filter_map(|m| m["Name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[test]
fn setup_from_bare_hosts_elects_a_leader_and_a_second_run_changes_nothing() {
    let _one = BARE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(b) = bare("setup_from_bare_hosts") else {
        return;
    };
    let name = "setup-first";
    let p = b.project(name, "standin");
    let plan = b.setup(&p, &["--plan"]);
    assert_eq!(plan.status.code(), Some(2), "{}", text(&plan));
    assert!(text(&plan).contains("3 to create"), "{}", text(&plan));
    let first = b.setup(&p, &["--yes"]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("has a leader"), "{}", text(&first));
    let leader = curl(&format!("{STORE}/v1/status/leader"));
    assert!(leader.contains("10.201."), "leader: {leader}");
    assert_eq!(alive_members(), ["b1", "b2", "b3"]);
    let peers = curl(&format!("{STORE}/v1/status/peers"));
    assert_eq!(peers.matches(":8300").count(), 3, "{peers}");
    // What a container sees: the agent's HTTP API and DNS on the host's bridge gateway.
    let bridge = curl("http://10.211.2.1:8500/v1/status/leader");
    assert_eq!(bridge, leader, "the agent answers on b2's bridge gateway");

    let second = b.setup(&p, &["--yes"]);
    assert!(second.status.success(), "{}", text(&second));
    assert!(text(&second).contains("No changes."), "{}", text(&second));
    let json = b.setup(&p, &["--plan", "--json"]);
    assert_eq!(json.status.code(), Some(0), "{}", text(&json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(
        v["plan"]["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["action"] == "unchanged"),
        "{v}"
    );
    // An app plan of the project never sees the agents.
    let status =
        b.tb.fleet()
            .env("FLEET_SSH_CONFIG", b.dir.join("ssh_config"))
            .current_dir(&p)
            .args(["plan", "production", "--json"])
            .output()
            .unwrap();
    assert!(status.status.success(), "{}", text(&status));
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("fleet-test/consul"),
        "{}",
        text(&status)
    );
    b.clear();
}

#[test]
fn a_rolling_upgrade_keeps_a_leader_and_every_key() {
    let _one = BARE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(b) = bare("a_rolling_upgrade") else {
        return;
    };
    let name = "setup-roll";
    let p = b.project(name, "standin");
    let first = b.setup(&p, &["--yes"]);
    assert!(first.status.success(), "{}", text(&first));
    // A deploy lock (a session on the lock key, through b1's agent) and a KV key.
    let agent = "http://10.211.1.1:8500";
    let session: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(
        &sh(&format!(
            "curl -s -X PUT -d '{{\"Name\":\"fleet-lock\",\"TTL\":\"0s\"}}' {agent}/v1/session/create"
        ))
        .stdout,
    ))
    .unwrap();
    let id = session["ID"].as_str().unwrap().to_string();
    let lock = format!("{name}/production/_fleet/lock");
    let took = sh(&format!(
        "curl -s -X PUT -d holder {agent}/v1/kv/{lock}?acquire={id}"
    ));
    assert_eq!(String::from_utf8_lossy(&took.stdout).trim(), "true");
    sh(&format!(
        "curl -s -X PUT -d v1 {agent}/v1/kv/{name}/production/app/greeting"
    ));
    let leader_before = curl(&format!("{STORE}/v1/status/leader"));

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poll = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                seen.push(curl(&format!("{STORE}/v1/status/leader")));
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        })
    };
    b.project(name, "standin-2");
    let started = Instant::now();
    let upgrade = b.setup(&p, &["--yes"]);
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = poll.join().unwrap();
    let out = text(&upgrade);
    assert!(upgrade.status.success(), "{out}");
    assert!(out.contains("3 to replace"), "{out}");
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|l| l.contains(":8300")),
        "a moment without a leader during the upgrade ({took:?}): {seen:?}"
    );
    // The leader's host went last.
    let ip = leader_before
        .trim_matches('"')
        .split(':')
        .next()
        .unwrap()
        .to_string();
    let leader_host = format!("b{}", ip.split('.').nth(2).unwrap());
    let replaced: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(": replace the Consul"))
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(replaced.len(), 3, "{out}");
    assert_eq!(
        replaced[2], leader_host,
        "the leader is replaced last: {out}"
    );
    // Every agent runs the new image; the lock and the key are still there.
    for n in 1..=3 {
        let img = sh(&format!(
            "{} ps --filter label=fleet.project={name} --format '{{{{.Image}}}}'",
            b.docker(n)
        ));
        assert_eq!(
            String::from_utf8_lossy(&img.stdout).trim(),
            "fleet-test/consul:standin-2"
        );
    }
    let held: serde_json::Value =
        serde_json::from_str(&curl(&format!("{STORE}/v1/kv/{lock}"))).unwrap();
    assert_eq!(held[0]["Session"], id.as_str(), "{held}");
    let key = curl(&format!("{STORE}/v1/kv/{name}/production/app/greeting?raw"));
    assert_eq!(key, "v1");
    assert_eq!(alive_members(), ["b1", "b2", "b3"]);
    sh(&format!("curl -s -X PUT {agent}/v1/session/destroy/{id}"));
    sh(&format!(
        "curl -s -X DELETE '{STORE}/v1/kv/{name}/?recurse'"
    ));
    b.clear();
}

#[test]
fn a_host_whose_engine_is_down_gets_the_fix_and_the_others_go_on() {
    let _one = BARE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(b) = bare("a_host_whose_engine_is_down") else {
        return;
    };
    let name = "setup-down";
    let p = b.project(name, "standin");
    // Stop b3's engine by its pid file (sshd stays up).
    let pidfile = b.dir.join("b3/run/docker.pid");
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    sh(&format!("kill -TERM {}", pid.trim()));
    let gone = Instant::now();
    while Path::new(&format!("/proc/{}", pid.trim())).exists()
        && gone.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = b.setup(&p, &["--yes", "--timeout", "20s"]);
    let restore = Command::new(env!("CARGO"))
        .args([
            "run",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "testbed",
            "up",
            "--bare",
            "3",
            "--dir",
        ])
        .arg(&b.tb.dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("error: b3:"), "{t}");
    assert!(t.contains("Docker engine on b3"), "{t}");
    assert!(t.contains("systemctl start docker"), "{t}");
    assert!(b.running(1, name) && b.running(2, name), "{t}");
    // Two of three servers: a quorum, so a leader.
    assert!(t.contains("has a leader"), "{t}");
    assert!(restore.status.success(), "restoring b3: {}", text(&restore));
    b.clear();
}

/// The passing instances of `service` in the bare hosts' catalog: (node, address, port).
fn passing(service: &str) -> Vec<(String, String, u16)> {
    let v: serde_json::Value = serde_json::from_str(&curl(&format!(
        "{STORE}/v1/health/service/{service}?passing"
    )))
    .unwrap_or(serde_json::Value::Null);
    let mut out: Vec<(String, String, u16)> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["Node"]["Node"].as_str().unwrap_or("").to_string(),
                e["Service"]["Address"].as_str().unwrap_or("").to_string(),
                e["Service"]["Port"].as_u64().unwrap_or(0) as u16,
            )
        })
        .collect();
    out.sort();
    out
}

/// manifests/koa's `bare` environment (issue 21, item 4: b1..b3, `[consul.agent]` with the
/// stand-in image): `fleet setup` runs the Consul agents and the `redis` accessory, a second run changes nothing, and `fleet deploy` then passes koa's
/// checks: the greeting from KV, changed on the fly; `client` finds `app` by name; `app` on
/// every host counts visits in `redis`, found by name.
#[test]
fn koa_from_bare_hosts_setup_then_deploy() {
    let _one = BARE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(b) = bare("koa_from_bare_hosts") else {
        return;
    };
    let mut k = koa::Koa::new();
    k.ssh_config = Some(b.dir.join("ssh_config"));
    let plan = k.run(&b.tb, &["setup", "bare", "--plan"]);
    assert_eq!(plan.status.code(), Some(2), "{}", koa::text(&plan));
    assert!(
        koa::text(&plan).contains("Accessories (redis): planned once the agents run"),
        "{}",
        koa::text(&plan)
    );
    let first = k.run(&b.tb, &["setup", "bare", "--yes"]);
    let t = koa::text(&first);
    assert!(first.status.success(), "{t}");
    assert!(t.contains("has a leader"), "{t}");
    let redis = format!("redis{}", k.id);
    assert_eq!(passing(&redis).len(), 1, "setup started the accessory: {t}");
    assert_eq!(passing(&redis)[0].0, "b1", "on the host with role db: {t}");

    let second = k.run(&b.tb, &["setup", "bare", "--yes"]);
    let t = koa::text(&second);
    assert!(second.status.success(), "{t}");
    assert_eq!(
        t.matches("No changes.").count(),
        2,
        "the agents and the accessories: {t}"
    );
    // With the agents up, `--plan` plans the accessories too (through the same sessions).
    let replan = k.run(&b.tb, &["setup", "bare", "--plan"]);
    let t = koa::text(&replan);
    assert_eq!(replan.status.code(), Some(0), "{t}");
    assert!(t.contains("Accessories: redis"), "{t}");
    assert_eq!(t.matches("No changes.").count(), 2, "{t}");

    k.deploy_with(
        &b.tb,
        &["deploy", "bare", "--yes"],
        "the deploy after setup",
    );
    let apps = passing(&k.service);
    assert_eq!(apps.len(), 3, "{apps:?}");
    for (_, addr, port) in &apps {
        koa::wait_for(Duration::from_secs(5), "the greeting from KV", || {
            (koa::get(&format!("http://{addr}:{port}/")).1 == "Hello Koa@2, from Consul KV")
                .then_some(())
        });
    }
    let visits: Vec<String> = apps
        .iter()
        .map(|(_, a, p)| koa::get(&format!("http://{a}:{p}/visits")).1)
        .collect();
    assert_eq!(
        visits,
        ["1", "2", "3"],
        "one counter, found by name from every host"
    );

    let greeting = format!("Hola {}", support::unique());
    k.edit(|t| t.replace("Hello Koa@2, from Consul KV", &greeting));
    k.deploy_with(&b.tb, &["deploy", "bare", "--yes"], "the config deploy");
    let t0 = Instant::now();
    for (_, addr, port) in &apps {
        koa::wait_for(
            Duration::from_secs(2).saturating_sub(t0.elapsed()),
            "the new greeting",
            || (koa::get(&format!("http://{addr}:{port}/")).1 == greeting).then_some(()),
        );
    }
    let client = passing(&format!("client{}", k.id));
    assert_eq!(client.len(), 3, "{client:?}");
    for (node, addr, port) in &client {
        let (code, body) = koa::get(&format!("http://{addr}:{port}/upstream"));
        assert_eq!(
            (code, body.as_str()),
            (200, greeting.as_str()),
            "the client on {node} finds `app` by name"
        );
    }
    let o = k.run(&b.tb, &["destroy", "bare", "--yes", "--volumes"]);
    assert!(o.status.success(), "{}", koa::text(&o));
    b.clear();
}
