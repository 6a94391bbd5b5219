//! `cargo xtask demo` (a real `fleet deploy` of manifests/koa to the testbed) and
//! `cargo xtask bench deploy` (a one-app change rolled out to 1..N hosts, against the floor).
use crate::testbed::{self, image, layout::Layout};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Build the fleet binary (debug for the demo, release for benchmarks) and return its path.
pub fn fleet_bin(l: &Layout, release: bool) -> Result<PathBuf> {
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.args(["build", "-q", "-p", "fleet", "--bin", "fleet"]);
    if release {
        cargo.arg("--release");
    }
    if !cargo.current_dir(&l.workspace).status()?.success() {
        bail!("cargo build -p fleet failed");
    }
    let profile = if release { "release" } else { "debug" };
    Ok(l.workspace.join("target").join(profile).join("fleet"))
}

/// `fleet ARGS` with more environment (e.g. `FLEET_SSH_PERSIST`).
pub fn fleet_env(
    l: &Layout,
    bin: &Path,
    manifest: &Path,
    args: &[&str],
    env: &[(&str, &Path)],
) -> Result<(bool, String)> {
    let mut c = Command::new(bin);
    c.arg("-f").arg(manifest).args(args);
    c.env("NO_COLOR", "1").stdin(std::process::Stdio::null());
    l.point_at(&mut c)?;
    c.envs(env.iter().copied());
    let out = c.output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// `cargo xtask demo`: manifests/koa's `bare` environment from nothing to serving on the bare
/// hosts b1..b3 (sshd and dockerd only): `fleet setup bare` (Consul agents, then the redis
/// accessory), `fleet deploy bare`, a second deploy that changes nothing, then requests through
/// the edge and to the apps.
pub fn demo(l: &Layout) -> Result<()> {
    let hosts = std::fs::read_to_string(l.path("hosts"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(3);
    testbed::up(l, hosts)?;
    // The node:20 base image and manifests/koa's node_modules (both cached: a second run
    // costs nothing), the images the tests use, and the bare hosts with the stand-in image.
    image::image(l)?;
    let standin = testbed::consul_standin(l).map_err(|e| anyhow::anyhow!(e))?;
    testbed::bare::up(l, 3, &standin)?;
    let bin = fleet_bin(l, false)?;
    let manifest = l.workspace.join("manifests/koa/fleet.toml");
    let ssh_config = testbed::bare::dir(l).join("ssh_config");
    let env: [(&str, &Path); 1] = [("FLEET_SSH_CONFIG", &ssh_config)];
    let step = |title: &str, args: &[&str], expect: Option<&str>| -> Result<()> {
        println!("== fleet {}  ({title})", args.join(" "));
        let (ok, text) = fleet_env(l, &bin, &manifest, args, &env)?;
        print!("{text}");
        if !ok {
            bail!("`fleet {}` failed", args.join(" "));
        }
        if let Some(e) = expect
            && !text.contains(e)
        {
            bail!("`fleet {}` was expected to say {e}", args.join(" "));
        }
        println!();
        Ok(())
    };
    step(
        "bare hosts: Consul agents as containers, then the redis accessory",
        &["setup", "bare", "--yes"],
        None,
    )?;
    step(
        "build, push, plan, apply; health-gated",
        &["deploy", "bare", "--yes"],
        None,
    )?;
    step(
        "again: nothing to do",
        &["deploy", "bare", "--yes"],
        Some("No changes"),
    )?;
    let port = |app: &str, inner: u16| -> Result<String> {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker -H unix://{} ps --filter label=fleet.project=koa --filter label=fleet.env=bare --filter label=fleet.app={app} --format '{{{{.Ports}}}}' | sed -n 's/.*0\\.0\\.0\\.0:\\([0-9]*\\)->{inner}.*/\\1/p' | head -1",
                testbed::bare::docker_sock(l, 1).display()
            ))
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let (app, client) = (port("app", 3000)?, port("client", 3001)?);
    println!("== through the edge: https://koa.localhost/ on b1 and b2 (Caddy, verified TLS)");
    let ca = edge_ca(l)?;
    for addr in ["10.201.1.2", "10.201.2.2"] {
        let curl = format!(
            "curl -sS --cacert {} --resolve koa.localhost:443:{addr} https://koa.localhost/",
            ca.display()
        );
        show(&curl, &format!("the edge of {addr}"))?;
    }
    println!("== visits, counted in the `redis` accessory on b1, which `app` finds by name");
    for _ in 0..2 {
        show(
            &format!("curl -sS http://10.201.1.2:{app}/visits"),
            "/visits",
        )?;
    }
    let (ca, b) = (ca.display(), testbed::bare::dir(l).display().to_string());
    let d = l.d();
    println!(
        r#"
koa runs on b1..b3, which had only sshd and dockerd: `fleet setup bare` started a Consul server
agent on each (the cluster elected a leader) and the `redis` accessory on b1; `fleet deploy bare`
built and pushed `app` (Koa under pm2-runtime, 2 cluster workers per container, its greeting
from Consul KV, its visits counted in redis) and `client` (finds `app` by name through Consul
DNS). Ports are fleet's pick from the ephemeral range, kept across restarts.

  curl --cacert {ca} --resolve koa.localhost:443:10.201.1.2 https://koa.localhost/
                                                # the public route, through b1's edge (any host's)
  curl http://10.201.1.2:{app}/                  # the greeting, from KV koa/bare/app/greeting
  curl http://10.201.1.2:{client}/upstream       # the same, through app.service.consul
  curl http://10.201.1.2:{app}/visits            # INCR in redis, found as redis.service.consul

  export FLEET_SSH_CONFIG={b}/ssh_config; set -a; . {d}/registry.env; set +a
  F="target/debug/fleet -f manifests/koa/fleet.toml"
  $F setup bare --plan                          # No changes.
  $F logs bare app --tail 20                    # app#1@b1 (err): fake error ... (out): send response
  $F status bare                                # restarts, CPU, memory per container, pm2 workers
  $F logs bare app --follow                     # Ctrl-C to stop

A config change on the fly: edit `config.greeting` in manifests/koa/fleet.toml, then
  $F plan bare                                  # Plan: 0 to create, 0 to replace ... KV: 1 to put
  $F deploy bare --yes                          # the workers answer with it within a second

`production` is the same project on h1..h3, whose agents the testbed runs (the tests use it).
"#
    );
    Ok(())
}

/// Runs `curl` (a shell line) and prints it and its answer; `what` names it in the error.
fn show(curl: &str, what: &str) -> Result<()> {
    println!("$ {curl}");
    let out = Command::new("sh").arg("-c").arg(curl).output()?;
    println!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "{what} did not answer: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The root certificates of b1's and b2's edges (each edge has its own Caddy internal CA),
/// written to DIR/edge-ca.pem: what `curl --cacert` trusts.
fn edge_ca(l: &Layout) -> Result<PathBuf> {
    let mut pems = String::new();
    for n in [1, 2] {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("b{n}")])
            .args(["curl", "-sf", "http://localhost:2019/pki/ca/local"])
            .output()?;
        let json = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(&json)
            .with_context(|| format!("b{n}'s edge admin API: {json}"))?;
        match v["root_certificate"].as_str() {
            Some(pem) => pems.push_str(pem),
            None => bail!("b{n}'s edge has no internal CA: {json}"),
        }
    }
    let path = l.path("edge-ca.pem");
    std::fs::write(&path, pems)?;
    Ok(path)
}

/// A manifest for the first `n` hosts of the testbed, one app from a copy of manifests/hello:
/// one instance per host, health-checked, registered in the host's Consul agent.
pub fn bench_project(l: &Layout, dir: &Path, project: &str, n: u32) -> Result<PathBuf> {
    let src = image::prepare_app(l)?;
    let app = dir.join("app");
    std::fs::create_dir_all(&app)?;
    for e in std::fs::read_dir(&src)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), app.join(e.file_name()))?;
        }
    }
    let mut toml = String::from(
        "[project]\nname = \"{project}\"\n\n[registry]\nserver = \"10.200.1.1:5000\"\ninsecure = true\nusername = { env = \"FLEET_REGISTRY_USER\" }\npassword = { env = \"FLEET_REGISTRY_PASSWORD\" }\n\n[consul]\naddress = \"http://127.0.0.1:8500\"\n\n",
    )
    .replace("{project}", project);
    for i in 1..=n {
        toml.push_str(&format!(
            "[hosts.h{i}]\naddress = \"10.200.{i}.2\"\nuser = \"root\"\nroles = [\"web\"]\n\n"
        ));
    }
    toml.push_str(
        "[apps.hello]\nbuild = { context = \"app\" }\nroles = [\"web\"]\nport = 8080\nhealth = { http = \"/health\", interval = \"1s\", timeout = \"1s\", deadline = \"30s\" }\nstop_timeout = \"2s\"\nservice = { name = \"{project}\" }\n\n"
            .replace("{project}", project)
            .as_str(),
    );
    let list: Vec<String> = (1..=n).map(|i| format!("\"h{i}\"")).collect();
    toml.push_str(&format!(
        "[environments.bench]\nhosts = [{}]\n",
        list.join(", ")
    ));
    let path = dir.join("fleet.toml");
    std::fs::write(&path, toml)?;
    Ok(path)
}

/// The same replace done by hand on hosts 1..=n at once (pull cached, like fleet's): run the
/// new container on a free port, wait for its first healthy answer, stop and remove the old
/// one. One `ssh` per host, as fleet needs one connection per host too.
/// Also returns how busy the machine's CPUs were meanwhile (0 to 1).
fn floor(l: &Layout, image_ref: &str, n: u32) -> Result<(Duration, f64)> {
    let on_all = |script: &str| -> Result<()> {
        let children: Vec<_> = (1..=n)
            .map(|i| {
                Command::new("ssh")
                    .arg("-F")
                    .arg(l.path("ssh_config"))
                    .arg(format!("h{i}"))
                    .arg(script.replace("HOST", &format!("10.200.{i}.2")))
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        for mut c in children {
            if !c.wait()?.success() {
                bail!("the floor's docker commands failed on a host");
            }
        }
        Ok(())
    };
    on_all(&format!(
        "docker rm -f fbench-floor-old fbench-floor-new >/dev/null 2>&1; \
         docker run -d --name fbench-floor-old -p 8080 {image_ref} >/dev/null"
    ))?;
    let (t, cpu) = (Instant::now(), crate::cpu::cpu_ticks());
    on_all(&format!(
        "docker run -d --name fbench-floor-new -p 8080 {image_ref} >/dev/null && \
         p=$(docker port fbench-floor-new 8080/tcp | head -1 | sed 's/.*://') && \
         until curl -sf http://HOST:$p/health >/dev/null; do sleep 0.05; done && \
         docker stop -t 2 fbench-floor-old >/dev/null && docker rm fbench-floor-old >/dev/null"
    ))?;
    let (d, busy) = (t.elapsed(), crate::cpu::busy_since(cpu));
    on_all("docker rm -f fbench-floor-new >/dev/null 2>&1; true")?;
    Ok((d, busy))
}

/// The longest health-check wait in a `deploy --json` report (`steps[].health_seconds`).
fn health_wait(report: &str) -> Duration {
    let secs = report_json(report)
        .and_then(|v| {
            v["steps"].as_array().map(|steps| {
                steps
                    .iter()
                    .filter_map(|s| s["health_seconds"].as_f64())
                    .fold(0.0, f64::max)
            })
        })
        .unwrap_or(0.0);
    Duration::from_secs_f64(secs)
}

/// The JSON report of a `--json` command's output: it comes first (stdout), then the progress
/// lines (stderr).
pub fn report_json(output: &str) -> Option<serde_json::Value> {
    let start = output.find('{').unwrap_or(0);
    serde_json::Deserializer::from_str(&output[start..])
        .into_iter::<serde_json::Value>()
        .next()
        .and_then(Result::ok)
}

/// The deploy a benchmark times: the image already pushed, no drain sleep, the JSON report.
pub const TIMED_DEPLOY: &[&str] = &[
    "deploy",
    "bench",
    "--yes",
    "--no-build",
    "--drain",
    "0s",
    "--json",
];

/// A one-file change of a bench project's app (`tag` in app/VERSION), built and pushed.
pub fn new_version(
    dir: &Path,
    tag: &str,
    run: &dyn Fn(&[&str]) -> Result<(bool, String)>,
) -> Result<()> {
    std::fs::write(dir.join("app/VERSION"), format!("{tag}\n"))?;
    let (ok, text) = run(&["build", "--push"])?;
    if !ok {
        bail!("build failed:\n{text}");
    }
    Ok(())
}

/// Remove a bench project's containers and Consul registrations from hosts 1..=n.
pub fn cleanup(l: &Layout, project: &str, n: u32) {
    for i in 1..=n {
        let _ = testbed::ssh_out(
            l,
            i,
            &format!(
                "ids=$(docker ps -aq --filter label=fleet.project={project}); [ -z \"$ids\" ] || docker rm -f $ids >/dev/null; \
                 for s in $(curl -s http://127.0.0.1:8500/v1/agent/services | grep -o '\"{project}-[^\"]*\"' | tr -d '\"' | sort -u); do \
                 curl -s -X PUT http://127.0.0.1:8500/v1/agent/service/deregister/$s >/dev/null; done; true"
            ),
        );
    }
}

/// A private `XDG_RUNTIME_DIR` for a benchmark's kept SSH masters (`FLEET_SSH_PERSIST`, on by
/// default), so that the bench decides when there are none (cold: what a CI job starts with)
/// and when the previous command left them (warm: an operator's next command).
pub struct KeptMasters(pub PathBuf);

impl KeptMasters {
    pub fn new(dir: PathBuf) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(KeptMasters(dir))
    }

    /// Environment for a fleet command: fleet's defaults, masters kept in this directory.
    pub fn env(&self) -> Vec<(&'static str, &Path)> {
        vec![("XDG_RUNTIME_DIR", self.0.as_path())]
    }

    /// Close every kept master: the next command starts cold.
    pub fn clear(&self) {
        if let Ok(entries) = std::fs::read_dir(self.0.join("fleet-ssh")) {
            for e in entries.flatten() {
                if e.path().extension().is_none() {
                    let _ = Command::new("ssh")
                        .arg("-S")
                        .arg(e.path())
                        .args(["-O", "exit", "x"])
                        .output();
                }
            }
        }
    }
}

impl Drop for KeptMasters {
    fn drop(&mut self) {
        self.clear();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `cargo xtask bench deploy [--hosts 1,5,10,20]`: a one-app change rolled out to 1..N hosts
/// by the release binary, with no SSH connection open (cold, as a CI job starts) and with the
/// masters the previous command kept (warm), against the floor: the same docker operations done by hand on
/// the same hosts at once. Runs on the testbed as it is (sizes larger than it are skipped);
/// grow it with `cargo xtask testbed up --hosts 20` first when nobody else uses it.
pub fn bench(l: &Layout, sizes: &[u32]) -> Result<()> {
    let have: u32 = std::fs::read_to_string(l.path("hosts"))
        .context("no testbed (run `cargo xtask testbed up`)")?
        .trim()
        .parse()?;
    let bin = fleet_bin(l, true)?;
    let tmp = l.workspace.join("target/bench-deploy");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let masters = KeptMasters::new(PathBuf::from(format!(
        "/tmp/fleet-bench-{}",
        std::process::id()
    )))?;
    // (hosts, cold, warm)
    let mut rows: Vec<(u32, Duration, Duration)> = Vec::new();
    let mut image_ref = String::new();
    // The first size's health-check waits (cold, warm), as fleet reported them.
    let mut waits: Vec<Duration> = Vec::new();
    for &n in sizes {
        if n > have {
            println!("bench deploy: {n} hosts skipped (the testbed has {have})");
            continue;
        }
        let dir = tmp.join(format!("n{n}"));
        let manifest = bench_project(l, &dir, "fbench", n)?;
        let run = |args: &[&str]| fleet_env(l, &bin, &manifest, args, &masters.env());
        // Baseline deployed (untimed).
        let (ok, text) = run(&["deploy", "bench", "--yes"])?;
        if !ok {
            bail!("baseline deploy to {n} hosts failed:\n{text}");
        }
        let timed = |warm: bool| -> Result<(Duration, Duration)> {
            // A one-file change, built and pushed (untimed).
            let tag = format!("bench-{n}-{warm}-{}", std::process::id());
            new_version(&dir, &tag, &run)?;
            if warm {
                // The command before (here a plan) leaves its masters for the deploy.
                run(&["plan", "bench"])?;
            } else {
                masters.clear();
            }
            let t = Instant::now();
            let (ok, text) = run(TIMED_DEPLOY)?;
            let d = t.elapsed();
            if !ok {
                bail!("timed deploy to {n} hosts failed:\n{text}");
            }
            Ok((d, health_wait(&text)))
        };
        let (cold, cold_wait) = timed(false)?;
        let (warm, warm_wait) = timed(true)?;
        println!(
            "bench deploy: {n:>2} host(s): cold {:.2}s  warm {:.2}s  (health checks passed after {:.2}s / {:.2}s)",
            cold.as_secs_f64(),
            warm.as_secs_f64(),
            cold_wait.as_secs_f64(),
            warm_wait.as_secs_f64()
        );
        rows.push((n, cold, warm));
        if waits.is_empty() {
            waits = vec![cold_wait, warm_wait];
        }
        // The newest image: older ones may be pruned from h1 by later rounds (keep 3).
        image_ref = testbed::ssh_out(
            l,
            1,
            "docker ps --filter label=fleet.project=fbench --format '{{.Image}}' | head -1",
        )?;
    }
    cleanup(l, "fbench", have.min(*sizes.iter().max().unwrap_or(&1)));
    drop(masters);
    if image_ref.is_empty() {
        return Ok(());
    }

    println!(
        "\nbench deploy: a one-app change, release binary, Consul check interval 1s; floor = the same docker ops by hand on the same hosts at once"
    );
    println!("  hosts    cold    warm   floor (CPU busy)   cold/floor  warm/floor");
    let mut floors = Vec::new();
    for (n, cold, warm) in &rows {
        let (f, busy) = floor(l, &image_ref, *n)?;
        floors.push(f);
        println!(
            "  {n:>5}  {:>5.2}s  {:>5.2}s  {:>5.2}s ({:>3.0}%)     {:>9.2}x  {:>9.2}x",
            cold.as_secs_f64(),
            warm.as_secs_f64(),
            f.as_secs_f64(),
            busy * 100.0,
            cold.as_secs_f64() / f.as_secs_f64(),
            warm.as_secs_f64() / f.as_secs_f64()
        );
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        println!(
            "  {} hosts / {} host: cold {:.2}x, warm {:.2}x, floor {:.2}x (target < 2x)",
            last.0,
            first.0,
            r(last.1, first.1),
            r(last.2, first.2),
            r(floors[floors.len() - 1], floors[0])
        );
        // The target: one host under 1.5x the floor plus the health-check wait. The floor polls
        // the new container every 50 ms; fleet waits for the Consul check (1 s interval).
        let within = |d: Duration, wait: Duration| d < floors[0].mul_f64(1.5) + wait;
        println!(
            "  {} host vs floor: cold {:.2}x, warm {:.2}x; under 1.5x floor + health wait ({:.2}s / {:.2}s): cold {}, warm {}",
            first.0,
            r(first.1, floors[0]),
            r(first.2, floors[0]),
            waits[0].as_secs_f64(),
            waits[1].as_secs_f64(),
            if within(first.1, waits[0]) {
                "yes"
            } else {
                "no"
            },
            if within(first.2, waits[1]) {
                "yes"
            } else {
                "no"
            },
        );
    }
    Ok(())
}
