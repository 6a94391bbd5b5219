//! manifests/koa of a test's own on the testbed (`Koa`: its own project and service names) and
//! small readers of what it runs, shared by the Node/pm2 tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::Testbed;

pub const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

/// A copy of manifests/koa under its own project and service names (the testbed is shared:
/// another run's `app` must not answer this run's DNS queries).
pub struct Koa {
    pub _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub project: String,
    /// The Consul service of the app (`app` in manifests/koa).
    pub service: String,
    /// Another `FLEET_SSH_CONFIG` than the testbed's (the bare hosts').
    pub ssh_config: Option<PathBuf>,
    /// What makes this copy's names its own (`koa{id}`, `app{id}`, `client{id}`,
    /// `redis{id}`; `support::unique`), since the tests of this binary run side by side.
    pub id: String,
}

impl Koa {
    pub fn new() -> Koa {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/koa");
        for app in ["app", "client"] {
            assert!(
                src.join(app).join("node_modules/koa").exists(),
                "manifests/koa/{app}/node_modules is missing: run `cargo xtask testbed image`"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("koa");
        // Hard links: node_modules is large and nobody writes to it.
        let ok = Command::new("cp")
            .arg("-al")
            .arg(&src)
            .arg(&root)
            .status()
            .unwrap();
        assert!(ok.success(), "copying manifests/koa");
        let id = crate::support::unique();
        let project = format!("koa{id}");
        let service = format!("app{id}");
        let k = Koa {
            _dir: dir,
            root,
            project,
            service,
            ssh_config: None,
            id: id.clone(),
        };
        k.edit(|t| {
            t.replacen("name = \"koa\"", &format!("name = \"{}\"", k.project), 1)
                .replace(
                    "service = { name = \"app\", tags = [\"http\"] }",
                    &format!(
                        "service = {{ name = \"{}\", tags = [\"http\"] }}",
                        k.service
                    ),
                )
                .replace(
                    "service = { name = \"client\" }",
                    &format!("service = {{ name = \"client{id}\" }}"),
                )
                .replace(
                    "public = { host = \"koa.localhost\" }",
                    &format!("public = {{ host = \"{}.localhost\" }}", k.project),
                )
                .replace(
                    "REDIS = \"redis.service.consul\"",
                    &format!("REDIS = \"redis{id}.service.consul\""),
                )
                .replace(
                    "service = { name = \"redis\" }",
                    &format!("service = {{ name = \"redis{id}\" }}"),
                )
                .replace(
                    "\"koa-redis:/data\"",
                    &format!("\"{}-redis:/data\"", k.project),
                )
                .replace(
                    "UPSTREAM = \"app.service.consul\"",
                    &format!("UPSTREAM = \"{}.service.consul\"", k.service),
                )
        });
        k
    }

    pub fn manifest(&self) -> PathBuf {
        self.root.join("fleet.toml")
    }

    pub fn edit(&self, f: impl FnOnce(&str) -> String) {
        let path = self.manifest();
        let t = std::fs::read_to_string(&path).unwrap();
        let new = f(&t);
        assert_ne!(new, t, "the edit changed nothing");
        // A hard-linked file would change the original too: write a new one.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, new).unwrap();
    }

    /// `fleet deploy production --yes`, which must succeed (`what` names it in the failure).
    pub fn deploy(&self, tb: &Testbed, what: &str) -> Output {
        self.deploy_with(tb, &["deploy", "production", "--yes"], what)
    }

    /// [`Koa::deploy`] with these arguments.
    pub fn deploy_with(&self, tb: &Testbed, args: &[&str], what: &str) -> Output {
        let o = self.run(tb, args);
        assert!(o.status.success(), "{what} failed:\n{}", text(&o));
        o
    }

    pub fn run(&self, tb: &Testbed, args: &[&str]) -> Output {
        let mut c = tb.fleet();
        if let Some(cfg) = &self.ssh_config {
            c.env("FLEET_SSH_CONFIG", cfg);
        }
        c.arg("-f")
            .arg(self.manifest())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for Koa {
    fn drop(&mut self) {
        if let Some(tb) = Testbed::get("koa cleanup") {
            let _ = self.run(&tb, &["destroy", "production", "--yes"]);
        }
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `curl -s URL` from this machine: (HTTP status, body).
pub fn get(url: &str) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-s", "-m", "3", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Polls `f` every 100 ms until it returns `Some`, or panics with `what` after `within`.
pub fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < within, "timed out after {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The registered instances of `service` in `host`'s agent: (service ID, port).
pub fn registered(tb: &Testbed, host: &str, service: &str) -> Vec<(String, u16)> {
    let out = tb.ssh_ok(host, "curl -s http://127.0.0.1:8500/v1/agent/services");
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_object()
        .unwrap()
        .values()
        .filter(|s| s["Service"] == service)
        .map(|s| {
            (
                s["ID"].as_str().unwrap().to_string(),
                s["Port"].as_u64().unwrap() as u16,
            )
        })
        .collect()
}

/// The id of the running container of `app` of `project` on `host`.
pub fn container(tb: &Testbed, host: &str, project: &str, app: &str) -> String {
    tb.ssh_ok(
        host,
        &format!(
            "docker ps -q --filter label=fleet.project={project} --filter label=fleet.app={app}"
        ),
    )
}

/// `fleet status production APP --json`'s rows (`instances`).
pub fn status_rows(k: &Koa, tb: &Testbed, app: &str) -> Vec<Value> {
    let o = k.run(tb, &["status", "production", app, "--json"]);
    assert!(o.status.success(), "status failed:\n{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["instances"].as_array().unwrap().clone()
}

/// `fleet status --json`'s row for `app` on `host`.
pub fn status_row(k: &Koa, tb: &Testbed, app: &str, host: &str) -> Value {
    let rows = status_rows(k, tb, app);
    rows.iter()
        .find(|i| i["host"] == host)
        .cloned()
        .unwrap_or_else(|| panic!("no {app} on {host} in {rows:?}"))
}
