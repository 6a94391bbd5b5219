//! The daemons each host runs (sshd, a Docker engine), the registry, and the local engine for
//! `fleet build`.

use super::teardown::stop_host_processes;
use super::*;

pub(super) fn start_registry(l: &Layout) -> Result<()> {
    let pidfile = l.path("registry.pid");
    if procs::live_pid(&pidfile, "docker-registry").is_some() {
        return Ok(());
    }
    if probe::tcp_open("127.0.0.1:5000") {
        bail!("something else listens on port 5000 (not this testbed's registry); stop it first");
    }
    files::registry_config(l)?;
    let pid = sh::spawn_detached(
        Command::new("docker-registry")
            .arg("serve")
            .arg(l.path("registry.yml")),
        &l.path("registry.log"),
    )?;
    std::fs::write(&pidfile, format!("{pid}\n"))?;
    if !sh::wait_until(Duration::from_secs(15), || {
        probe::http_status("127.0.0.1:5000", "/v2/") == Some(401)
    }) {
        bail!(
            "the registry did not come up (expected 401 at /v2/); see {}",
            l.path("registry.log").display()
        );
    }
    Ok(())
}

pub(super) const DOCKER_SOCK: &str = "/run/docker.sock";

/// The engine `fleet build` uses. Reuses one that already answers at /run/docker.sock; else starts
/// one in the outer namespace that touches no firewall rule and owns no bridge.
pub(super) fn start_local_engine(l: &Layout) -> Result<()> {
    let pidfile = l.path("local.pid");
    if probe::docker_ping(Path::new(DOCKER_SOCK)) {
        if procs::live_pid(&pidfile, "dockerd").is_none() {
            eprintln!(
                "testbed: using the Docker engine already at {DOCKER_SOCK} (not ours: down leaves it)"
            );
        }
        return Ok(());
    }
    if let Some(pid) = procs::live_pid(&pidfile, "dockerd") {
        bail!(
            "our local dockerd (pid {pid}) runs but does not answer at {DOCKER_SOCK}; run `cargo xtask testbed down` first"
        );
    }
    let local = l.path("local");
    std::fs::create_dir_all(local.join("data"))?;
    std::fs::create_dir_all(local.join("exec"))?;
    files::daemon_json(&local.join("daemon.json"), &local.join("key.json"))?;
    let _pid = sh::spawn_detached(
        Command::new("dockerd")
            .arg("--config-file")
            .arg(local.join("daemon.json"))
            .arg("--data-root")
            .arg(local.join("data"))
            .arg("--exec-root")
            .arg(local.join("exec"))
            .arg("--pidfile")
            .arg(&pidfile)
            .args(["-H", &format!("unix://{DOCKER_SOCK}")])
            .args(["--iptables=false", "--ip-forward=false", "--ip-masq=false"])
            .args(["--bridge=none", "--insecure-registry", INSECURE]),
        &l.path("local.log"),
    )?;
    if !sh::wait_until(Duration::from_secs(40), || {
        probe::docker_ping(Path::new(DOCKER_SOCK))
    }) {
        bail!(
            "the local dockerd did not answer at {DOCKER_SOCK}; see {}",
            l.path("local.log").display()
        );
    }
    Ok(())
}

/// The host's dockerd: it is the first process of the host's mount + UTS namespace (which carry
/// the /run bind mount and the hostname); sshd and the Consul agent join those namespaces later.
pub(super) fn start_engine(l: &Layout, n: u32) -> Result<()> {
    let run = l.run_dir(n);
    if procs::live_pid(&run.join("docker.pid"), "dockerd").is_some() {
        return Ok(());
    }
    // A half-started host: clear it completely, then start fresh.
    stop_host_processes(l, n)?;
    if run.exists() {
        std::fs::remove_dir_all(&run).with_context(|| format!("cannot clear {}", run.display()))?;
    }
    std::fs::create_dir_all(run.join("sshd"))?;
    std::fs::create_dir_all(l.host_file(n, "docker"))?;
    files::daemon_json(&l.host_file(n, "daemon.json"), &l.host_file(n, "key.json"))?;
    let script = format!(
        "set -e; hostname h{n}; mount --bind {run} /run; \
         exec dockerd --config-file {cfg} --data-root {data} --exec-root /run/docker \
         --pidfile /run/docker.pid -H unix:///run/docker.sock --iptables=false \
         --bip 10.210.{n}.1/24 --insecure-registry {INSECURE}",
        run = q(run.display().to_string()),
        cfg = q(l.host_file(n, "daemon.json").display().to_string()),
        data = q(l.host_file(n, "docker").display().to_string()),
    );
    sh::spawn_detached(
        Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/h{n}"))
            .args(["unshare", "--mount", "--uts", "--propagation", "private"])
            .args(["sh", "-c", &script]),
        &l.host_file(n, "dockerd.log"),
    )?;
    Ok(())
}

pub(super) fn wait_engine(l: &Layout, n: u32) -> Result<()> {
    let sock = l.run_dir(n).join("docker.sock");
    if !sh::wait_until(Duration::from_secs(60), || probe::docker_ping(&sock)) {
        bail!(
            "dockerd of h{n} did not come up; see {}",
            l.host_file(n, "dockerd.log").display()
        );
    }
    Ok(())
}

/// `nsenter` arguments that join host N's namespaces (network by name, mount + UTS through its
/// dockerd, which created them).
pub(super) fn join_host(l: &Layout, n: u32) -> Result<Vec<String>> {
    let pid = procs::live_pid(&l.run_dir(n).join("docker.pid"), "dockerd")
        .with_context(|| format!("dockerd of h{n} is not running"))?;
    Ok(vec![
        format!("--net=/var/run/netns/h{n}"),
        format!("--mount=/proc/{pid}/ns/mnt"),
        format!("--uts=/proc/{pid}/ns/uts"),
    ])
}

pub(super) fn start_sshd(l: &Layout, n: u32) -> Result<()> {
    if procs::live_pid(&l.run_dir(n).join("sshd.pid"), "sshd").is_some() {
        return Ok(());
    }
    let status = Command::new("nsenter")
        .args(join_host(l, n)?)
        .arg("/usr/sbin/sshd")
        .arg("-f")
        .arg(l.host_file(n, "sshd_config"))
        .arg("-E")
        .arg(l.host_file(n, "sshd.log"))
        .status()?;
    if !status.success() {
        bail!(
            "sshd of h{n} failed to start; see {}",
            l.host_file(n, "sshd.log").display()
        );
    }
    Ok(())
}
