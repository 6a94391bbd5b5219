//! `cargo xtask bench ansible`: the same converge through Ansible and through fleet, on the same
//! test hosts, with the same image, in one run.
//!
//! Ansible comes from PyPI (`ansible`, which carries community.docker) into a venv under
//! `target/ansible-venv` (made once, reused); the hosts need `python3-requests`, installed here
//! with apt when missing (the test hosts share this machine's files). The playbook is
//! `bench/ansible/deploy.yml`, written as its users write it (`docker_login`,
//! `docker_image_pull`, `docker_container`; forks 20, pipelining, `ControlPersist` for warm).
//!
//! Measured for each tool: a no-op converge and a one-version change, cold (no SSH connection
//! open) and warm (the connections the previous command kept), each the best of a few runs, and
//! the CPU (user + sys) of the tool's own processes per host beside the wall time.
use crate::deploy::{self, KeptMasters};
use crate::testbed::layout::Layout;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PROJECT: &str = "abench";
const CONTAINER: &str = "abench-ansible-hello";

/// One measurement: wall time and the CPU its processes used (user + sys, all hosts).
#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
}

/// Runs `cmd`, failing with its output unless it succeeds; returns the sample and the output.
fn timed(cmd: &mut Command, what: &str) -> Result<(Sample, String)> {
    let (t, c) = (Instant::now(), crate::cpu::children_cpu());
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    let s = Sample {
        wall: t.elapsed(),
        cpu: crate::cpu::children_cpu().saturating_sub(c),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{what} failed:\n{text}");
    }
    Ok((s, text))
}

/// The venv's `ansible-playbook`, made on first use.
fn ansible(l: &Layout) -> Result<PathBuf> {
    let missing: Vec<&str> = ["python3-venv", "python3-requests"]
        .into_iter()
        .filter(|p| {
            !crate::sh::ok(&format!(
                "dpkg-query -W -f='${{Status}}' {p} 2>/dev/null | grep -q 'install ok installed'"
            ))
        })
        .collect();
    if !missing.is_empty() {
        let list = missing.join(" ");
        eprintln!("bench ansible: installing {list}");
        crate::sh::run(&format!(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {list} \
             || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {list})"
        ))?;
    }
    let venv = l.workspace.join("target/ansible-venv");
    let playbook = venv.join("bin/ansible-playbook");
    if !playbook.exists() {
        eprintln!(
            "bench ansible: installing ansible from PyPI into {}",
            venv.display()
        );
        let ok = Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?
            .success()
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "ansible"])
                .status()?
                .success();
        if !ok {
            bail!("could not install ansible into {}", venv.display());
        }
    }
    Ok(playbook)
}

/// `cargo xtask bench ansible [--hosts N]`: on the largest count given that the testbed has.
pub fn bench(l: &Layout, sizes: &[u32]) -> Result<()> {
    let have: u32 = std::fs::read_to_string(l.path("hosts"))
        .context("no testbed (run `cargo xtask testbed up`)")?
        .trim()
        .parse()?;
    let n = sizes
        .iter()
        .copied()
        .filter(|s| *s <= have)
        .max()
        .unwrap_or(have);
    let playbook = ansible(l)?;
    let bin = deploy::fleet_bin(l, true)?;
    let tmp = l.workspace.join("target/bench-ansible");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = run(l, &playbook, &bin, &tmp, n);
    // Leave nothing behind on the hosts, whatever happened.
    for i in 1..=n {
        let _ = crate::testbed::ssh_out(
            l,
            i,
            &format!(
                "docker rm -f {CONTAINER} >/dev/null 2>&1; rm -rf /tmp/{PROJECT}-docker-config; true"
            ),
        );
    }
    deploy::cleanup(l, PROJECT, n);
    let rows = result?;
    println!("\nbench ansible: {n} host(s), the same image, one container per host");
    println!(
        "  {:<26} {:>10} {:>12} {:>10} {:>12} {:>8}",
        "", "ansible", "(CPU/host)", "fleet", "(CPU/host)", "ratio"
    );
    for (what, a, f) in &rows {
        println!(
            "  {what:<26} {:>9.2}s {:>11.3}s {:>9.2}s {:>11.3}s {:>7.1}x",
            a.wall.as_secs_f64(),
            a.cpu.as_secs_f64() / n as f64,
            f.wall.as_secs_f64(),
            f.cpu.as_secs_f64() / n as f64,
            a.wall.as_secs_f64() / f.wall.as_secs_f64()
        );
    }
    println!(
        "  (ratio: Ansible's wall time / fleet's. fleet's change also waits for the health check, \
         drains and registers in Consul; the playbook stops the old container before the new one starts)"
    );
    Ok(())
}

fn run(
    l: &Layout,
    playbook: &Path,
    bin: &Path,
    tmp: &Path,
    n: u32,
) -> Result<Vec<(&'static str, Sample, Sample)>> {
    // fleet's project, and two versions of it pushed (A, then B with one more file).
    let manifest = deploy::bench_project(l, &tmp.join("fleet"), PROJECT, n)?;
    let app = tmp.join("fleet/app");
    let masters = KeptMasters::new(PathBuf::from(format!(
        "/tmp/fleet-abench-{}",
        std::process::id()
    )))?;
    let fleet = |args: &[&str]| -> Result<Command> {
        let mut c = Command::new(bin);
        c.arg("-f").arg(&manifest).args(args).env("NO_COLOR", "1");
        l.point_at(&mut c)?;
        c.envs(masters.env());
        Ok(c)
    };
    let image_of = || -> Result<String> {
        let (_, out) = timed(&mut fleet(&["show", "bench", "--json"])?, "fleet show")?;
        let v: serde_json::Value = serde_json::from_str(&out).context("fleet show --json")?;
        v["hosts"][0]["instances"][0]["container"]["image"]
            .as_str()
            .map(str::to_string)
            .context("no image in fleet show --json")
    };
    let set_version = |v: &str| std::fs::write(app.join("STAMP"), v);
    set_version("A")?;
    timed(&mut fleet(&["build", "--push"])?, "fleet build A")?;
    let image_a = image_of()?;
    set_version("B")?;
    timed(&mut fleet(&["build", "--push"])?, "fleet build B")?;
    let image_b = image_of()?;

    // Ansible's inventory and settings; its kept connections live in their own directory.
    let control = PathBuf::from(format!("/tmp/abench-cp-{}", std::process::id()));
    std::fs::create_dir_all(&control)?;
    let mut inventory = String::from("[web]\n");
    for i in 1..=n {
        inventory.push_str(&format!(
            "h{i} ansible_host=10.200.{i}.2 ansible_user=root\n"
        ));
    }
    std::fs::write(tmp.join("inventory"), inventory)?;
    let reg = std::fs::read_to_string(l.path("registry.env"))?;
    let get = |k: &str| {
        reg.lines()
            .find_map(|x| x.strip_prefix(&format!("{k}=")))
            .unwrap_or_default()
            .to_string()
    };
    let vars = |image: &str| {
        serde_json::json!({
            "registry": get("FLEET_REGISTRY"),
            "registry_user": get("FLEET_REGISTRY_USER"),
            "registry_password": get("FLEET_REGISTRY_PASSWORD"),
            "image": image,
            "container": CONTAINER,
            "docker_config": format!("/tmp/{PROJECT}-docker-config"),
        })
        .to_string()
    };
    let ansible_run = |image: &str| -> Result<Sample> {
        let mut c = Command::new(playbook);
        c.arg("-i")
            .arg(tmp.join("inventory"))
            .arg(l.workspace.join("bench/ansible/deploy.yml"))
            .arg("-e")
            .arg(vars(image))
            .env(
                "ANSIBLE_CONFIG",
                l.workspace.join("bench/ansible/ansible.cfg"),
            )
            .env(
                "ANSIBLE_SSH_ARGS",
                format!(
                    "-F {} -o ControlMaster=auto -o ControlPersist=60s",
                    l.path("ssh_config").display()
                ),
            )
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", &control)
            .env("ANSIBLE_LOCAL_TEMP", tmp.join("ansible-tmp"))
            .env("ANSIBLE_NOCOLOR", "1");
        Ok(timed(&mut c, "ansible-playbook")?.0)
    };
    let ansible_cold = || {
        if let Ok(entries) = std::fs::read_dir(&control) {
            for e in entries.flatten() {
                let _ = Command::new("ssh")
                    .arg("-S")
                    .arg(e.path())
                    .args(["-O", "exit", "x"])
                    .output();
            }
        }
    };
    let fleet_deploy = || -> Result<Sample> {
        let (s, out) = timed(
            &mut fleet(&["deploy", "bench", "--yes", "--no-build"])?,
            "fleet deploy",
        )?;
        if out.contains("Deploy failed") {
            bail!("fleet deploy failed:\n{out}");
        }
        Ok(s)
    };
    let best = |f: &dyn Fn() -> Result<Sample>, before: &dyn Fn()| -> Result<Sample> {
        let mut b = Sample {
            wall: Duration::MAX,
            cpu: Duration::ZERO,
        };
        for _ in 0..3 {
            before();
            let s = f()?;
            if s.wall < b.wall {
                b = s;
            }
        }
        Ok(b)
    };

    // Both start from version A running everywhere.
    ansible_run(&image_a)?;
    set_version("A")?;
    fleet_deploy()?;
    let nothing = || {};
    let rows = vec![
        (
            "no-op, cold",
            best(&|| ansible_run(&image_a), &ansible_cold)?,
            best(&fleet_deploy, &|| masters.clear())?,
        ),
        (
            "no-op, warm",
            best(&|| ansible_run(&image_a), &nothing)?,
            best(&fleet_deploy, &nothing)?,
        ),
        (
            "one-version change, cold",
            {
                ansible_cold();
                ansible_run(&image_b)?
            },
            {
                masters.clear();
                set_version("B")?;
                fleet_deploy()?
            },
        ),
        ("one-version change, warm", ansible_run(&image_a)?, {
            set_version("A")?;
            fleet_deploy()?
        }),
    ];
    ansible_cold();
    let _ = std::fs::remove_dir_all(&control);
    Ok(rows)
}
