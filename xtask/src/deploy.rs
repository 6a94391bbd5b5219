//! `cargo xtask demo` (a real `fleet deploy` of manifests/hello to the testbed) and
//! `cargo xtask bench deploy` (a one-app change rolled out to 1..N hosts, against the floor).
use crate::testbed::{self, image, layout::Layout};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Build the fleet binary (debug) and return its path.
fn fleet_bin(l: &Layout) -> Result<PathBuf> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-q", "-p", "fleet", "--bin", "fleet"])
        .current_dir(&l.workspace)
        .status()?;
    if !status.success() {
        bail!("cargo build -p fleet failed");
    }
    Ok(l.workspace.join("target/debug/fleet"))
}

/// `fleet ARGS` with the testbed's ssh config and registry credentials.
fn fleet(l: &Layout, bin: &Path, manifest: &Path, args: &[&str]) -> Result<(bool, String)> {
    let mut c = Command::new(bin);
    c.arg("-f").arg(manifest).args(args);
    c.env("NO_COLOR", "1").stdin(std::process::Stdio::null());
    l.point_at(&mut c)?;
    let out = c.output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

pub fn demo(l: &Layout) -> Result<()> {
    let hosts = std::fs::read_to_string(l.path("hosts"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(3);
    testbed::up(l, hosts)?;
    image::prepare_app(l)?;
    let bin = fleet_bin(l)?;
    let manifest = l.workspace.join("manifests/hello/fleet.toml");
    println!("== fleet deploy production (build, push, plan, apply)");
    let (ok, text) = fleet(l, &bin, &manifest, &["deploy", "production", "--yes"])?;
    print!("{text}");
    if !ok {
        bail!("the first deploy failed");
    }
    println!("\n== fleet deploy production again: nothing to do");
    let (ok, text) = fleet(l, &bin, &manifest, &["deploy", "production", "--yes"])?;
    print!("{text}");
    if !ok || !text.contains("No changes") {
        bail!("the second deploy was expected to say No changes");
    }
    let port = testbed::ssh_out(
        l,
        1,
        "docker ps --filter label=fleet.project=hello --format '{{.Ports}}' | sed -n 's/.*0\\.0\\.0\\.0:\\([0-9]*\\)->8080.*/\\1/p' | head -1",
    )?;
    let d = l.d();
    println!(
        r#"
hello runs on h1..h3, registered in each host's Consul agent (the port is Docker's pick):

  curl http://10.200.1.2:{port}/
  ssh -F {d}/ssh_config h1 curl -s 'http://127.0.0.1:8500/v1/health/service/hello?passing'
  FLEET_SSH_CONFIG={d}/ssh_config target/debug/fleet -f manifests/hello/fleet.toml plan production

Change manifests/hello/app/index.html and deploy again to see a zero-downtime replace.
"#
    );
    Ok(())
}

/// A manifest for the first `n` hosts of the testbed, one app from a copy of manifests/hello.
fn bench_project(l: &Layout, dir: &Path, n: u32) -> Result<PathBuf> {
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
        "[project]\nname = \"fbench\"\n\n[registry]\nserver = \"10.200.1.1:5000\"\nusername = { env = \"FLEET_REGISTRY_USER\" }\npassword = { env = \"FLEET_REGISTRY_PASSWORD\" }\n\n[consul]\naddress = \"http://127.0.0.1:8500\"\n\n",
    );
    for i in 1..=n {
        toml.push_str(&format!(
            "[hosts.h{i}]\naddress = \"10.200.{i}.2\"\nuser = \"root\"\nroles = [\"web\"]\n\n"
        ));
    }
    toml.push_str(
        "[apps.hello]\nbuild = { context = \"app\" }\nroles = [\"web\"]\nport = 8080\nhealth = { http = \"/health\", interval = \"1s\", timeout = \"1s\", deadline = \"30s\" }\nstop_timeout = \"2s\"\nservice = { name = \"fbench\" }\n\n",
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

/// One replace done by hand on h1 (pull is cached, like fleet's): run the new container on a
/// free port, wait for its first healthy answer, stop and remove the old one.
fn floor(l: &Layout, image_ref: &str) -> Result<Duration> {
    let script = format!(
        "docker rm -f fbench-floor-old fbench-floor-new >/dev/null 2>&1; \
         docker run -d --name fbench-floor-old -p 8080 {image_ref} >/dev/null"
    );
    testbed::ssh_out(l, 1, &script)?;
    let t = Instant::now();
    let script = format!(
        "docker run -d --name fbench-floor-new -p 8080 {image_ref} >/dev/null && \
         p=$(docker port fbench-floor-new 8080/tcp | head -1 | sed 's/.*://') && \
         until curl -sf http://10.200.1.2:$p/health >/dev/null; do sleep 0.05; done && \
         docker stop -t 2 fbench-floor-old >/dev/null && docker rm fbench-floor-old >/dev/null"
    );
    testbed::ssh_out(l, 1, &script)?;
    let d = t.elapsed();
    testbed::ssh_out(l, 1, "docker rm -f fbench-floor-new >/dev/null 2>&1; true")?;
    Ok(d)
}

/// `cargo xtask bench deploy [--hosts 1,5,10,20]`: runs on the testbed as it is (sizes larger
/// than it are skipped and reported; grow it with `cargo xtask testbed up --hosts 20` first
/// when nobody else uses it).
pub fn bench(l: &Layout, sizes: &[u32]) -> Result<()> {
    let have: u32 = std::fs::read_to_string(l.path("hosts"))
        .context("no testbed (run `cargo xtask testbed up`)")?
        .trim()
        .parse()?;
    let bin = fleet_bin(l)?;
    let tmp = l.workspace.join("target/bench-deploy");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let mut rows: Vec<(u32, Duration)> = Vec::new();
    let mut image_ref = String::new();
    for &n in sizes {
        if n > have {
            println!("bench deploy: {n} hosts skipped (the testbed has {have})");
            continue;
        }
        let dir = tmp.join(format!("n{n}"));
        let manifest = bench_project(l, &dir, n)?;
        // Baseline deployed (untimed), then a one-file change built and pushed (untimed).
        let (ok, text) = fleet(l, &bin, &manifest, &["deploy", "bench", "--yes"])?;
        if !ok {
            bail!("baseline deploy to {n} hosts failed:\n{text}");
        }
        std::fs::write(
            dir.join("app/VERSION"),
            format!("bench-{n}-{}\n", std::process::id()),
        )?;
        let (ok, text) = fleet(l, &bin, &manifest, &["build", "--push"])?;
        if !ok {
            bail!("build failed:\n{text}");
        }
        let t = Instant::now();
        let (ok, text) = fleet(
            l,
            &bin,
            &manifest,
            &["deploy", "bench", "--yes", "--no-build", "--drain", "0s"],
        )?;
        let d = t.elapsed();
        if !ok {
            bail!("timed deploy to {n} hosts failed:\n{text}");
        }
        println!("bench deploy: {n:>2} host(s): {:.2}s", d.as_secs_f64());
        rows.push((n, d));
        // The newest image: older ones may be pruned from h1 by later rounds (keep 3).
        {
            image_ref = testbed::ssh_out(
                l,
                1,
                "docker ps --filter label=fleet.project=fbench --format '{{.Image}}' | head -1",
            )?;
        }
    }
    // Clean up the bench's containers and registrations.
    for i in 1..=have.min(*sizes.iter().max().unwrap_or(&1)) {
        let _ = testbed::ssh_out(
            l,
            i,
            "ids=$(docker ps -aq --filter label=fleet.project=fbench); [ -z \"$ids\" ] || docker rm -f $ids >/dev/null; \
             for s in $(curl -s http://127.0.0.1:8500/v1/agent/services | grep -o '\"fbench-[^\"]*\"' | tr -d '\"' | sort -u); do \
             curl -s -X PUT http://127.0.0.1:8500/v1/agent/service/deregister/$s >/dev/null; done; true",
        );
    }
    if image_ref.is_empty() {
        return Ok(());
    }
    let f = floor(l, &image_ref)?;
    println!(
        "bench deploy: floor (same docker ops by hand on h1): {:.2}s",
        f.as_secs_f64()
    );
    let one = rows.iter().find(|(n, _)| *n == 1).map(|r| r.1);
    for (n, d) in &rows {
        let vs_one = one.map(|o| d.as_secs_f64() / o.as_secs_f64());
        println!(
            "  {n:>2} hosts: {:>6.2}s  {:>5.2}x floor{}",
            d.as_secs_f64(),
            d.as_secs_f64() / f.as_secs_f64(),
            vs_one
                .map(|r| format!("  {r:>5.2}x one host (target < 2x)"))
                .unwrap_or_default()
        );
    }
    println!(
        "  (one host target: < 1.5x floor + the health-check wait; the timed deploy includes the fleet process start, SSH connect and observe)"
    );
    Ok(())
}
