//! Accessories (issue 21, item 2) on the testbed, through the real binary: a Redis accessory
//! (`fleet-test/redis:7`, Debian's redis-server `FROM scratch`) on h1 with a named volume and
//! a Consul service, beside a hello app on h1 and h2.
//!
//! 1. A deploy starts it: it answers PING at its fixed port, and h2 finds it by name through
//!    its own agent's DNS (`<service>.service.consul` -> h1's address).
//! 2. A deploy of a new app version leaves its container alone.
//! 3. A change of its own spec: the plan says the replace has a gap and the volume's data stays;
//!    after the deploy a new container serves the key written before.
//! 4. `fleet destroy` keeps the volume fleet created (and says so); `--volumes` removes it.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::Testbed;

struct Proj {
    dir: tempfile::TempDir,
    name: String,
    port: u16,
}

impl Proj {
    fn manifest(&self) -> std::path::PathBuf {
        self.dir.path().join("fleet.toml")
    }

    fn write(&self, tb: &Testbed, hello: &str, db_extra: &str) {
        let mut s = format!(
            "[project]\nname = \"{p}\"\n\n[registry]\nserver = \"{r}\"\ninsecure = true\n\
             username = {{ env = \"FLEET_REGISTRY_USER\" }}\npassword = {{ env = \"FLEET_REGISTRY_PASSWORD\" }}\n\n\
             [consul]\naddress = \"http://127.0.0.1:8500\"\n\n",
            p = self.name,
            r = tb.registry
        );
        for h in ["h1", "h2"] {
            s.push_str(&format!(
                "[hosts.{h}]\naddress = \"{}\"\nuser = \"root\"\n\n",
                tb.host(h).address
            ));
        }
        s.push_str(&format!(
            "[accessories.db]\nimage = \"{r}/fleet-test/redis:7\"\nhosts = [\"h1\"]\nport = 6379\n\
             published = {port}\n\
             command = [\"redis-server\", \"--protected-mode\", \"no\", \"--appendonly\", \"yes\", \"--dir\", \"/data\"]\n\
             volumes = [\"{p}-data:/data\"]\nhealth = {{ tcp = true, interval = \"1s\", timeout = \"1s\", deadline = \"30s\" }}\n\
             stop_timeout = \"5s\"\nservice = {{ name = \"{p}-db\" }}\n{db_extra}\n\n\
             [apps.hello]\nimage = \"{r}/fleet-test/hello:{hello}\"\nport = 8080\n\
             health = {{ http = \"/health\", interval = \"1s\", timeout = \"1s\", deadline = \"15s\" }}\n\
             stop_timeout = \"2s\"\nservice = true\n\n[environments.test]\nhosts = [\"h1\", \"h2\"]\n",
            r = tb.registry,
            p = self.name,
            port = self.port,
        ));
        std::fs::write(self.manifest(), s).unwrap();
    }

    fn run(&self, tb: &Testbed, args: &[&str]) -> (bool, String) {
        let o = tb
            .fleet()
            .arg("-f")
            .arg(self.manifest())
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    }

    fn ok(&self, tb: &Testbed, args: &[&str]) -> String {
        let (ok, text) = self.run(tb, args);
        assert!(ok, "fleet {args:?} failed:\n{text}");
        text
    }

    /// The id of the accessory's container on h1 (one, running).
    fn db_container(&self, tb: &Testbed) -> String {
        let out = tb.ssh_ok(
            "h1",
            &format!(
                "docker ps -q --no-trunc --filter label=fleet.project={} --filter label=fleet.app=db",
                self.name
            ),
        );
        let ids: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(ids.len(), 1, "one running db container on h1: {out:?}");
        ids[0].to_string()
    }

    fn volume_exists(&self, tb: &Testbed) -> bool {
        let out = tb.ssh_ok(
            "h1",
            &format!("docker volume ls -q --filter name=^{}-data$", self.name),
        );
        !out.trim().is_empty()
    }
}

impl Drop for Proj {
    fn drop(&mut self) {
        if let Some(tb) = Testbed::get("accessories cleanup") {
            let _ = self.run(&tb, &["destroy", "test", "--yes", "--volumes"]);
        }
    }
}

/// One Redis command (RESP inline) to `addr`; its first reply line.
fn redis(addr: &str, cmd: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(format!("{cmd}\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    let mut got = Vec::new();
    while lines(&got) < reply_lines(&got) {
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_string();
    // A bulk string (`$N\r\nvalue\r\n`): its value.
    Ok(match text.strip_prefix('$') {
        Some(rest) => rest.lines().nth(1).unwrap_or_default().to_string(),
        None => text.trim_end().to_string(),
    })
}

fn lines(got: &[u8]) -> usize {
    got.iter().filter(|b| **b == b'\n').count()
}

/// How many lines the RESP reply that starts like `got` has: two for a bulk string, else one.
fn reply_lines(got: &[u8]) -> usize {
    if got.first() == Some(&b'$') && !got.starts_with(b"$-1") {
        2
    } else {
        1
    }
}

fn wait_redis(addr: &str, within: Duration) {
    let t0 = Instant::now();
    loop {
        match redis(addr, "PING") {
            Ok(r) if r == "+PONG" => return,
            r if t0.elapsed() > within => panic!("redis at {addr} never answered PONG: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn an_accessory_is_found_by_name_kept_across_deploys_and_its_volume_outlives_destroy() {
    let Some(tb) = Testbed::get("accessories") else {
        return;
    };
    let id = support::unique();
    // A host port of its own: other projects on the testbed may run accessories too.
    let port = 20000 + (id.bytes().fold(0u32, |a, b| a.wrapping_mul(31) + b as u32) % 10000) as u16;
    let p = Proj {
        dir: tempfile::tempdir().unwrap(),
        name: format!("acc-{id}"),
        port,
    };
    let addr = format!("{}:{port}", tb.host("h1").address);

    // 1. Started by the deploy, before the app; found by name from h2.
    p.write(&tb, "v1", "");
    let plan = p.ok(&tb, &["plan", "test"]);
    assert!(plan.contains("db"), "{plan}");
    p.ok(&tb, &["deploy", "test", "--yes"]);
    wait_redis(&addr, Duration::from_secs(10));
    assert_eq!(redis(&addr, "SET greeting kept").unwrap(), "+OK");
    let dns = tb.ssh_ok(
        "h2",
        &format!(
            "busybox nslookup {}-db.service.consul {}",
            p.name,
            // The agent of host N answers DNS on its Docker bridge, 10.210.N.1 (testbed README).
            format!(
                "10.210.{}.1",
                tb.host("h2").address.split('.').nth(2).unwrap()
            )
        ),
    );
    assert!(
        dns.contains(&tb.host("h1").address),
        "h2's agent resolves the accessory to h1:\n{dns}"
    );
    let first = p.db_container(&tb);
    let status = p.ok(&tb, &["status", "test", "--json"]);
    assert!(
        status.contains("\"db\""),
        "status lists the accessory: {status}"
    );
    // `logs` and `exec` take its name like an app's.
    let logs = p.ok(&tb, &["logs", "test", "db"]);
    assert!(
        logs.contains("db#1@h1 (out):") && logs.contains("Ready to accept connections"),
        "the accessory's own log: {logs}"
    );
    let version = p.ok(
        &tb,
        &["exec", "test", "db", "--", "redis-server", "--version"],
    );
    assert!(
        version.contains("Redis server v="),
        "exec runs in the accessory's container: {version}"
    );

    // 2. A new app version: the accessory is not touched.
    p.write(&tb, "v2", "");
    let out = p.ok(&tb, &["deploy", "test", "--yes"]);
    assert_eq!(
        p.db_container(&tb),
        first,
        "a deploy of the app replaced the accessory:\n{out}"
    );

    // 3. Its own spec changes: a replace with a gap, the data stays.
    p.write(&tb, "v2", "env = { REDIS_NOTE = \"2\" }");
    let plan = p.ok(&tb, &["plan", "test"]);
    assert!(
        plan.contains("gap") && plan.contains(&format!("volume {}-data stays", p.name)),
        "the plan says the replace stops it first and keeps the volume:\n{plan}"
    );
    p.ok(&tb, &["deploy", "test", "--yes"]);
    let second = p.db_container(&tb);
    assert_ne!(second, first, "the accessory was replaced");
    wait_redis(&addr, Duration::from_secs(10));
    assert_eq!(
        redis(&addr, "GET greeting").unwrap(),
        "kept",
        "the volume's data stayed"
    );

    // 4. destroy keeps the volume fleet created; --volumes removes it.
    assert!(p.volume_exists(&tb), "fleet created the named volume");
    let out = p.ok(&tb, &["destroy", "test", "--yes"]);
    assert!(out.contains("kept: volumes"), "{out}");
    assert!(
        p.volume_exists(&tb),
        "destroy without --volumes kept it:\n{out}"
    );
    let out = p.ok(&tb, &["destroy", "test", "--yes", "--volumes"]);
    assert!(
        !p.volume_exists(&tb),
        "destroy --volumes removed it:\n{out}"
    );
}
