//! The edge (issue 20) on the testbed, through the real binary: a hello app with
//! `public = { host }` on h1..h3, edges (Caddy) on every host, and a probe that sends HTTPS
//! requests with the route's host name to the edges of h1 and h2 (verified against each
//! edge's internal CA, never unverified) while fleet replaces, fails a health check, rolls
//! back, restarts, and deploys with h3's link cut. No failed request in any scenario
//! (`TOLERATED`); every answer from a version that passed its health check; the probe's counts
//! and any failure are printed.
//!
//! One project runs every scenario in turn (few deploys: the CI's time is short); a second
//! test puts two projects on the same edges and destroys one.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{LinkCut, Run, Testbed};

/// Requests per scenario, at least (issue 20's acceptance).
const MIN_REQUESTS: usize = 3000;

/// Edge settings every test here shares (the edges are shared: one set of settings).
fn edge_toml(tb: &Testbed) -> String {
    format!(
        "[edge]\nimage = \"{}/fleet-test/caddy:2\"\ntls = \"internal\"\n\n",
        tb.registry
    )
}

/// `public.timeout = "2s"`: a request in flight to h3 when its link is cut never gets an
/// answer; after 2 s the edge tries it on another instance (the default, 30 s, is longer than
/// the probe waits).
fn hello_app(tb: &Testbed, route: &str, version: &str, extra: &str) -> String {
    format!(
        "[apps.hello]\nimage = \"{}/fleet-test/hello:{version}\"\nport = 8080\n\
         health = {{ http = \"/health\", interval = \"1s\", timeout = \"1s\", deadline = \"15s\" }}\n\
         stop_timeout = \"2s\"\nservice = true\npublic = {{ host = \"{route}\", timeout = \"2s\" }}\n{extra}\n",
        tb.registry
    )
}

struct Proj {
    dir: tempfile::TempDir,
    name: String,
    route: String,
}

impl Proj {
    fn new(tb: &Testbed, prefix: &str) -> Proj {
        let name = format!("{prefix}-{}", support::unique());
        let route = format!("{name}.localhost");
        let p = Proj {
            dir: tempfile::tempdir().unwrap(),
            name,
            route,
        };
        p.write(tb, "v1", "");
        p
    }
    fn manifest(&self) -> PathBuf {
        self.dir.path().join("fleet.toml")
    }
    fn write(&self, tb: &Testbed, version: &str, extra: &str) {
        let apps = format!(
            "{}{}",
            edge_toml(tb),
            hello_app(tb, &self.route, version, extra)
        );
        let m = manifest(tb, &self.name, &["h1", "h2", "h3"], &apps);
        std::fs::write(self.manifest(), m).unwrap();
    }
    fn cmd(&self, tb: &Testbed, args: &[&str]) -> std::process::Command {
        let mut c = tb.fleet();
        c.arg("-f").arg(self.manifest()).args(args);
        c.env("FLEET_SSH_KEEPALIVE", "1s");
        c
    }
    fn run(&self, tb: &Testbed, args: &[&str]) -> (bool, String) {
        let o = self.cmd(tb, args).output().unwrap();
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
}

/// The manifest of tests/testsuite/support/operate.rs (hosts with role `web`, environment `test`).
fn manifest(tb: &Testbed, project: &str, hosts: &[&str], apps: &str) -> String {
    let mut s = format!(
        "[project]\nname = \"{project}\"\n\n[registry]\nserver = \"{}\"\ninsecure = true\nusername = {{ env = \"FLEET_REGISTRY_USER\" }}\npassword = {{ env = \"FLEET_REGISTRY_PASSWORD\" }}\n\n[consul]\naddress = \"http://127.0.0.1:8500\"\n\n",
        tb.registry
    );
    for h in hosts {
        s.push_str(&format!(
            "[hosts.{h}]\naddress = \"{}\"\nuser = \"root\"\nroles = [\"web\"]\n\n",
            tb.host(h).address
        ));
    }
    s.push_str(apps);
    let list: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    s.push_str(&format!(
        "\n[environments.test]\nhosts = [{}]\n",
        list.join(", ")
    ));
    s
}

/// The root certificate of `host`'s edge (Caddy's internal CA), read on the host.
fn edge_ca(tb: &Testbed, host: &str) -> String {
    let out = tb.ssh_ok(host, "curl -s http://localhost:2019/pki/ca/local");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["root_certificate"].as_str().unwrap().to_string()
}

/// An HTTPS client for `route` at `host`'s edge, trusting only that edge's CA.
fn client(tb: &Testbed, host: &str, route: &str, ca: &str) -> reqwest::Client {
    let addr: std::net::SocketAddr = format!("{}:443", tb.host(host).address).parse().unwrap();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
        .resolve(route, addr)
        // A connection per request: Caddy applies a new config gracefully (in-flight
        // requests finish) but closes connections idle at that moment, and a request sent on
        // one just then is lost unless the client retries it (browsers do; reqwest does not).
        // docs/edge.md says so.
        .pool_max_idle_per_host(0)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// What the probe saw.
#[derive(Default, Debug)]
struct Counts {
    ok: usize,
    failed: usize,
    /// Connections that failed before the request was sent (TCP or TLS handshake), each
    /// opened again (up to `CONNECT_TRIES` times): the request never reached the edge.
    reconnects: usize,
    versions: BTreeMap<String, usize>,
    errors: Vec<String>,
}

/// Failed requests a scenario may have: none (issue 20). docs/edge.md, *Reloads and the edge's
/// certificates* and *Active checks and reloads*, say what made the last ones.
const TOLERATED: usize = 0;

/// How many times a connection that failed before its request was sent (the TCP or TLS
/// handshake) is opened again, as a browser would: the request never reached the edge.
const CONNECT_TRIES: usize = 3;

struct Probe {
    stop: Arc<AtomicBool>,
    total: Arc<AtomicUsize>,
    counts: Arc<Mutex<Counts>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Probe {
    /// 4 workers per edge, each sending GET https://<route>/ in a loop.
    fn start(clients: &[reqwest::Client], route: &str) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicUsize::new(0));
        let counts = Arc::new(Mutex::new(Counts::default()));
        let mut tasks = Vec::new();
        let t0 = Instant::now();
        for (edge, c) in clients.iter().enumerate() {
            for _ in 0..4 {
                let (c, stop, total, counts) =
                    (c.clone(), stop.clone(), total.clone(), counts.clone());
                let url = format!("https://{route}/");
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let sent_at = t0.elapsed();
                        let r = async {
                            let mut sent = c.get(&url).send().await;
                            for _ in 0..CONNECT_TRIES {
                                match &sent {
                                    Err(e) if e.is_connect() => {
                                        counts.lock().unwrap().reconnects += 1;
                                        sent = c.get(&url).send().await;
                                    }
                                    _ => break,
                                }
                            }
                            let resp = sent.map_err(|e| format!("{e:?}"))?;
                            let status = resp.status();
                            let body = resp.text().await.map_err(|e| e.to_string())?;
                            if !status.is_success() {
                                return Err(format!("{status}: {}", body.trim()));
                            }
                            Ok(body
                                .lines()
                                .find_map(|l| l.strip_prefix("<p>version: "))
                                .map(|v| v.trim_end_matches("</p>").to_string())
                                .unwrap_or_else(|| "?".into()))
                        }
                        .await;
                        total.fetch_add(1, Ordering::SeqCst);
                        let mut k = counts.lock().unwrap();
                        match r {
                            Ok(v) => {
                                k.ok += 1;
                                *k.versions.entry(v).or_default() += 1;
                            }
                            Err(e) => {
                                k.failed += 1;
                                if k.errors.len() < 5 {
                                    // When and where, to line up with the deploy's output.
                                    k.errors.push(format!(
                                        "edge #{edge}, sent at {:.1}s, failed after {:.1}s: {e}",
                                        sent_at.as_secs_f64(),
                                        (t0.elapsed() - sent_at).as_secs_f64()
                                    ));
                                }
                            }
                        }
                    }
                }));
            }
        }
        Probe {
            stop,
            total,
            counts,
            tasks,
        }
    }

    /// Runs until `done` and at least `MIN_REQUESTS` requests, then stops and checks.
    async fn finish(self, what: &str, allowed: &[&str]) {
        // The event is over; the probe goes on to its minimum, within bounds.
        let t0 = Instant::now();
        while self.total.load(Ordering::SeqCst) < MIN_REQUESTS
            && t0.elapsed() < Duration::from_secs(90)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        let k = self.counts.lock().unwrap();
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "probe {what}: {} requests, {} ok, {} failed, {} connection(s) retried before sending, versions {:?}",
            k.ok + k.failed,
            k.ok,
            k.failed,
            k.reconnects,
            k.versions
        );
        if k.failed > 0 {
            let _ = writeln!(
                std::io::stderr(),
                "probe {what}: FAILED REQUESTS (tolerated up to {TOLERATED}): {:?}",
                k.errors
            );
        }
        assert!(
            k.failed <= TOLERATED,
            "{what}: {} failed requests: {:?}",
            k.failed,
            k.errors
        );
        assert!(
            k.ok >= MIN_REQUESTS,
            "{what}: only {} requests within the probe's time",
            k.ok
        );
        for v in k.versions.keys() {
            assert!(
                allowed.contains(&v.as_str()),
                "{what}: an answer from {v}, not one of {allowed:?}"
            );
        }
    }
}

fn writeln_err(s: &str) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stderr(), "{s}")
}

/// Runs a fleet command while the probe runs; returns its success and output.
async fn during(p: &Proj, tb: &Testbed, args: &[&str]) -> (bool, String) {
    let mut cmd = p.cmd(tb, args);
    tokio::task::spawn_blocking(move || {
        let o = cmd.output().unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    })
    .await
    .unwrap()
}

/// Cleans up a project whatever happens: destroy, then forget.
struct Cleanup<'a>(&'a Proj, &'a Testbed);
impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(self.1, &["destroy", "test", "--yes"]);
        self.1.forget_project(&self.0.name);
    }
}

/// Waits until every route answers on `host`'s edge with `version`'s page.
async fn wait_serving(c: &reqwest::Client, route: &str, version: &str) {
    let t0 = Instant::now();
    loop {
        if let Ok(r) = c.get(format!("https://{route}/")).send().await
            && let Ok(b) = r.text().await
            && b.contains(&format!("version: {version}"))
        {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{route} never served {version}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_failed_requests_through_the_edge() {
    let Some(tb) = Testbed::exclusive("zero_failed_requests_through_the_edge") else {
        return;
    };
    let t0 = Instant::now();
    let p = Proj::new(&tb, "edge");
    let _clean = Cleanup(&p, &tb);

    // The first deploy makes the edges and the route; the plan said so.
    let plan = p.ok(&tb, &["plan", "test"]);
    assert!(
        plan.contains(&format!("+ route {}/ -> hello", p.route)),
        "{plan}"
    );
    p.ok(&tb, &["deploy", "test", "--yes"]);
    let plan = p.ok(&tb, &["plan", "test"]);
    assert!(
        plan.contains("No changes."),
        "a deploy converges the edge:\n{plan}"
    );

    let clients: Vec<reqwest::Client> = ["h1", "h2"]
        .iter()
        .map(|h| client(&tb, h, &p.route, &edge_ca(&tb, h)))
        .collect();
    for c in &clients {
        wait_serving(c, &p.route, "v1").await;
    }

    // HTTP on 80 redirects to HTTPS.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let r = plain
        .get(format!("http://{}/x", tb.host("h1").address))
        .header("Host", &p.route)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 308);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("https://{}/x", p.route)
    );

    // 1. A replace on 3 hosts.
    p.write(&tb, "v2", "");
    let probe = Probe::start(&clients, &p.route);
    let (ok, out) = during(&p, &tb, &["deploy", "test", "--yes"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("edges drained"), "{out}");
    probe.finish("replace", &["v1", "v2"]).await;

    // 2. A version that fails its health check (it listens elsewhere): never routed to.
    p.write(&tb, "v1", "env = { PORT = \"9999\" }\n");
    let probe = Probe::start(&clients, &p.route);
    let (ok, out) = during(&p, &tb, &["deploy", "test", "--yes"]).await;
    assert!(!ok, "the broken version must fail:\n{out}");
    probe.finish("failed check", &["v2"]).await;

    // 3. A rollback (to v1).
    p.write(&tb, "v2", "");
    let probe = Probe::start(&clients, &p.route);
    let (ok, out) = during(&p, &tb, &["rollback", "test", "--yes"]).await;
    assert!(ok, "{out}");
    probe.finish("rollback", &["v1", "v2"]).await;
    p.write(&tb, "v1", "");

    // 4. fleet restart.
    let probe = Probe::start(&clients, &p.route);
    let (ok, out) = during(&p, &tb, &["restart", "test"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("back on the edges"), "{out}");
    probe.finish("restart", &["v1"]).await;

    // 5. A deploy during which h3's link is cut.
    p.write(&tb, "v2", "");
    let probe = Probe::start(&clients, &p.route);
    let mut run = Run::start(p.cmd(&tb, &["deploy", "test", "--yes"]));
    run.wait_line(Duration::from_secs(60), |l| {
        l.contains("h3") && l.contains("replace v1 -> v2")
    });
    let cut = LinkCut::cut("h3");
    let (status, _, lines) =
        tokio::task::spawn_blocking(move || run.finish(Duration::from_secs(120)))
            .await
            .unwrap();
    let out: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
    let _ = writeln_err(&out.join("\n"));
    assert!(!status.success(), "h3 was lost:\n{}", out.join("\n"));
    probe.finish("link cut", &["v1", "v2"]).await;
    drop(cut);
    // Once h3 answers again, one deploy converges.
    let t = Instant::now();
    loop {
        let (ok, out) = p.run(&tb, &["deploy", "test", "--yes"]);
        if ok {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{out}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "zero_failed_requests_through_the_edge: {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_projects_share_one_edge_and_destroy_leaves_the_other() {
    // Alone: its plans must find the shared edge of h1..h3 converged, and the koa tests deploy
    // routes and settings to the same edges.
    let Some(tb) = Testbed::exclusive("two_projects_share_one_edge_and_destroy_leaves_the_other")
    else {
        return;
    };
    let a = Proj::new(&tb, "edgea");
    let b = Proj::new(&tb, "edgeb");
    let _ca = Cleanup(&a, &tb);
    let _cb = Cleanup(&b, &tb);
    a.ok(&tb, &["deploy", "test", "--yes"]);
    b.write(&tb, "v2", "");
    b.ok(&tb, &["deploy", "test", "--yes"]);
    let ca = edge_ca(&tb, "h1");
    let (cla, clb) = (
        client(&tb, "h1", &a.route, &ca),
        client(&tb, "h1", &b.route, &ca),
    );
    wait_serving(&cla, &a.route, "v1").await;
    wait_serving(&clb, &b.route, "v2").await;
    // Each plan sees only its own routes: both converged.
    for p in [&a, &b] {
        let plan = p.ok(&tb, &["plan", "test"]);
        assert!(plan.contains("No changes."), "{}: {plan}", p.name);
    }
    let status = a.ok(&tb, &["status", "test"]);
    assert!(status.contains(&a.route), "{status}");
    assert!(!status.contains(&b.route), "{status}");

    a.ok(&tb, &["destroy", "test", "--yes"]);
    // a's route is gone (and its certificate with it: the handshake may fail).
    if let Ok(r) = cla.get(format!("https://{}/", a.route)).send().await {
        let body = r.text().await.unwrap_or_default();
        assert!(
            !body.contains("version:"),
            "a's route still answers: {body}"
        );
    }
    let body = clb
        .get(format!("https://{}/", b.route))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("version: v2"), "b still answers: {body}");
    let _ = Path::new("");
}
