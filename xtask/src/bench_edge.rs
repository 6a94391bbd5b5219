//! The edge's cost in a deploy (issue 20): the same one-version change on up to 3 hosts, once
//! for an app without a route and once for the same app with `public` (Caddy on every host,
//! fleet taking each old instance out of every edge and waiting for the drain evidence before
//! it stops it). Printed: wall time of each (best of `ROUNDS`), their ratio, fleet's own CPU
//! (user + sys of the `fleet` process) per host, and the share of the wall time the drain
//! evidence took (the report's `edge_drain_seconds`). `--drain 0s` in both: what is compared is
//! the edge's part, not the fixed drain sleep.
use crate::cpu;
use crate::deploy::{TIMED_DEPLOY, bench_project, cleanup, fleet_env, new_version, report_json};
use crate::testbed::layout::Layout;
use anyhow::{Result, bail};
use std::path::Path;
use std::time::{Duration, Instant};

const ROUNDS: usize = 2;

/// One timed deploy: wall, fleet's CPU, the drain evidence's time.
struct Sample {
    wall: Duration,
    cpu: Duration,
    drain: Duration,
}

pub fn compare(l: &Layout, bin: &Path, hosts: u32) -> Result<()> {
    let n = hosts.min(3);
    let tmp = l.workspace.join("target/bench-edge");
    let _ = std::fs::remove_dir_all(&tmp);
    let mut results = Vec::new();
    for (project, public) in [("fbplain", false), ("fbedge", true)] {
        let dir = tmp.join(project);
        let manifest = bench_project(l, &dir, project, n)?;
        if public {
            add_route(&manifest, project)?;
        }
        let run = |args: &[&str]| fleet_env(l, bin, &manifest, args, &[]);
        let (ok, text) = run(&["deploy", "bench", "--yes"])?;
        if !ok {
            cleanup(l, project, n);
            bail!("baseline deploy of {project} failed:\n{text}");
        }
        let mut best: Option<Sample> = None;
        for round in 0..ROUNDS {
            let tag = format!("{project}-{round}-{}", std::process::id());
            new_version(&dir, &tag, &run)?;
            run(&["plan", "bench"])?;
            let cpu0 = cpu::children_cpu();
            let t = Instant::now();
            let (ok, text) = run(TIMED_DEPLOY)?;
            let s = Sample {
                wall: t.elapsed(),
                cpu: cpu::children_cpu() - cpu0,
                drain: drain(&text),
            };
            if !ok {
                cleanup(l, project, n);
                bail!("timed deploy of {project} failed:\n{text}");
            }
            if best.as_ref().is_none_or(|b| s.wall < b.wall) {
                best = Some(s);
            }
        }
        let (ok, text) = run(&["destroy", "bench", "--yes"])?;
        if !ok {
            eprintln!("bench edge: destroy of {project}: {text}");
        }
        cleanup(l, project, n);
        results.push(best.expect("ROUNDS > 0"));
    }
    let (plain, edge) = (&results[0], &results[1]);
    println!(
        "\nbench deploy, edge: a one-version change on {n} host(s), --drain 0s, best of {ROUNDS}"
    );
    println!("                 wall   fleet CPU/host   drain evidence");
    for (what, s) in [("without edge", plain), ("with edge", edge)] {
        println!(
            "  {what:<12}  {:>5.2}s   {:>8.0} ms    {:>6.0} ms ({:.0}% of the wall time)",
            s.wall.as_secs_f64(),
            s.cpu.as_secs_f64() * 1000.0 / n as f64,
            s.drain.as_secs_f64() * 1000.0,
            100.0 * s.drain.as_secs_f64() / s.wall.as_secs_f64()
        );
    }
    println!(
        "  with/without: {:.2}x wall, {:.2}x fleet CPU",
        edge.wall.as_secs_f64() / plain.wall.as_secs_f64(),
        edge.cpu.as_secs_f64() / plain.cpu.as_secs_f64().max(1e-6)
    );
    Ok(())
}

/// `public = { host = "<project>.localhost" }` on the bench app, and the testbed's Caddy image.
fn add_route(manifest: &Path, project: &str) -> Result<()> {
    let toml = std::fs::read_to_string(manifest)?;
    let Some(at) = toml.find("[apps.hello]\n") else {
        bail!("no [apps.hello] in {}", manifest.display());
    };
    let (head, tail) = toml.split_at(at);
    let tail = tail.replacen(
        "[apps.hello]\n",
        &format!("[apps.hello]\npublic = {{ host = \"{project}.localhost\" }}\n"),
        1,
    );
    let edge = "[edge]\nimage = \"10.200.1.1:5000/fleet-test/caddy:2\"\ntls = \"internal\"\n\n";
    std::fs::write(manifest, format!("{head}{edge}{tail}"))?;
    Ok(())
}

/// The report's `edge_drain_seconds` (the JSON comes first, then the progress lines).
fn drain(report: &str) -> Duration {
    let secs = report_json(report)
        .and_then(|v| v["edge_drain_seconds"].as_f64())
        .unwrap_or(0.0);
    Duration::from_secs_f64(secs)
}
