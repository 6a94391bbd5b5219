//! The users' own stack end to end (issue 12): manifests/koa (a Koa app under pm2-runtime,
//! configured from Consul KV, and a client that finds it through Consul DNS) deployed to the
//! testbed's three hosts by the real binary.
//!
//! Step 6 cuts h2's link in the middle of a rollout (issue 15).
//!
//! One deploy is shared by every assertion (each phase is a step of `koa_stack`), to keep CI
//! short. Needs `cargo xtask testbed image` (the node:20 base image and manifests/koa's
//! node_modules), as `cargo xtask ci` runs before the tests.
use crate::support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::Testbed;

use crate::support::koa;
use koa::*;

#[test]
fn koa_stack() {
    let Some(tb) = Testbed::exclusive("koa_stack") else {
        return;
    };
    let k = Koa::new();

    // 1. Health-gated deploy, one Consul service instance per fleet instance (one per host).
    k.deploy(&tb, "the first deploy");
    let mut ports = Vec::new();
    for h in HOSTS {
        let regs = registered(&tb, h, &k.service);
        assert_eq!(regs.len(), 1, "{h}: {regs:?}");
        ports.push((tb.host(h).address.clone(), regs[0].1));
    }
    let passing = tb.ssh_ok(
        "h1",
        &format!(
            "curl -s 'http://127.0.0.1:8500/v1/health/service/{}?passing'",
            k.service
        ),
    );
    let passing: Value = serde_json::from_str(&passing).unwrap();
    assert_eq!(passing.as_array().unwrap().len(), 3, "{passing}");

    // The accessory (issue 21): `app` on every host counts its visits in `redis` (on h1),
    // found by its Consul name; one counter for all.
    let redis = container(&tb, "h1", &k.project, "redis");
    assert!(!redis.is_empty(), "the accessory runs on h1");
    let visits = |addr: &str, port: u16| -> u64 {
        let (code, body) = get(&format!("http://{addr}:{port}/visits"));
        assert_eq!(code, 200, "{addr}:{port}/visits: {body}");
        body.parse()
            .unwrap_or_else(|_| panic!("{addr}:{port}/visits: {body}"))
    };
    let counts: Vec<u64> = ports.iter().map(|(a, p)| visits(a, *p)).collect();
    assert_eq!(
        counts,
        vec![1, 2, 3],
        "one counter, reached from every host"
    );

    // 2. Requests, then `fleet logs`: the workers' stderr at start, stdout per request.
    for (addr, port) in &ports {
        let (code, body) = get(&format!("http://{addr}:{port}/"));
        assert_eq!(code, 200, "{addr}:{port}: {body}");
    }
    let o = k.run(&tb, &["logs", "production", "app"]);
    assert!(o.status.success(), "logs failed:\n{}", text(&o));
    let logs = String::from_utf8_lossy(&o.stdout);
    for h in HOSTS {
        // Two cluster workers per container, each says it once.
        let errs = logs
            .lines()
            .filter(|l| *l == format!("app#1@{h} (err): fake error"))
            .count();
        assert_eq!(errs, 2, "{h}:\n{logs}");
        assert!(
            logs.contains(&format!("app#1@{h} (out): send response")),
            "{h}:\n{logs}"
        );
    }

    // 3. A crashed worker is restarted by pm2 (the container stays), a killed main process by
    // Docker's restart policy, and `fleet status` counts that restart, with CPU and memory.
    let (a1, p1) = ports[0].clone();
    let c1 = container(&tb, "h1", &k.project, "app");
    let workers = |c: &str| {
        tb.ssh_ok(
            "h1",
            &format!("docker top {c} -o pid,args | grep -c app.js || true"),
        )
        .parse::<u32>()
        .unwrap()
    };
    let before = tb.ssh_ok("h1", &format!("docker top {c1} -o pid,args | grep app.js"));
    get(&format!("http://{a1}:{p1}/crash"));
    wait_for(Duration::from_secs(15), "pm2 restarts the worker", || {
        let now = tb.ssh_ok("h1", &format!("docker top {c1} -o pid,args | grep app.js"));
        (now != before && workers(&c1) == 2).then_some(())
    });
    assert_eq!(
        tb.ssh_ok(
            "h1",
            &format!("docker inspect -f '{{{{.RestartCount}}}}' {c1}")
        ),
        "0",
        "pm2, not Docker, restarted the worker"
    );
    assert_eq!(get(&format!("http://{a1}:{p1}/")).0, 200);
    let o = k.run(&tb, &["logs", "production", "app", "--host", "h1"]);
    let logs = text(&o);
    assert!(
        logs.contains("(err): worker") && logs.contains("crashing"),
        "{logs}"
    );

    tb.ssh_ok(
        "h1",
        &format!("kill -9 $(docker inspect -f '{{{{.State.Pid}}}}' {c1})"),
    );
    wait_for(
        Duration::from_secs(30),
        "Docker restarts the container",
        || {
            let state = tb.ssh_ok(
                "h1",
                &format!("docker inspect -f '{{{{.RestartCount}}}} {{{{.State.Running}}}}' {c1}"),
            );
            (state == "1 true").then_some(())
        },
    );
    // The same port after the restart: fleet pinned it at create (Docker alone would pick a new
    // ephemeral one, leaving the Consul registration on a dead port).
    wait_for(Duration::from_secs(30), "the app answers again", || {
        (get(&format!("http://{a1}:{p1}/")).0 == 200).then_some(())
    });
    let row = status_row(&k, &tb, "app", "h1");
    assert_eq!(row["restarts"], 1, "{row}");
    assert!(row["cpu_percent"].as_f64().is_some(), "{row}");
    assert!(
        row["memory_bytes"].as_u64().unwrap_or(0) > 10 << 20,
        "node uses more than 10 MiB: {row}"
    );
    let o = k.run(&tb, &["status", "production", "app"]);
    let table = text(&o);
    let line = table.lines().find(|l| l.contains(" h1 ")).unwrap_or("");
    assert!(
        line.contains("MiB") && line.contains('%'),
        "status shows CPU and memory:\n{table}"
    );

    // 4. Config on the fly: the greeting comes from KV (the deploy wrote it before starting the
    // containers); a change plans only a KV put, and every worker answers with it within 2 s.
    for (addr, port) in &ports {
        wait_for(Duration::from_secs(5), "the greeting from KV", || {
            (get(&format!("http://{addr}:{port}/")).1 == "Hello Koa@2, from Consul KV")
                .then_some(())
        });
    }
    let greeting = format!("Hola {}", support::unique());
    k.edit(|t| t.replace("Hello Koa@2, from Consul KV", &greeting));
    let o = k.run(&tb, &["plan", "production"]);
    let plan = text(&o);
    assert!(o.status.success(), "plan failed:\n{plan}");
    assert!(
        plan.contains("0 to create, 0 to replace") && plan.contains("KV: 1 to put"),
        "{plan}"
    );
    let o = k.run(&tb, &["deploy", "production", "--yes"]);
    assert!(o.status.success(), "config deploy failed:\n{}", text(&o));
    let t = Instant::now();
    for (addr, port) in &ports {
        wait_for(
            Duration::from_secs(2).saturating_sub(t.elapsed()),
            "the new greeting",
            || {
                // Both workers: a few requests each way (the cluster master round-robins).
                (0..4)
                    .all(|_| get(&format!("http://{addr}:{port}/")).1 == greeting)
                    .then_some(())
            },
        );
    }

    // 5. Discovery by name: the client reaches `app` through its host's agent's DNS, and an
    // instance that fails its check is no longer in the answer.
    let client_port = registered(&tb, "h1", &format!("client{}", k.id))[0].1;
    let (code, body) = get(&format!("http://{a1}:{client_port}/upstream"));
    assert_eq!((code, body.as_str()), (200, greeting.as_str()));
    let cl = container(&tb, "h1", &k.project, "client");
    let srv = |tb: &Testbed| -> Vec<String> {
        let js = format!(
            "const r=new (require('dns').promises.Resolver)();r.resolveSrv('{}.service.consul').then(async s=>{{const o=[];for(const x of s){{o.push((await r.resolve4(x.name))[0]+':'+x.port)}}console.log(o.sort().join(' '))}}).catch(e=>console.log('error',e.code))",
            k.service
        );
        let out = tb.ssh_ok("h1", &format!("docker exec {cl} node -e \"{js}\""));
        out.split_whitespace().map(str::to_string).collect()
    };
    let mut all: Vec<String> = ports.iter().map(|(a, p)| format!("{a}:{p}")).collect();
    all.sort();
    assert_eq!(srv(&tb), all);
    let c2 = container(&tb, "h2", &k.project, "app");
    tb.ssh_ok("h2", &format!("docker exec {c2} touch /tmp/unhealthy"));
    let rest: Vec<String> = all
        .iter()
        .filter(|a| !a.starts_with(&format!("{}:", tb.host("h2").address)))
        .cloned()
        .collect();
    wait_for(Duration::from_secs(15), "h2's app leaves DNS", || {
        (srv(&tb) == rest).then_some(())
    });
    for _ in 0..6 {
        let (code, body) = get(&format!("http://{a1}:{client_port}/upstream"));
        assert_eq!(code, 200, "the client only picks passing instances: {body}");
    }

    // 6. A host lost in the middle of a rollout (issue 15): h2's link is cut when its app
    // starts to be replaced (a changed env, the same image). fleet names the lost host within
    // seconds and rolls h1 and h3 back, while the client on h1 keeps answering through DNS;
    // once the link is back, one deploy converges.
    k.edit(|t| {
        t.replacen(
            "env = { NODE_ENV = \"production\", REDIS",
            "env = { NODE_ENV = \"production\", RELEASE = \"2\", REDIS",
            1,
        )
    });
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let done = done.clone();
        let url = format!("http://{a1}:{client_port}/upstream");
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                match get(&url) {
                    (200, _) => ok += 1,
                    other => failed.push(other),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (ok, failed)
        })
    };
    let mut cmd = tb.fleet();
    cmd.arg("-f")
        .arg(k.manifest())
        .args(["deploy", "production", "--yes", "--no-build", "--json"])
        .env("FLEET_SSH_KEEPALIVE", "1")
        .stdin(Stdio::null());
    let mut run = support::Run::start(cmd);
    run.wait_line(Duration::from_secs(60), |l| l.contains("h2  app#1 replace"));
    let cut = support::LinkCut::cut("h2");
    let (status, out, _) = run.finish(Duration::from_secs(120));
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = client.join().unwrap();
    assert_eq!(status.code(), Some(1), "{out}");
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let lost = report["failures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["host"] == "h2")
        .unwrap_or_else(|| panic!("no failure on h2: {report:#}"));
    assert_eq!(lost["fault"], "connection-lost", "{report:#}");
    assert_eq!(
        lost["reason"], "connection lost while starting app#1 (10.200.2.2)",
        "{report:#}"
    );
    assert!(
        failed.is_empty() && ok > 5,
        "the client on h1 failed {failed:?} ({ok} ok) while h2 was lost"
    );
    drop(cut);
    let o = k.run(&tb, &["deploy", "production", "--yes", "--no-build"]);
    assert!(
        o.status.success(),
        "deploy after the link came back:\n{}",
        text(&o)
    );
    for h in HOSTS {
        assert_eq!(registered(&tb, h, &k.service).len(), 1, "{h}");
    }
    let o = k.run(&tb, &["plan", "production", "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // 7. The accessory's data survived the config deploy and the replace of every app
    // container above (it was never replaced), and survives `fleet restart` of it.
    assert_eq!(container(&tb, "h1", &k.project, "redis"), redis);
    let port_now = |h: &str| registered(&tb, h, &k.service)[0].1;
    let a2 = tb.host("h2").address.clone();
    assert_eq!(visits(&a2, port_now("h2")), 4, "the count goes on");
    let o = k.run(&tb, &["restart", "production", "redis"]);
    assert!(
        o.status.success(),
        "restart of the accessory:\n{}",
        text(&o)
    );
    wait_for(
        Duration::from_secs(30),
        "the count after the restart",
        || {
            let (code, body) = get(&format!("http://{a2}:{}/visits", port_now("h2")));
            (code == 200).then(|| assert_eq!(body, "5", "the count survives a restart"))
        },
    );
}
