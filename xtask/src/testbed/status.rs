//! `cargo xtask testbed status`: what runs, host by host.

use super::daemons::DOCKER_SOCK;
use super::*;

pub fn status(l: &Layout) -> Result<()> {
    let hosts = l.known_hosts_numbers();
    if hosts.is_empty() {
        println!("testbed: nothing in {}", l.d());
        return Ok(());
    }
    let reg = match procs::live_pid(&l.path("registry.pid"), "docker-registry") {
        Some(_) if probe::http_status("127.0.0.1:5000", "/v2/") == Some(401) => "up (auth on)",
        Some(_) => "running, not answering",
        None => "down",
    };
    println!("registry {REGISTRY}: {reg}");
    let local = if probe::docker_ping(Path::new(DOCKER_SOCK)) {
        if procs::live_pid(&l.path("local.pid"), "dockerd").is_some() {
            "up (started by the testbed)"
        } else {
            "up (not the testbed's)"
        }
    } else {
        "down"
    };
    println!("local engine {DOCKER_SOCK}: {local}");
    let server = format!("127.0.0.1:{CONSUL_SERVER_PORT}");
    let consul_server = match procs::live_pid(&l.path("consul-server.pid"), "consul-standin") {
        Some(_) if probe::tcp_open(&server) => "up",
        Some(_) => "running, not answering",
        None => "down",
    };
    println!("consul server {server} (hosts: 10.200.N.1:{CONSUL_SERVER_PORT}): {consul_server}");
    println!(
        "{:<4} {:<12} {:<8} {:<8} {:<8} {:<8}",
        "host", "address", "ssh", "engine", "consul", "reachable"
    );
    let mut all_ok = true;
    for n in hosts {
        let run = l.run_dir(n);
        let engine = probe::docker_ping(&run.join("docker.sock"));
        let sshd = probe::tcp_open(&format!("{}:22", layout::address(n)));
        let consul_pid = procs::read_pid(&run.join("consul.pid")).filter(|p| procs::alive(*p));
        let consul = consul_pid.is_some()
            && sh::ok(&format!(
                "nsenter --net=/var/run/netns/h{n} bash -c 'exec 3<>/dev/tcp/127.0.0.1/8500'"
            ));
        let reach = sshd && ssh_out(l, n, "true").is_ok();
        all_ok &= engine && reach;
        let yn = |b: bool, y: &'static str, no: &'static str| if b { y } else { no };
        println!(
            "h{n:<3} {:<12} {:<8} {:<8} {:<8} {:<8}",
            layout::address(n),
            yn(sshd, "up", "down"),
            yn(engine, "up", "down"),
            yn(consul, "up", "absent"),
            yn(reach, "yes", "NO")
        );
    }
    if !all_ok {
        println!("some hosts are not reachable: `cargo xtask testbed up` repairs them");
    }
    Ok(())
}
