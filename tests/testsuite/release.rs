//! A release is whole (issue 22): manifests/koa's config goes back with its version, on the
//! testbed's three hosts, through the real binary.
//!
//! One project for every step, to keep CI short:
//! 1. a deploy of greeting `one`;
//! 2. greeting `two` with a version whose health check fails: the deploy fails, and the old
//!    containers answer `one` again (the KV was written back), not `two`;
//! 3. greeting `two` with a good new version; then `fleet rollback` returns the old image and
//!    `one` together, and its plan shows the KV change;
//! 4. a deploy that changes 40 keys is SIGKILLed as soon as the first change is visible in the
//!    store: every reader sees all 40 changed or none, then and after the kill.
use crate::support;

use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fleet::consul::{ConsulClient, KvPair, QueryOptions};
use support::Testbed;

use crate::support::koa;
use koa::*;

const KEYS: usize = 40;

/// The config line of manifests/koa's `app`, as committed.
const CONFIG: &str = "config = { greeting = \"Hello Koa@2, from Consul KV\" }";

fn config(greeting: &str, many: &str) -> String {
    let keys: Vec<String> = (0..KEYS)
        .map(|i| format!("\"many/k{i:02}\" = \"{many}\""))
        .collect();
    format!(
        "config = {{ greeting = \"{greeting}\", {} }}",
        keys.join(", ")
    )
}

/// What every host's `app` answers (one request per registered instance).
fn greetings(k: &Koa, tb: &Testbed) -> Vec<String> {
    let mut out = Vec::new();
    for h in HOSTS {
        for (_, port) in registered(tb, h, &k.service) {
            let (code, body) = get(&format!("http://{}:{port}/", tb.host(h).address));
            assert_eq!(code, 200, "{h}:{port}");
            out.push(body);
        }
    }
    out
}

fn wait_greeting(k: &Koa, tb: &Testbed, want: &str) {
    wait_for(
        Duration::from_secs(20),
        &format!("every host answers {want:?}"),
        || {
            let g = greetings(k, tb);
            (g.len() == HOSTS.len() && g.iter().all(|g| g == want)).then_some(())
        },
    );
}

/// The version each host's `app` runs (fleet status).
fn versions(k: &Koa, tb: &Testbed) -> Vec<String> {
    HOSTS
        .iter()
        .map(|h| {
            status_row(k, tb, "app", h)["version"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// The testbed's Consul server, where the agents keep the one KV store.
fn store(tb: &Testbed) -> ConsulClient {
    ConsulClient::new(
        "http://127.0.0.1:8300",
        operate_support::consul_token(tb),
        None,
    )
    .unwrap()
}

/// How many of the `many/` keys hold `value`, in one listing.
fn holding(pairs: &[KvPair], value: &str) -> usize {
    pairs
        .iter()
        .filter(|p| p.key.contains("/many/") && p.value_str() == value)
        .count()
}

use crate::support::operate as operate_support;

#[test]
fn config_goes_back_with_the_release() {
    let Some(tb) = Testbed::get("config_goes_back_with_the_release") else {
        return;
    };
    let k = Koa::new();
    k.edit(|t| t.replacen(CONFIG, &config("one", "a"), 1));
    // One runtime whose workers always run: fleet's HTTP client keeps one pool for the
    // process, and a pooled connection is driven by the runtime that opened it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let kv = store(&tb);
    let prefix = format!("{}/production/app/", k.project);
    let read = |key: &str| {
        rt.block_on(kv.kv_get(&format!("{prefix}{key}")))
            .unwrap()
            .map(|p| p.value_str())
    };

    // 1. Greeting `one`.
    k.deploy(&tb, "the deploy of `one`");
    wait_greeting(&k, &tb, "one");
    let v1 = versions(&k, &tb);
    let releases = ledger(&k, &tb);
    assert_eq!(
        releases[0]["config"]["app"]["values"]["greeting"], "one",
        "the release records its config: {}",
        releases[0]
    );

    // 2. Greeting `two` with a version that never passes its health check.
    k.edit(|t| {
        t.replacen(&config("one", "a"), &config("two", "a"), 1)
            .replacen(
                "port = 3000 ",
                "port = 3000\ncommand = [\"sh\", \"-c\", \"touch /tmp/unhealthy; exec pm2-runtime start ecosystem.json --env docker\"]\n",
                1,
            )
            // It fails in seconds, not a minute (the deadline is not in the spec hash: the
            // good versions keep the manifest's, which a loaded machine may need).
            .replacen("deadline = \"60s\"", "deadline = \"8s\"", 1)
    });
    let o = k.run(&tb, &["deploy", "production", "--yes"]);
    let out = text(&o);
    assert!(
        !o.status.success(),
        "a failing version must fail the deploy:\n{out}"
    );
    assert!(
        out.contains("written back"),
        "the config is written back:\n{out}"
    );
    assert_eq!(read("greeting").as_deref(), Some("one"), "{out}");
    wait_greeting(&k, &tb, "one");
    assert_eq!(versions(&k, &tb), v1, "the old containers serve");

    // 3. Greeting `two` with a good new version, then back.
    k.edit(|t| {
        t.replacen(
            "command = [\"sh\", \"-c\", \"touch /tmp/unhealthy; exec pm2-runtime start ecosystem.json --env docker\"]\n",
            "",
            1,
        )
        .replacen("deadline = \"8s\"", "deadline = \"60s\"", 1)
    });
    set_version_line(&k, true);
    k.deploy(&tb, "the good deploy of `two`");
    wait_greeting(&k, &tb, "two");
    let v2 = versions(&k, &tb);
    assert_ne!(v2, v1);
    let o = k.run(&tb, &["rollback", "production", "--yes"]);
    let out = text(&o);
    assert!(o.status.success(), "rollback failed:\n{out}");
    assert!(
        out.contains(&format!("{prefix}greeting")),
        "the rollback's plan shows the KV change:\n{out}"
    );
    wait_greeting(&k, &tb, "one");
    assert_eq!(
        versions(&k, &tb),
        v1,
        "the old image came back with the old config"
    );

    // 4. Killed while it writes 40 keys: all or none, at the first moment and after. The
    //    manifest says what runs now (v1, `one`) but for the 40 keys: a KV-only deploy.
    set_version_line(&k, false);
    k.edit(|t| t.replacen(&config("two", "a"), &config("one", "b"), 1));
    let o = k.run(&tb, &["plan", "production"]);
    assert!(
        text(&o).contains("0 to create, 0 to replace"),
        "only the KV changes:\n{}",
        text(&o)
    );
    let before = rt
        .block_on(kv.kv_list(&prefix, QueryOptions::default()))
        .unwrap();
    assert_eq!(holding(&before.value, "a"), KEYS);
    let (tx, rx) = mpsc::channel();
    let watch_prefix = prefix.clone();
    let watch_kv = store(&tb);
    let watcher = rt.spawn(async move {
        // The first listing that differs: the store at the moment of the first write.
        let mut index = before.index;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let r = watch_kv
                .kv_list(
                    &watch_prefix,
                    QueryOptions::blocking(index, Duration::from_secs(10)),
                )
                .await
                .unwrap();
            if holding(&r.value, "a") != KEYS {
                let _ = tx.send(r.value);
                return;
            }
            index = r.index;
        }
    });
    let mut child = tb
        .fleet()
        .arg("-f")
        .arg(k.manifest())
        .args(["deploy", "production", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the deploy wrote nothing within 60 s");
    let _ = child.kill();
    let _ = child.wait();
    rt.block_on(watcher).unwrap();
    let changed = holding(&first, "b");
    println!("at the first visible write: {changed} of {KEYS} keys changed");
    assert_eq!(changed, KEYS, "a reader saw part of the app's new config");
    let after = rt
        .block_on(kv.kv_list(&prefix, QueryOptions::default()))
        .unwrap();
    let n = holding(&after.value, "b");
    assert!(
        n == 0 || n == KEYS,
        "after the kill {n} of {KEYS} keys changed"
    );
    // The next deploy takes the dead deploy's lock over and converges.
    k.deploy(&tb, "the deploy after the kill");
    let o = k.run(&tb, &["plan", "production", "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// The ledger's records, newest first.
fn ledger(k: &Koa, tb: &Testbed) -> Vec<serde_json::Value> {
    let o = k.run(tb, &["releases", "production", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .or_else(|| v["releases"].as_array())
        .cloned()
        .unwrap_or_else(|| panic!("no releases in {v}"))
}

/// A new content tag for `app` (one more line in app.js), or the first one back (without it).
/// A new file each time: the copy is hard-linked to manifests/koa.
fn set_version_line(k: &Koa, on: bool) {
    const LINE: &str = "// another release\n";
    let path = k.root.join("app/app.js");
    let js = std::fs::read_to_string(&path).unwrap();
    let js = match on {
        true => format!("{js}{LINE}"),
        false => js
            .strip_suffix(LINE)
            .expect("the line was added")
            .to_string(),
    };
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, js).unwrap();
}
