//! `cargo xtask bench WHAT`: each benchmark prints its times and its ratios against a baseline
//! measured in the same run (never a timed test).
//!
//! - `manifest`: load + resolve 500 apps on 200 hosts (`examples/bench_manifest.rs`, release);
//! - `build`: hashing a 200 MB context, and a no-change `build --push` of 10 apps
//!   (`examples/bench_build.rs`, release, against the testbed registry);
//! - `plan`: a no-op `fleet plan` of 1, 5, 10, 20 hosts, cold and warm, against the SSH floor
//!   (here);
//! - `deploy`: a one-app change rolled out to 1, 5, 10, 20 hosts, against the floor (`deploy.rs`);
//! - `ansible`: the same converge through an Ansible playbook and through fleet
//!   (`bench_ansible.rs`, `bench/ansible/`).
//!
//! Host counts above the testbed's size are skipped: `cargo xtask testbed up --hosts 20` first
//! for the full series.
use crate::cpu::{busy_since, children_cpu, cpu_ticks};
use crate::deploy::{self, KeptMasters};
use crate::testbed::layout::Layout;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub fn run(l: &Layout, what: &str, hosts: &[u32]) -> Result<()> {
    match what {
        // Then the same kind of change with and without the edge (at most 3 hosts).
        "deploy" => deploy::bench(l, hosts).and_then(|()| edge(l)),
        "edge" => edge(l),
        "manifest" => example(l, "bench_manifest", &[], false),
        "build" => example(l, "bench_build", &["--mb", "200", "--apps", "10"], true),
        "plan" => plan(l, hosts),
        "ansible" => crate::bench_ansible::bench(l, hosts),
        other => bail!("unknown benchmark {other}"),
    }
}

fn edge(l: &Layout) -> Result<()> {
    let bin = deploy::fleet_bin(l, true)?;
    let have: u32 = std::fs::read_to_string(l.path("hosts"))?.trim().parse()?;
    crate::bench_edge::compare(l, &bin, have)
}

/// `cargo xtask bench plan`: wall time of a no-op `fleet plan` (the release binary; one app
/// instance per host with its Consul service, deployed beforehand, so the plan reads
/// containers and registrations and says "No changes.") on 1..N hosts:
/// - cold: no SSH connection open when the command starts, as in a CI job;
/// - warm: the SSH masters the previous command kept (an operator's next command);
/// - floor: N bare SSH handshakes at once (`ssh -M -f -N`, what one connection costs),
///   since on this machine every host's sshd shares its two cores with the client;
/// - fleet's own CPU time (user + sys of the `fleet` process, from its rusage), per host: what
///   the command costs apart from SSH and the hosts (target: <= 20 ms for a warm one-host plan).
fn plan(l: &Layout, sizes: &[u32]) -> Result<()> {
    let have: u32 = std::fs::read_to_string(l.path("hosts"))
        .context("no testbed (run `cargo xtask testbed up`)")?
        .trim()
        .parse()?;
    for n in sizes.iter().filter(|n| **n > have) {
        println!("bench plan: {n} hosts skipped (the testbed has {have})");
    }
    let sizes: Vec<u32> = sizes.iter().copied().filter(|n| *n <= have).collect();
    let Some(&max) = sizes.iter().max() else {
        bail!("no host count fits the testbed");
    };
    let bin = deploy::fleet_bin(l, true)?;
    let tmp = l.workspace.join("target/bench-plan");
    let _ = std::fs::remove_dir_all(&tmp);
    let masters = KeptMasters::new(PathBuf::from(format!(
        "/tmp/fleet-bench-{}",
        std::process::id()
    )))?;
    let project = "pbench";
    let full = deploy::bench_project(l, &tmp.join(format!("n{max}")), project, max)?;
    let (ok, text) = deploy::fleet_env(
        l,
        &bin,
        &full,
        &["deploy", "bench", "--yes"],
        &masters.env(),
    )?;
    if !ok {
        bail!("deploying the bench app to {max} hosts failed:\n{text}");
    }
    let result = (|| -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        for &n in &sizes {
            let manifest = deploy::bench_project(l, &tmp.join(format!("n{n}")), project, n)?;
            // Best of three: wall time (with the machine's CPU busy share of that run), and
            // fleet's CPU time.
            let best = |warm: bool| -> Result<(Duration, f64, Duration)> {
                let env = masters.env();
                let plan = || {
                    deploy::fleet_env(
                        l,
                        &bin,
                        &manifest,
                        &["plan", "bench", "--detailed-exitcode"],
                        &env,
                    )
                };
                if warm {
                    plan()?; // the command before: its masters are kept
                }
                let mut best = (Duration::MAX, 0.0, Duration::MAX);
                for _ in 0..3 {
                    if !warm {
                        masters.clear();
                    }
                    let (t, cpu, own) = (Instant::now(), cpu_ticks(), children_cpu());
                    let (ok, text) = plan()?;
                    let (d, busy) = (t.elapsed(), busy_since(cpu));
                    let own = children_cpu().saturating_sub(own);
                    if !ok || !text.contains("No changes.") {
                        bail!("not a no-op plan on {n} hosts:\n{text}");
                    }
                    if d < best.0 {
                        (best.0, best.1) = (d, busy);
                    }
                    best.2 = best.2.min(own);
                }
                Ok(best)
            };
            let ((cold, busy, cold_cpu), (warm, _, warm_cpu)) = (best(false)?, best(true)?);
            let floor = ssh_floor(l, n)?;
            let row = Row {
                n,
                cold,
                warm,
                floor,
                busy,
                cold_cpu: cold_cpu / n,
                warm_cpu: warm_cpu / n,
            };
            println!(
                "bench plan: {n:>2} host(s): cold {:.3}s (CPU {:.0}% busy, fleet {} per host)  \
                 warm {:.3}s (fleet {} per host)  ssh floor {:.3}s",
                cold.as_secs_f64(),
                busy * 100.0,
                ms(row.cold_cpu),
                warm.as_secs_f64(),
                ms(row.warm_cpu),
                floor.as_secs_f64()
            );
            rows.push(row);
        }
        Ok(rows)
    })();
    deploy::cleanup(l, project, max);
    let rows = result?;
    println!("\nbench plan: no-op `fleet plan`, release binary, one app instance per host");
    println!("  hosts    cold  (CPU busy)  fleet CPU/host    warm  fleet CPU/host   ssh floor");
    for r in &rows {
        println!(
            "  {:>5}  {:>5.3}s  ({:>3.0}%)     {:>9}  {:>5.3}s  {:>14}  {:>9.3}s",
            r.n,
            r.cold.as_secs_f64(),
            r.busy * 100.0,
            ms(r.cold_cpu),
            r.warm.as_secs_f64(),
            ms(r.warm_cpu),
            r.floor.as_secs_f64()
        );
    }
    if let (Some(a), Some(b)) = (rows.first(), rows.last()) {
        let r = |x: Duration, y: Duration| x.as_secs_f64() / y.as_secs_f64();
        println!(
            "  {} hosts / {} host: cold {:.2}x, warm {:.2}x, ssh floor {:.2}x (target < 2x; {} hosts < 1.5 s)",
            b.n,
            a.n,
            r(b.cold, a.cold),
            r(b.warm, a.warm),
            r(b.floor, a.floor),
            b.n
        );
    }
    if let Some(one) = rows.iter().find(|r| r.n == 1) {
        println!(
            "  fleet CPU of a warm one-host plan: {} (target <= 20 ms)",
            ms(one.warm_cpu)
        );
    }
    Ok(())
}

/// One host count's results; CPU times are fleet's own, divided by the host count.
struct Row {
    n: u32,
    cold: Duration,
    warm: Duration,
    floor: Duration,
    /// The machine's CPU busy share during the best cold run.
    busy: f64,
    cold_cpu: Duration,
    warm_cpu: Duration,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// N bare SSH connections at once, as fleet opens them (a master: handshake and
/// authentication, no command), then closed; best of three.
fn ssh_floor(l: &Layout, n: u32) -> Result<Duration> {
    let dir = PathBuf::from(format!("/tmp/fleet-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let children: Vec<_> = (1..=n)
            .map(|i| {
                Command::new("ssh")
                    .arg("-F")
                    .arg(l.path("ssh_config"))
                    .args(["-M", "-f", "-N", "-S"])
                    .arg(dir.join(format!("h{i}")))
                    .arg(format!("h{i}"))
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        for mut c in children {
            if !c.wait()?.success() {
                bail!("ssh to a testbed host failed");
            }
        }
        best = best.min(t.elapsed());
        for i in 1..=n {
            let _ = Command::new("ssh")
                .arg("-S")
                .arg(dir.join(format!("h{i}")))
                .args(["-O", "exit", "x"])
                .output();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(best)
}

/// `cargo run --release --example NAME -- ARGS`, pointed at the testbed when it needs one.
fn example(l: &Layout, name: &str, args: &[&str], testbed: bool) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "fleet",
        "--example",
        name,
        "--",
    ])
    .args(args)
    .current_dir(&l.workspace);
    if testbed {
        if !l.path("READY").exists() {
            bail!(
                "no testbed in {} (run `cargo xtask testbed up` first)",
                l.d()
            );
        }
        l.point_at(&mut cmd)?;
    }
    let code = crate::sh::interactive(&mut cmd)?;
    if code != 0 {
        bail!("{name} exited with {code}");
    }
    Ok(())
}
