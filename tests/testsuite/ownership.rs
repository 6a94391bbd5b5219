//! fleet never touches what is not its own (issue 14), end to end on the testbed through the
//! real binary:
//! - two projects whose dashed names spell the same (`<x>` / `eu-prod` and `<x>-eu` / `prod`)
//!   run side by side on one host, each with its own containers, lock and ledger; a container
//!   renamed to the old naming is still found (names are not state);
//! - a container of someone else that holds the name a deploy wants is left alone and the
//!   deploy fails naming it;
//! - a staging deploy on a host shared with production keeps what production keeps for
//!   rollback, and tags outside fleet's repository, while still pruning its own old images.
//!
//! Project names carry the pid (`own<pid>...`), and a guard removes what each test made.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::Testbed;

struct Project {
    _dir: tempfile::TempDir,
    root: PathBuf,
    name: String,
}

impl Project {
    /// A project with one prebuilt app (the testbed's hello image) on h1, without Consul (so its
    /// lock and ledger are files on h1), in environment `env`.
    fn prebuilt(tb: &Testbed, name: &str, env: &str) -> Project {
        let app = format!(
            "image = \"{}/fleet-test/hello:v1\"\nport = 8080\nhealth = {{ http = \"/health\", interval = \"1s\", timeout = \"1s\", deadline = \"10s\" }}\nstop_timeout = \"1s\"\n",
            tb.registry
        );
        Project::one_app(tb, name, env, "h1", &app)
    }

    /// A project with the app `hello` (`app`: the keys of its table) on `host`, without Consul.
    fn one_app(tb: &Testbed, name: &str, env: &str, host: &str, app: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let toml = format!(
            r#"[project]
name = "{name}"

[registry]
server = "{r}"
insecure = true
username = {{ env = "FLEET_REGISTRY_USER" }}
password = {{ env = "FLEET_REGISTRY_PASSWORD" }}

[hosts.{host}]
address = "{a}"
user = "root"

[apps.hello]
{app}
[environments.{env}]
hosts = ["{host}"]
"#,
            r = tb.registry,
            a = tb.host(host).address,
        );
        std::fs::write(root.join("fleet.toml"), toml).unwrap();
        Project {
            _dir: dir,
            root,
            name: name.to_string(),
        }
    }

    /// manifests/hello (built here, Consul), on h1 only, in two environments: production and
    /// staging.
    fn hello_on_one_host(name: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("m");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/hello");
        std::fs::create_dir_all(root.join("app")).unwrap();
        for f in ["Dockerfile", "VERSION", "health", "index.html", "start.sh"] {
            std::fs::copy(src.join("app").join(f), root.join("app").join(f)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("app/busybox")).unwrap();
        let toml = std::fs::read_to_string(src.join("fleet.toml"))
            .unwrap()
            .replacen("name = \"hello\"", &format!("name = \"{name}\""), 1)
            .replace("interval = \"2s\"", "interval = \"1s\"")
            .replace("deadline = \"30s\"", "deadline = \"10s\"")
            .replace("stop_timeout = \"5s\"", "stop_timeout = \"1s\"")
            .replace(
                "hosts = [\"h1\", \"h2\", \"h3\"]",
                "hosts = [\"h1\"]\n\n[environments.staging]\nhosts = [\"h1\"]",
            );
        assert!(toml.contains("[environments.staging]"));
        std::fs::write(root.join("fleet.toml"), toml).unwrap();
        Project {
            _dir: dir,
            root,
            name: name.to_string(),
        }
    }

    fn run(&self, tb: &Testbed, args: &[&str]) -> Output {
        let mut c: Command = tb.fleet();
        c.arg("-f")
            .arg(self.root.join("fleet.toml"))
            .args(args)
            .stdin(Stdio::null());
        c.output().unwrap()
    }

    fn deploy(&self, tb: &Testbed, env: &str) -> Output {
        self.run(tb, &["deploy", env, "--yes", "--drain", "0s"])
    }

    /// `fleet releases ENV --json`: (project, env) of each release.
    fn releases(&self, tb: &Testbed, env: &str) -> Vec<(String, String)> {
        let o = self.run(tb, &["releases", env, "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["project"].as_str().unwrap_or("").to_string(),
                    r["env"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// The container name fleet gives instance 1 of `hello` in `env`.
    fn container_name(&self, env: &str) -> String {
        let loaded = fleet::manifest::load(Some(&self.root.join("fleet.toml"))).unwrap();
        let d = loaded.resolve(env, &Default::default()).unwrap();
        d.hosts[0].instances[0].container_name(&d.project, &d.environment)
    }

    /// The content tag the current sources build to.
    fn tag(&self) -> String {
        let loaded = fleet::manifest::load(Some(&self.root.join("fleet.toml"))).unwrap();
        let (targets, _) = loaded.build_targets();
        fleet::build::versions(&targets).unwrap()["hello"].clone()
    }

    fn set_version(&self, v: &str) {
        std::fs::write(self.root.join("app/VERSION"), format!("{v}\n")).unwrap();
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Removes what the test made (projects, and named containers / image tags) when dropped.
struct Cleanup<'a> {
    tb: &'a Testbed,
    projects: Vec<String>,
    /// Shell run on a host at the end (containers and tags made by hand).
    shell: Vec<(&'static str, String)>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for p in &self.projects {
            self.tb.forget_project(p);
        }
        for (host, sh) in &self.shell {
            let _ = self.tb.ssh(host, &format!("{sh}; true"));
        }
    }
}

/// `(name, fleet.project, fleet.env)` of every container of `project` on h1.
fn containers(tb: &Testbed, project: &str) -> Vec<(String, String)> {
    let out = tb.ssh_ok(
        "h1",
        &format!(
            "docker ps -a --filter label=fleet.project={project} --format '{{{{.Names}}}} {{{{.Label \"fleet.env\"}}}}'"
        ),
    );
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn projects_whose_names_spell_the_same_keep_their_own_containers_lock_and_ledger() {
    let Some(tb) = Testbed::get("ownership_names") else {
        return;
    };
    let base = format!("own{}", std::process::id());
    let a = Project::prebuilt(&tb, &base, "eu-prod");
    let b = Project::prebuilt(&tb, &format!("{base}-eu"), "prod");
    let _cleanup = Cleanup {
        tb: &tb,
        projects: vec![a.name.clone(), b.name.clone()],
        shell: Vec::new(),
    };

    let o = a.deploy(&tb, "eu-prod");
    assert!(o.status.success(), "{}", text(&o));
    let o = b.deploy(&tb, "prod");
    assert!(o.status.success(), "{}", text(&o));
    let ca = containers(&tb, &a.name);
    let cb = containers(&tb, &b.name);
    assert_eq!(ca.len(), 1, "{} lost its container: {ca:?}", a.name);
    assert_eq!(cb.len(), 1, "{cb:?}");
    assert_ne!(ca[0].0, cb[0].0);
    // Each ledger holds its own release only, and says whose it is.
    assert_eq!(
        a.releases(&tb, "eu-prod"),
        [(a.name.clone(), "eu-prod".to_string())]
    );
    assert_eq!(
        b.releases(&tb, "prod"),
        [(b.name.clone(), "prod".to_string())]
    );

    // A container named the old way (`<project>-<env>-<app>-<n>-<version>`) is still the
    // instance: no replace for its name.
    tb.ssh_ok(
        "h1",
        &format!("docker rename {} {}-eu-prod-hello-1-v1", ca[0].0, a.name),
    );
    let o = a.run(&tb, &["plan", "eu-prod", "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn a_foreign_container_holding_the_name_is_left_alone() {
    let Some(tb) = Testbed::get("ownership_foreign") else {
        return;
    };
    let p = Project::prebuilt(&tb, &format!("own{}f", std::process::id()), "test");
    let name = p.container_name("test");
    let _cleanup = Cleanup {
        tb: &tb,
        projects: vec![p.name.clone()],
        shell: vec![("h1", format!("docker rm -f {name} >/dev/null 2>&1"))],
    };
    let image = format!("{}/fleet-test/hello:v1", tb.registry);
    // Someone else's container, with the name fleet wants, and labels of another project.
    let id = tb.ssh_ok(
        "h1",
        &tb.with_login(&format!(
            "run -d --name {name} --label fleet.project=someone-else --label fleet.env=test {image}"
        )),
    );
    let o = p.deploy(&tb, "test");
    assert!(
        !o.status.success(),
        "the deploy took the name:\n{}",
        text(&o)
    );
    let t = text(&o);
    assert!(
        t.contains(&name) && t.contains("fleet.project=someone-else"),
        "the error names neither the container nor its owner:\n{t}"
    );
    let still = tb.ssh_ok(
        "h1",
        &format!("docker inspect -f '{{{{.Id}}}} {{{{.State.Running}}}}' {name}"),
    );
    assert_eq!(still, format!("{} true", id.lines().last().unwrap().trim()));
}

#[test]
fn a_staging_deploy_keeps_what_production_keeps_on_a_shared_host() {
    let Some(tb) = Testbed::get("ownership_prune") else {
        return;
    };
    let p = Project::hello_on_one_host(&format!("own{}p", std::process::id()));
    let repo = format!("{}/{}/hello", tb.registry, p.name);
    let foreign = format!(
        "{}/fleet-test/own-foreign-{}:keep",
        tb.registry,
        std::process::id()
    );
    let _cleanup = Cleanup {
        tb: &tb,
        projects: vec![p.name.clone()],
        shell: vec![("h1", format!("docker rmi {foreign} >/dev/null 2>&1"))],
    };
    let has = |reference: &str| {
        tb.ssh(
            "h1",
            &format!("docker image inspect {reference} >/dev/null 2>&1"),
        )
        .status
        .success()
    };

    let mut tags = Vec::new();
    for (v, env) in [("v1", "production"), ("v2", "production")] {
        p.set_version(v);
        tags.push(p.tag());
        let o = p.deploy(&tb, env);
        assert!(o.status.success(), "{v} to {env}:\n{}", text(&o));
    }
    // Production's previous version also carries a tag outside fleet's repository.
    tb.ssh_ok("h1", &format!("docker tag {repo}:{} {foreign}", tags[0]));
    for (v, env) in [
        ("v3", "staging"),
        ("v4", "staging"),
        ("v5", "staging"),
        ("v6", "staging"),
    ] {
        p.set_version(v);
        tags.push(p.tag());
        let o = p.deploy(&tb, env);
        assert!(o.status.success(), "{v} to {env}:\n{}", text(&o));
        // Production's release and the one it keeps for rollback stay, whatever staging does.
        for t in &tags[..2] {
            assert!(
                has(&format!("{repo}:{t}")),
                "after {v} to {env}: {repo}:{t} is gone"
            );
        }
        assert!(has(&foreign), "after {v} to {env}: {foreign} is gone");
    }
    // Staging keeps its newest three (the default) and pruned its oldest.
    for t in &tags[3..] {
        assert!(has(&format!("{repo}:{t}")), "{repo}:{t} is gone");
    }
    assert!(
        !has(&format!("{repo}:{}", tags[2])),
        "staging's oldest version was not pruned"
    );

    // Destroying staging untags what its record kept and deletes the record; production's
    // images, and the tag outside fleet's repository, stay.
    let o = p.run(&tb, &["destroy", "staging", "--yes"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("{repo}:{} on h1", tags[5])),
        "the list names the images:\n{}",
        text(&o)
    );
    assert!(text(&o).contains(", 3 images."), "{}", text(&o));
    for t in &tags[3..] {
        assert!(!has(&format!("{repo}:{t}")), "{repo}:{t} survived destroy");
    }
    for t in &tags[..2] {
        assert!(has(&format!("{repo}:{t}")), "destroy took production's {t}");
    }
    assert!(has(&foreign), "destroy took {foreign}");
    let record = format!("/var/lib/fleet/{}.staging.images", p.name);
    let gone = tb.ssh("h1", &format!("test ! -e {record}"));
    assert!(gone.status.success(), "{record} is still there");
}

#[test]
fn manifest_credentials_go_only_to_their_own_registry() {
    let Some(tb) = Testbed::get("ownership_credentials") else {
        return;
    };
    // The same registry under another name (its address on h2's link; h2's engine lists it as
    // insecure): for fleet, a registry other than the manifest's.
    let pushed = tb.push_unique_image("own-creds");
    let (net, _) = tb.host("h2").address.rsplit_once('.').unwrap();
    let (_, port) = tb.registry.rsplit_once(':').unwrap();
    let other_server = format!("{net}.1:{port}");
    let image = pushed.replacen(&tb.registry, &other_server, 1);
    let p = Project::one_app(
        &tb,
        &format!("own{}c", std::process::id()),
        "test",
        "h2",
        &format!("image = \"{image}\"\n"),
    );
    let _cleanup = Cleanup {
        tb: &tb,
        projects: vec![p.name.clone()],
        shell: vec![("h2", format!("docker rmi {image} >/dev/null 2>&1"))],
    };
    let config = tempfile::tempdir().unwrap();
    let deploy = || {
        let mut c = tb.fleet();
        c.env("DOCKER_CONFIG", config.path())
            .arg("-f")
            .arg(p.root.join("fleet.toml"))
            .args(["deploy", "test", "--yes"])
            .stdin(Stdio::null());
        c.output().unwrap()
    };
    // No Docker config entry for the other registry: the pull goes without credentials (the
    // manifest's are not sent there) and the registry refuses it.
    let o = deploy();
    assert!(
        !o.status.success(),
        "the pull from {other_server} got credentials:\n{}",
        text(&o)
    );
    assert!(
        text(&o).contains(&format!("pulling {image}")),
        "{}",
        text(&o)
    );
    // `docker login` for that registry: its own credentials go with the pull.
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", tb.registry_user, tb.registry_password));
    std::fs::write(
        config.path().join("config.json"),
        format!(r#"{{"auths":{{"{other_server}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let o = deploy();
    assert!(o.status.success(), "{}", text(&o));
}
