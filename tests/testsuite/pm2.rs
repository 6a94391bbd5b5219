//! pm2 inside the container (issue 22, items 5 and 6), end to end on the testbed's three hosts
//! with manifests/koa (pm2-runtime, 2 cluster workers per container):
//!
//! 1. `fleet status --json` lists each container's 2 workers (pid, restarts, memory).
//! 2. A version whose second worker exits at start (`CRASH_WORKER=1`, which `app.js` compares
//!    with pm2's `NODE_APP_INSTANCE`) fails its deploy on the workers gate while its `/health`
//!    answers 200 (the first worker serves it), and every host keeps the old container.
//! 3. A worker crash (`GET /crash`) shows as that worker's restart in `fleet status`, table and
//!    JSON, while Docker's count stays 0.
//!
//! One deploy is shared by the steps; the gate is short (`deadline = "20s"`,
//! `min_healthy = "2s"`) to keep the test fast. Needs `cargo xtask testbed image` (the node:20
//! base image and manifests/koa's node_modules).
use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::Testbed;

use crate::support::koa;
use koa::*;

/// `fleet status production app --json`'s rows, by host.
fn rows_by_host(k: &Koa, tb: &Testbed) -> BTreeMap<String, Value> {
    status_rows(k, tb, "app")
        .into_iter()
        .map(|r| (r["host"].as_str().unwrap().to_string(), r))
        .collect()
}

/// The app's running container on `host` whose ID is not `old`, with its published port.
fn other_container(tb: &Testbed, k: &Koa, host: &str, old: &str) -> Option<(String, u16)> {
    let ids = tb.ssh_ok(
        host,
        &format!(
            "docker ps -q --filter label=fleet.project={} --filter label=fleet.app=app",
            k.project
        ),
    );
    let id = ids.lines().map(str::trim).find(|id| *id != old)?;
    let port = tb.ssh(host, &format!("docker port {id} 3000/tcp"));
    let port = String::from_utf8_lossy(&port.stdout);
    let port = port
        .lines()
        .next()?
        .rsplit(':')
        .next()?
        .trim()
        .parse()
        .ok()?;
    Some((id.to_string(), port))
}

#[test]
fn pm2_workers_in_status_and_in_the_health_gate() {
    let Some(tb) = Testbed::get("pm2_workers_in_status_and_in_the_health_gate") else {
        return;
    };
    let k = Koa::new();
    k.edit(|t| {
        t.replacen(
            "deregister_after = \"1m\", deadline = \"60s\" }",
            "deregister_after = \"1m\", deadline = \"20s\", min_healthy = \"2s\" }",
            1,
        )
    });

    // 1. Deploy the app (not the client: not needed here); every container lists 2 workers.
    k.deploy_with(
        &tb,
        &["deploy", "production", "--yes", "--app", "app"],
        "the first deploy",
    );
    let rows = rows_by_host(&k, &tb);
    let mut old = BTreeMap::new();
    for h in HOSTS {
        let r = &rows[h];
        let w = r["workers"]
            .as_array()
            .unwrap_or_else(|| panic!("{h}: no workers: {r}"));
        assert_eq!(w.len(), 2, "{h}: {r}");
        for (n, w) in w.iter().enumerate() {
            assert_eq!(w["pm_id"], n, "{h}: {w}");
            assert_eq!(w["name"], "app", "{h}: {w}");
            assert_eq!(w["status"], "online", "{h}: {w}");
            assert!(w["pid"].as_u64().is_some_and(|p| p > 0), "{h}: {w}");
            assert_eq!(w["restarts"], 0, "{h}: {w}");
            assert!(
                w["memory"].as_u64().unwrap_or(0) > 10 << 20,
                "a Node worker uses more than 10 MiB: {h}: {w}"
            );
            assert!(w["uptime_s"].as_u64().is_some(), "{h}: {w}");
        }
        old.insert(h, container(&tb, h, &k.project, "app"));
    }
    // The client is not deployed: a row without a container has no `workers` key.
    let client = status_row(&k, &tb, "client", "h1");
    let client = client.as_object().unwrap();
    assert!(
        client["state"] == "missing" && !client.contains_key("workers"),
        "{client:?}"
    );

    // 2. Worker 1 exits at start: pm2 restarts it, worker 0 answers /health; the gate fails
    // the deploy and every host keeps its old container.
    k.edit(|t| {
        t.replacen(
            "env = { NODE_ENV = \"production\", REDIS",
            "env = { NODE_ENV = \"production\", CRASH_WORKER = \"1\", REDIS",
            1,
        )
    });
    let mut cmd = tb.fleet();
    cmd.arg("-f").arg(k.manifest()).args([
        "deploy",
        "production",
        "--yes",
        "--app",
        "app",
        "--no-build",
        "--json",
    ]);
    let run = support::Run::start(cmd);
    // While the deploy runs: the new container on h1 answers /health with 200.
    let (new, port) = wait_for(Duration::from_secs(30), "the new container on h1", || {
        other_container(&tb, &k, "h1", &old["h1"])
    });
    let addr = &tb.host("h1").address;
    let answered = wait_for(
        Duration::from_secs(20),
        "/health of the new container",
        || {
            let (code, _) = get(&format!("http://{addr}:{port}/health"));
            // Gone already (the gate failed first): report that, as a failure of this test.
            let alive = !tb
                .ssh_ok("h1", &format!("docker ps -q --no-trunc --filter id={new}"))
                .is_empty();
            (code == 200 || !alive).then_some(code == 200)
        },
    );
    assert!(
        answered,
        "the crashing version's /health never answered 200 before it was removed"
    );
    let (status, out, _) = run.finish(Duration::from_secs(90));
    assert_eq!(status.code(), Some(1), "the deploy must fail:\n{out}");
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let failures = report["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 3, "{report:#}");
    for f in failures {
        let reason = f["reason"].as_str().unwrap();
        // pm2 gives up on a worker that exits within its min_uptime (1 s) 16 times in a row
        // (`errored`: the gate fails at once); on a busy machine a start can take longer, and
        // pm2 restarts it forever: the gate fails at the deadline, counting the restarts.
        assert!(
            reason.starts_with("health check failed: ")
                && (reason.contains("pm2 worker 1 (app) errored after ")
                    || (reason.contains("not healthy within 20s: pm2 worker 1 (app) restarted ")
                        && reason.contains(" times in "))),
            "{f}"
        );
    }
    // Every instance failed its gate, so none was replaced: the new containers are gone, the
    // old ones serve on, and the release says `failed`.
    assert_eq!(report["rolled_back"], serde_json::json!([]), "{report:#}");
    let o = k.run(&tb, &["releases", "production", "--json"]);
    let releases: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(releases[0]["outcome"], "failed", "{releases:#}");
    assert_eq!(releases[1]["outcome"], "succeeded", "{releases:#}");
    for h in HOSTS {
        assert_eq!(
            container(&tb, h, &k.project, "app"),
            old[h],
            "{h} runs its old container alone"
        );
        assert_eq!(registered(&tb, h, &k.service).len(), 1, "{h}");
    }
    let rows = rows_by_host(&k, &tb);
    for h in HOSTS {
        let w = rows[h]["workers"].as_array().unwrap();
        assert!(
            w.len() == 2 && w.iter().all(|w| w["status"] == "online"),
            "{h}: {}",
            rows[h]
        );
    }

    // 3. A worker that crashes is restarted by pm2: its own restart count says so.
    let (a1, p1) = (addr, registered(&tb, "h1", &k.service)[0].1);
    assert_eq!(get(&format!("http://{a1}:{p1}/crash")).0, 200);
    let row = wait_for(Duration::from_secs(15), "pm2 restarts the worker", || {
        let r = rows_by_host(&k, &tb).remove("h1").unwrap();
        let w = r["workers"].as_array()?;
        let restarts: u64 = w.iter().filter_map(|w| w["restarts"].as_u64()).sum();
        (w.len() == 2 && restarts == 1 && w.iter().all(|w| w["status"] == "online")).then_some(r)
    });
    assert_eq!(row["restarts"], 0, "pm2, not Docker, restarted it: {row}");
    let o = k.run(&tb, &["info", "production", "app", "--host", "h1"]);
    let info = text(&o);
    assert!(o.status.success(), "{info}");
    let section = info
        .split("  pm2 workers\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no pm2 workers section:\n{info}"));
    let lines: Vec<&str> = section.lines().take(2).collect();
    assert!(
        lines[0].trim_start().starts_with("0 app  pid ")
            && lines[1].trim_start().starts_with("1 app  pid ")
            && lines.iter().all(|l| l.contains(", online, "))
            && lines.iter().any(|l| l.contains(", 1 restart, ")),
        "{info}"
    );
    let o = k.run(&tb, &["status", "production", "app"]);
    let table = text(&o);
    assert!(o.status.success(), "{table}");
    let lines: Vec<&str> = table.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains(" h1 ") && l.contains("running"))
        .unwrap_or_else(|| panic!("{table}"));
    let workers = &lines[at + 1..at + 3];
    assert!(
        workers[0].contains("├ 0 app") && workers[1].contains("└ 1 app"),
        "{table}"
    );
    let cells = |l: &str| -> Vec<String> {
        l.split('┆')
            .map(|c| {
                c.trim_matches(|ch: char| ch == '│' || ch.is_whitespace())
                    .to_string()
            })
            .collect()
    };
    let restarts: Vec<String> = workers.iter().map(|l| cells(l)[7].clone()).collect();
    assert!(
        restarts.contains(&"1".to_string()) && restarts.contains(&"0".to_string()),
        "one worker restarted once:\n{table}"
    );
    for l in workers {
        let c = cells(l);
        assert!(
            c[3].starts_with("pid ") && c[5] == "online" && c[10].ends_with("MiB"),
            "{l}"
        );
    }
}
