//! A manifests/hello project of a test's own on the testbed (`Project`), the hosts' Consul
//! agents as a client sees them (`Agents`), and small readers of the hosts' state, shared by
//! the deploy and fault tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use fleet::desired::HostTarget;
use fleet::host::{ConnectOptions, HostSession};

use crate::support::Testbed;

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

pub struct Project {
    pub _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub name: String,
}

impl Project {
    /// manifests/hello copied, renamed, with short intervals and deadline.
    pub fn new(tb: &Testbed) -> Project {
        Project::named(tb, "fdt")
    }

    /// `new` with its own name prefix; `support::unique` after it keeps two copies apart (the
    /// tests of this binary run side by side).
    pub fn named(tb: &Testbed, prefix: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("m");
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/hello"),
            &root,
        );
        std::fs::copy("/bin/busybox", root.join("app/busybox")).unwrap();
        let name = format!("{prefix}{}", crate::support::unique());
        let toml = std::fs::read_to_string(root.join("fleet.toml"))
            .unwrap()
            .replacen("name = \"hello\"", &format!("name = \"{name}\""), 1)
            .replace("interval = \"2s\"", "interval = \"1s\"")
            .replace("deadline = \"30s\"", "deadline = \"10s\"")
            .replace("stop_timeout = \"5s\"", "stop_timeout = \"2s\"");
        std::fs::write(root.join("fleet.toml"), toml).unwrap();
        let _ = tb;
        Project {
            _dir: dir,
            root,
            name,
        }
    }

    /// Deploy to h1 only (the lock/ledger tests need no more).
    pub fn one_host(&self) {
        self.edit(|t| t.replace("hosts = [\"h1\", \"h2\", \"h3\"]", "hosts = [\"h1\"]"));
    }

    /// Removes the project's containers and registrations from every host when dropped.
    pub fn cleanup<'a>(&self, tb: &'a Testbed) -> Cleanup<'a> {
        Cleanup {
            tb,
            project: self.name.clone(),
        }
    }

    /// Adds `line` (TOML) to the manifest's `[project]` table (a hook, say).
    pub fn project_line(&self, line: &str) {
        let name = format!("name = \"{}\"", self.name);
        self.edit(|t| t.replacen(&name, &format!("{name}\n{line}"), 1));
    }

    pub fn edit(&self, f: impl FnOnce(&str) -> String) {
        let path = self.root.join("fleet.toml");
        let t = std::fs::read_to_string(&path).unwrap();
        let new = f(&t);
        assert_ne!(new, t, "the edit changed nothing");
        std::fs::write(&path, new).unwrap();
    }

    /// Makes the next version fail its health check (no /health file).
    pub fn break_health(&self) {
        let path = self.root.join("app/start.sh");
        let start = std::fs::read_to_string(&path).unwrap();
        let broken = start.replace(
            "$b cp /app/www/health /www/health",
            "echo 'no health file today' >&2",
        );
        assert_ne!(start, broken);
        std::fs::write(&path, broken).unwrap();
    }

    /// Waits until the deploy lock is free (a SIGKILLed holder's expires within its TTL).
    pub fn wait_lock_free(&self, tb: &Testbed, within: Duration) {
        let t0 = std::time::Instant::now();
        loop {
            let o = self.run(tb, &["lock", "status", "production"]);
            if text(&o).contains("is free") {
                return;
            }
            assert!(
                t0.elapsed() < within,
                "the lock was not freed within {within:?}: {}",
                text(&o)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `fleet releases production --json`.
    pub fn releases(&self, tb: &Testbed) -> Vec<serde_json::Value> {
        let o = self.run(tb, &["releases", "production", "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn set_version(&self, v: &str) {
        std::fs::write(self.root.join("app/VERSION"), format!("{v}\n")).unwrap();
    }

    /// The content tag the current sources build to.
    pub fn tag(&self) -> String {
        let loaded = fleet::manifest::load(Some(&self.root.join("fleet.toml"))).unwrap();
        let (targets, _) = loaded.build_targets();
        fleet::build::versions(&targets).unwrap()["hello"].clone()
    }

    pub fn fleet(&self, tb: &Testbed, args: &[&str]) -> Command {
        let mut c = tb.fleet();
        c.arg("-f").arg(self.root.join("fleet.toml")).args(args);
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, tb: &Testbed, args: &[&str]) -> Output {
        self.fleet(tb, args).output().unwrap()
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `(container id, version)` of the project's containers on a host.
pub fn containers(tb: &Testbed, host: &str, project: &str) -> Vec<(String, String)> {
    let out = tb.ssh_ok(
        host,
        &format!(
            "docker ps -a --filter label=fleet.project={project} --format '{{{{.ID}}}} {{{{.Label \"fleet.version\"}}}}'"
        ),
    );
    let mut v: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

/// One SSH session per host and its agent's forwarded URL: what a Consul client would see.
pub struct Agents {
    pub sessions: Vec<HostSession>,
    pub urls: Vec<String>,
    pub http: reqwest::Client,
    /// The hosts' node names, in the order of `urls`.
    pub nodes: Vec<String>,
}

impl Agents {
    pub async fn open(tb: &Testbed) -> Agents {
        let all: Vec<&str> = tb.hosts.iter().map(|h| h.name.as_str()).collect();
        Agents::open_hosts(tb, &all).await
    }

    /// The agents of `names` only (the others may be cut off by a fault test).
    pub async fn open_hosts(tb: &Testbed, names: &[&str]) -> Agents {
        let opts = ConnectOptions {
            ssh_config: Some(tb.ssh_config()),
            persist: None,
            ..ConnectOptions::default()
        };
        let hosts: Vec<&crate::support::Host> = tb
            .hosts
            .iter()
            .filter(|h| names.contains(&h.name.as_str()))
            .collect();
        let mut sessions = Vec::new();
        let mut urls = Vec::new();
        for h in &hosts {
            let t = HostTarget {
                name: h.name.clone(),
                address: h.address.clone(),
                user: Some("root".into()),
                port: None,
                identity_file: None,
                docker_socket: "/run/docker.sock".into(),
                roles: vec![],
            };
            let s = HostSession::connect(&t, &opts).await.unwrap();
            urls.push(s.consul_url("http://127.0.0.1:8500").await.unwrap());
            sessions.push(s);
        }
        Agents {
            nodes: hosts.iter().map(|h| h.name.clone()).collect(),
            sessions,
            urls,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        }
    }

    /// Passing instances of the project's `hello` on each host, as the cluster's catalog lists
    /// them: (address, port, version). Asked through the *next* host's agent, as a client
    /// elsewhere in the cluster would: a check's status reaches the catalog only after the
    /// agents' sync delay, so an instance counts once the cluster, not its own agent, says so.
    pub async fn passing(&self, project: &str) -> Vec<Vec<(String, u16, String)>> {
        let mut out = Vec::new();
        let through = self.urls.iter().cycle().skip(1);
        for (node, u) in self.nodes.iter().zip(through) {
            let v = self
                .json(&format!("{u}/v1/health/service/hello?passing"))
                .await;
            out.push(
                v.as_array()
                    .unwrap()
                    .iter()
                    .filter(|e| e["Service"]["Meta"]["fleet-project"] == project)
                    .filter(|e| e["Node"]["Node"] == node.as_str())
                    .map(|e| {
                        (
                            e["Service"]["Address"].as_str().unwrap().to_string(),
                            e["Service"]["Port"].as_u64().unwrap() as u16,
                            e["Service"]["Meta"]["fleet-version"]
                                .as_str()
                                .unwrap()
                                .to_string(),
                        )
                    })
                    .collect(),
            );
        }
        out
    }

    /// Every registration of the project (any status): (id, version, statuses).
    pub async fn all(&self, project: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for u in &self.urls {
            let v = self.json(&format!("{u}/v1/agent/services")).await;
            for (id, s) in v.as_object().unwrap() {
                if s["Meta"]["fleet-project"] == project {
                    out.push((id.clone(), s["Meta"]["fleet-version"].to_string()));
                }
            }
        }
        out
    }

    /// `GET url` of an agent, as JSON (panics on any error: the agents asked are up).
    async fn json(&self, url: &str) -> serde_json::Value {
        let r = self.http.get(url).send().await;
        let r = r.unwrap_or_else(|e| panic!("{url}: {e}"));
        r.json().await.unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    pub async fn get(&self, addr: &str, port: u16) -> Result<String, String> {
        let r = self
            .http
            .get(format!("http://{addr}:{port}/"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("HTTP {}", r.status()));
        }
        r.text().await.map_err(|e| e.to_string())
    }

    pub async fn close(self) {
        for s in self.sessions {
            s.close().await;
        }
    }
}

/// Removes the project's containers and registrations even when the test fails.
pub struct Cleanup<'a> {
    pub tb: &'a Testbed,
    pub project: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.tb.forget_project(&self.project);
    }
}
