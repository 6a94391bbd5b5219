//! fleet against Consul as a cluster (issue 13), through the real binary on the testbed: a read
//! that ACLs filtered is an error naming the missing rule; a changed check never passes on the
//! old one's status; deploys through different hosts' agents share one lock and one ledger.
//!
//! Each test uses a project of its own (`cl<pid>...`) and removes what it made (`fleet
//! destroy`, also after a failure).

use crate::support;
use crate::support::operate as operate_support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use fleet::consul::{ConsulClient, ServiceRegistration};
use operate_support as ops;
use support::Testbed;

/// The hello image as an app with a Consul service and an HTTP check (a short deadline).
fn web_app(tb: &Testbed, service: &str) -> String {
    format!(
        r#"
[apps.web]
image = "{}"
roles = ["web"]
port = 8080
health = {{ http = "/health", interval = "1s", timeout = "1s", deadline = "6s" }}
service = {{ name = "{service}" }}
stop_timeout = "1s"
"#,
        ops::hello_image(tb)
    )
}

/// A manifest on disk, destroyed (through itself) when dropped.
struct Manifest<'a> {
    tb: &'a Testbed,
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl<'a> Manifest<'a> {
    fn new(tb: &'a Testbed, text: String) -> Manifest<'a> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.toml");
        std::fs::write(&path, text).unwrap();
        Manifest {
            tb,
            _dir: dir,
            path,
        }
    }

    fn edit(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.path).unwrap();
        assert!(text.contains(from), "{from:?} not in the manifest");
        std::fs::write(&self.path, text.replacen(from, to, 1)).unwrap();
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.tb.fleet();
        c.arg("-f").arg(&self.path).args(args).stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
}

impl Drop for Manifest<'_> {
    fn drop(&mut self) {
        ops::destroy_quietly(self.tb, &self.path);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A token that may write keys and sessions but not read services: `plan`, `status` and
/// `destroy` fail (exit 1) naming the rule it lacks, instead of taking Consul's filtered (empty)
/// answer for "nothing registered" and planning to register everything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_cannot_read_services_is_an_error_naming_the_rule() {
    let Some(tb) = Testbed::get("acl_filtered_reads") else {
        return;
    };
    // The testbed's agents run without ACLs: an agent of its own, on h1's gateway (which h1
    // reaches, as it reaches the registry), with ACLs.
    let acl = consul_standin::acl::Acl::from_json(
        r#"{"default_policy": "deny", "tokens": {
            "root": {"management": true},
            "kv-only": {"rules": {"key_prefix": {"": {"policy": "write"}},
                                  "session_prefix": {"": {"policy": "write"}},
                                  "node_prefix": {"": {"policy": "read"}}}}}}"#,
    )
    .unwrap();
    let config = consul_standin::Config {
        acl: Some(acl),
        node: "h1".into(),
        advertise: Some(tb.host("h1").address.clone()),
        ..consul_standin::Config::new("10.200.1.1:0".parse().unwrap())
    };
    let agent = consul_standin::start(config).await.unwrap();
    let project = format!("clacl{}", std::process::id());
    // This project's registration, as a deploy with a stronger token left it.
    let root = ConsulClient::new(&agent.url(), Some("root".into()), None).unwrap();
    let meta = BTreeMap::from([
        ("fleet-project".to_string(), project.clone()),
        ("fleet-env".to_string(), "test".to_string()),
        ("fleet-app".to_string(), "web".to_string()),
        ("fleet-instance".to_string(), "1".to_string()),
    ]);
    let id = format!("{project}-test-web-h1-1-0123456789ab");
    root.register_service(&ServiceRegistration {
        id: Some(id.clone()),
        name: project.clone(),
        meta,
        port: Some(32768),
        ..Default::default()
    })
    .await
    .unwrap();
    let m = Manifest::new(
        &tb,
        ops::manifest(&tb, &project, &["h1"], &web_app(&tb, &project)).replacen(
            "address = \"http://127.0.0.1:8500\"",
            &format!(
                "address = \"{}\"\ntoken = {{ env = \"CLUSTER_TEST_TOKEN\" }}",
                agent.url()
            ),
            1,
        ),
    );
    let run = |args: &[&str]| {
        m.cmd(args)
            .env("CLUSTER_TEST_TOKEN", "kv-only")
            .output()
            .unwrap()
    };
    let rule = r#"add `service_prefix "" { policy = "read" }` to the token's policy"#;
    for args in [
        &["plan", "test"][..],
        &["status", "test"],
        &["destroy", "test", "--yes"],
    ] {
        let o = run(args);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}:\n{out}");
        assert!(
            out.contains("the Consul token cannot read every service on the agent"),
            "{args:?}:\n{out}"
        );
        assert!(out.contains(rule), "{args:?}:\n{out}");
    }
    // Nothing was registered twice, nothing deregistered.
    let services = root.agent_services().await.unwrap();
    assert_eq!(services.keys().collect::<Vec<_>>(), vec![&id]);
    // With the rule, the same plan reads the registration (and exits 0).
    let o = m
        .cmd(&["plan", "test"])
        .env("CLUSTER_TEST_TOKEN", "root")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    drop(m);
    agent.shutdown().await;
}

/// Consul keeps a check's status when a service is registered again, whatever the new
/// definition: a check changed to one that fails must fail the deploy, not pass on the old
/// check's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_check_never_passes_on_the_old_status() {
    let Some(tb) = Testbed::get("changed_check") else {
        return;
    };
    let project = format!("clchk{}", std::process::id());
    let m = Manifest::new(
        &tb,
        ops::manifest(&tb, &project, &["h1"], &web_app(&tb, &project)),
    );
    let o = m.run(&["deploy", "test", "--yes"]);
    assert!(o.status.success(), "first deploy:\n{}", text(&o));
    // The container stays; its registration's check changes (a path that answers 404).
    m.edit("http = \"/health\"", "http = \"/missing\"");
    let o = m.run(&["plan", "test", "--detailed-exitcode"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("definition changed"), "{out}");
    let o = m.run(&["deploy", "test", "--yes"]);
    let out = text(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the new check fails; the deploy must too:\n{out}"
    );
    assert!(out.contains("health check failed"), "{out}");
}

/// Two deploys of one environment started through different hosts' agents (the lock lives
/// where the environment's first host's agent reaches: h1's for one manifest, h2's for the
/// other) exclude each other, and both see the one ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_through_different_agents_share_the_lock_and_the_ledger() {
    let Some(tb) = Testbed::get("lock_across_agents") else {
        return;
    };
    let project = format!("cllock{}", std::process::id());
    let write = |host: &'static str| {
        // The winner holds the lock through a slow pre_deploy hook, so the two overlap.
        let text = ops::manifest(&tb, &project, &[host], &web_app(&tb, &project)).replacen(
            &format!("name = \"{project}\""),
            &format!("name = \"{project}\"\npre_deploy = [\"sleep 2\"]"),
            1,
        );
        Manifest::new(&tb, text)
    };
    let (via_h1, via_h2) = (write("h1"), write("h2"));
    let spawn = |m: &Manifest| {
        m.cmd(&["deploy", "test", "--yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(&via_h1), spawn(&via_h2));
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let ok: Vec<usize> = (0..2).filter(|&i| outs[i].status.success()).collect();
    assert_eq!(
        ok.len(),
        1,
        "exactly one deploy proceeds:\n--- via h1 ---\n{}\n--- via h2 ---\n{}",
        text(&outs[0]),
        text(&outs[1])
    );
    let refused = text(&outs[1 - ok[0]]);
    assert!(
        refused.contains("another deploy holds the lock"),
        "{refused}"
    );
    for m in [&via_h1, &via_h2] {
        let o = m.run(&["releases", "test", "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        let list: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(list.len(), 1, "one ledger: {list:?}");
        assert_eq!(list[0]["outcome"], "succeeded");
        let o = m.run(&["lock", "status", "test"]);
        assert!(text(&o).contains("is free"), "{}", text(&o));
    }
}

/// A deploy lock left by a process of this machine that no longer runs is taken over at once by
/// the next command that needs it, with a line saying from whom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_of_a_process_gone_from_this_machine_is_taken_over_with_a_line() {
    let Some(tb) = Testbed::get("lock_takeover_line") else {
        return;
    };
    let project = format!("clgone{}", std::process::id());
    let m = Manifest::new(
        &tb,
        ops::manifest(&tb, &project, &["h2"], &web_app(&tb, &project)),
    );
    // The lock as a SIGKILLed deploy leaves it: its session still alive, its process gone.
    let desired = ops::resolve(&m.path, "test");
    let store = fleet::release::lock::Store::open(
        &desired,
        &fleet::host::ConnectOptions {
            ssh_config: Some(tb.ssh_config()),
            persist: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let ghost = fleet::release::lock::Holder {
        user: "ghost".into(),
        pid: gone.id(),
        ..fleet::release::lock::Holder::current()
    };
    let held = store.acquire(ghost, "deploy: 1 create").await.unwrap();
    let o = m.run(&["destroy", "test", "--yes"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "Took over the deploy lock of test from ghost on {} (pid {}): that process no longer runs on this machine.",
            held.holder().machine,
            gone.id()
        )),
        "{out}"
    );
    assert!(held.is_lost(), "the old holder's session was ended");
    drop(held);
    store.close().await;
}
