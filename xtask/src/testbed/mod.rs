//! `cargo xtask testbed up|status|down|image`: N test hosts on this machine, each a network +
//! mount + UTS namespace with its own address (10.200.N.2), sshd and Docker engine; one registry
//! with htpasswd auth; a local engine for `fleet build`; a Consul agent slot per host.
//! The recipe is the verified one in the shared TESTBED-NOTES.md (beside this repository, in
//! `../shared/`); docs/ci.md says what the CI run starts.
pub mod bare;
pub mod files;
pub mod image;
pub mod layout;
pub mod probe;

use crate::procs;
use crate::sh::{self, q};
use anyhow::{Context, Result, bail};
use layout::{INSECURE, Layout, MARKER, REGISTRY};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Debian packages the testbed needs, each with a binary that proves it is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("docker.io", "/usr/sbin/dockerd"),
    ("docker-registry", "/usr/bin/docker-registry"),
    ("openssh-server", "/usr/sbin/sshd"),
    ("busybox-static", "/bin/busybox"),
    ("iproute2", "/usr/sbin/ip"),
    // tests/faults.rs cuts a host's link with a DROP chain (docker.io depends on it anyway).
    ("iptables", "/usr/sbin/iptables"),
    ("apache2-utils", "/usr/bin/htpasswd"),
    // Building fleet itself: TLS to registries through the system's OpenSSL.
    ("libssl-dev", "/usr/include/openssl/ssl.h"),
    ("pkg-config", "/usr/bin/pkg-config"),
    // The edge's and the accessory's test images are made from Debian's binaries.
    ("caddy", "/usr/bin/caddy"),
    ("redis-server", "/usr/bin/redis-server"),
];

pub fn ensure_root() -> Result<()> {
    if sh::output("id -u")? != "0" {
        bail!(
            "the testbed needs root (network namespaces, mounts, dockerd); run it as root, e.g. `sudo -E cargo xtask testbed up`"
        );
    }
    Ok(())
}

/// Installs missing Debian packages with apt when possible, else says exactly what is missing.
pub fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, bin)| !Path::new(bin).exists())
        .map(|(p, _)| *p)
        .collect();
    // `docker` (the client) also comes with docker.io.
    let mut missing = missing;
    if !sh::ok("command -v docker") && !missing.contains(&"docker.io") {
        missing.push("docker.io");
    }
    // manifests/koa's packages are installed with npm (the node base image is this machine's
    // node): Debian's where the machine has none.
    if !sh::ok("command -v npm") {
        missing.extend(["nodejs", "npm"]);
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !sh::ok("command -v apt-get") {
        bail!("missing Debian packages: {list}; no apt-get here, install them by other means");
    }
    eprintln!("testbed: installing missing packages: {list}");
    let install =
        format!("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {list}");
    if !sh::ok(&install) {
        sh::run("apt-get update -q")?;
        sh::run(&install).with_context(|| format!("apt-get install {list} failed"))?;
    }
    Ok(())
}

/// Refuses when the global namespaces belong to a testbed in another DIR that is still up.
/// A testbed whose processes are all gone (its session was stopped, the machine kept its
/// namespaces) is abandoned: it is taken down first, so CI on a reused machine can start.
fn check_owner(l: &Layout) -> Result<()> {
    if let Ok(owner) = std::fs::read_to_string(MARKER) {
        let owner = owner.trim();
        if owner != l.d() && !layout::existing_netns().is_empty() {
            let other = Layout::existing(Path::new(owner), &l.workspace);
            let live = leftovers(&other)
                .iter()
                .any(|thing| thing.starts_with("process "));
            if !live {
                eprintln!(
                    "testbed: the testbed in {owner} has no live process left; taking it down"
                );
                return down(&other);
            }
            bail!(
                "another testbed is up in {owner} (namespaces {}); stop it first with `cargo xtask testbed down --dir {owner}`",
                layout::existing_netns()
                    .iter()
                    .map(|n| format!("h{n}"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
    }
    Ok(())
}

pub fn up(l: &Layout, hosts: u32) -> Result<()> {
    if hosts == 0 || hosts > 250 {
        bail!("--hosts must be between 1 and 250");
    }
    ensure_root()?;
    ensure_packages()?;
    check_owner(l)?;
    std::fs::write(MARKER, format!("{}\n", l.d()))?;
    if l.d().len() > 60 {
        eprintln!(
            "testbed: warning: {} is long; unix socket paths under it may exceed 108 bytes",
            l.d()
        );
    }
    // Hosts beyond the requested count from an earlier, larger run would confuse everyone.
    for n in l.known_hosts_numbers().into_iter().filter(|n| *n > hosts) {
        eprintln!("testbed: h{n} is beyond --hosts {hosts}: stopping it");
        stop_host(l, n)?;
        let _ = std::fs::remove_dir_all(l.host_dir(n));
    }

    let creds = files::credentials(l)?;
    start_registry(l)?;
    start_local_engine(l)?;
    let consul = consul_standin(l);

    for n in 1..=hosts {
        setup_network(n)?;
        files::host_key(l, n)?;
        files::sshd_config(l, n)?;
    }
    // The cluster's Consul server: in the outer namespace, on loopback and every host's gateway.
    if let Ok(bin) = &consul {
        start_consul_server(l, hosts, bin)?;
    }
    // Engines start in parallel (each takes a couple of seconds), then we wait for all.
    for n in 1..=hosts {
        start_engine(l, n)?;
    }
    for n in 1..=hosts {
        wait_engine(l, n)?;
        start_sshd(l, n)?;
        if let Ok(bin) = &consul {
            start_consul(l, n, bin)?;
        }
    }
    for n in 1..=hosts {
        let a = format!("{}:22", layout::address(n));
        if !sh::wait_until(Duration::from_secs(15), || probe::tcp_open(&a)) {
            bail!(
                "sshd of h{n} does not answer at {a}; see {}",
                l.host_file(n, "sshd.log").display()
            );
        }
    }
    files::client_files(l, hosts, &creds)?;

    // Prove the path every user takes: ssh with host-key checking to each host, its own engine.
    for n in 1..=hosts {
        let name = ssh_out(l, n, "docker info --format '{{.Name}}'").with_context(|| {
            format!("ssh to h{n} with {} failed", l.path("ssh_config").display())
        })?;
        if name != format!("h{n}") {
            bail!("ssh h{n} reached an engine named {name:?}, expected h{n}");
        }
    }
    // The registry, as every host reaches it, with the generated credentials (a throwaway client
    // config, so nobody's ~/.docker is touched).
    let last = hosts;
    ssh_out(
        l,
        last,
        &format!(
            "c=$(mktemp -d) && DOCKER_CONFIG=$c docker login -u {} --password-stdin {REGISTRY} <<< {} >/dev/null; r=$?; rm -rf $c; exit $r",
            q(&creds.user),
            q(&creds.password)
        ),
    )
    .with_context(|| format!("h{last} cannot log in to the registry at {REGISTRY}"))?;

    if let Err(why) = &consul {
        eprintln!("testbed: Consul agent slot empty on every host: {why}");
    }
    status(l)?;
    // Other sessions and helpers wait for this file; `down` removes it first.
    std::fs::write(l.path("READY"), format!("{hosts}\n"))?;
    println!(
        "testbed up in {}: hosts h1..h{hosts}, registry {REGISTRY}; see {}",
        l.d(),
        l.path("README").display()
    );
    Ok(())
}

/// Runs a command on host N through ssh with the testbed's ssh_config; returns stdout.
pub fn ssh_out(l: &Layout, n: u32, cmd: &str) -> Result<String> {
    let out = Command::new("ssh")
        .arg("-F")
        .arg(l.path("ssh_config"))
        .arg(format!("h{n}"))
        .arg(format!("bash -c {}", q(cmd)))
        .stdin(std::process::Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "ssh h{n} {cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn setup_network(n: u32) -> Result<()> {
    let (ns, veth, inner, outer) = (
        layout::netns(n),
        layout::veth(n),
        layout::address(n),
        layout::gateway(n),
    );
    if !Path::new(&format!("/var/run/netns/{ns}")).exists() {
        sh::run(&format!("ip netns add {ns}"))?;
    }
    if !sh::ok(&format!("ip link show {veth}")) {
        sh::run(&format!(
            "ip link add {veth} type veth peer name eth0 netns {ns}"
        ))?;
    }
    sh::run(&format!(
        "ip addr replace {outer}/24 dev {veth} && ip link set {veth} up && \
         ip -n {ns} link set lo up && ip -n {ns} addr replace {inner}/24 dev eth0 && \
         ip -n {ns} link set eth0 up && ip -n {ns} route replace default via {outer}"
    ))?;
    // Hosts (and their containers) reach each other through this namespace, as machines on a
    // network do: packets that arrive on a host's link are forwarded, but only by a routing
    // table of our own that knows the test hosts' networks and nothing else (an unreachable
    // default), so nothing a test host sends can leave this machine. The machine's own
    // forwarding setting is not touched. Containers send from their bridge address (dockerd
    // runs without iptables, so without the NAT that would hide it): the table routes the
    // answers back to the host that owns that bridge.
    let bridge = format!("10.210.{n}.0/24");
    let inner_net = format!("10.200.{n}.0/24");
    sh::run(&format!(
        "sysctl -qw net.ipv4.conf.{veth}.forwarding=1 && \
         ip route replace {inner_net} dev {veth} table {TABLE} && \
         ip route replace {bridge} via {inner} dev {veth} table {TABLE} && \
         ip route replace {bridge} via {inner} dev {veth} && \
         ip route replace unreachable default table {TABLE} && \
         {{ ip rule show | grep -q 'iif {veth} lookup {TABLE}' || ip rule add iif {veth} lookup {TABLE} priority {TABLE}; }}"
    ))
}

/// The routing table (and rule priority) that carries traffic between test hosts.
const TABLE: u32 = 4200;

fn start_registry(l: &Layout) -> Result<()> {
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

const DOCKER_SOCK: &str = "/run/docker.sock";

/// The engine `fleet build` uses. Reuses one that already answers at /run/docker.sock; else starts
/// one in the outer namespace that touches no firewall rule and owns no bridge.
fn start_local_engine(l: &Layout) -> Result<()> {
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
fn start_engine(l: &Layout, n: u32) -> Result<()> {
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

fn wait_engine(l: &Layout, n: u32) -> Result<()> {
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
fn join_host(l: &Layout, n: u32) -> Result<Vec<String>> {
    let pid = procs::live_pid(&l.run_dir(n).join("docker.pid"), "dockerd")
        .with_context(|| format!("dockerd of h{n} is not running"))?;
    Ok(vec![
        format!("--net=/var/run/netns/h{n}"),
        format!("--mount=/proc/{pid}/ns/mnt"),
        format!("--uts=/proc/{pid}/ns/uts"),
    ])
}

fn start_sshd(l: &Layout, n: u32) -> Result<()> {
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

/// The Consul stand-in binary, if it exists and takes the agent flags; `Err` says why not.
pub fn consul_standin(l: &Layout) -> std::result::Result<PathBuf, String> {
    let bin = match std::env::var_os("FLEET_CONSUL_STANDIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let _ = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "-q", "-p", "consul-standin"])
                .current_dir(&l.workspace)
                .status();
            l.workspace.join("target/debug/consul-standin")
        }
    };
    if !bin.exists() {
        return Err(format!("{} does not exist", bin.display()));
    }
    let help = Command::new(&bin)
        .arg("--help")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_default();
    let mut need = vec![
        "--listen",
        "--data-dir",
        "--node",
        "--server",
        "--dns-listen",
        "--advertise",
    ];
    if l.path("consul.token").exists() {
        need.push("--acl-token");
    }
    match need.iter().find(|f| !help.contains(*f)) {
        Some(f) => Err(format!("{} does not accept {f} (yet)", bin.display())),
        None => Ok(bin),
    }
}

/// Where every host's agent reaches the cluster's server: its own gateway (10.200.N.1).
pub fn consul_server_url(n: u32) -> String {
    format!("http://{}:{CONSUL_SERVER_PORT}", layout::gateway(n))
}

/// The Consul server's port (Consul servers use 8300 for RPC).
pub const CONSUL_SERVER_PORT: u16 = 8300;

fn consul_server_args(l: &Layout, hosts: u32) -> Vec<String> {
    let mut args = vec![
        "server".to_string(),
        "--listen".into(),
        format!("127.0.0.1:{CONSUL_SERVER_PORT}"),
    ];
    for n in 1..=hosts {
        args.push("--listen".into());
        args.push(format!("{}:{CONSUL_SERVER_PORT}", layout::gateway(n)));
    }
    args.push("--data-dir".into());
    args.push(l.path("consul-server").display().to_string());
    args
}

/// Starts (or, when the host count changed, restarts) the Consul server of the testbed.
fn start_consul_server(l: &Layout, hosts: u32, bin: &Path) -> Result<()> {
    let pidfile = l.path("consul-server.pid");
    let argsfile = l.path("consul-server.args");
    let mut args = consul_server_args(l, hosts);
    let wanted = args.join(" ");
    if let Some(pid) = procs::live_pid(&pidfile, "consul-standin") {
        if std::fs::read_to_string(&argsfile).unwrap_or_default() == wanted {
            return Ok(());
        }
        procs::stop_all(&[pid].into(), Duration::from_secs(10));
    }
    let mut cmd = Command::new(bin);
    if let Ok(token) = std::fs::read_to_string(l.path("consul.token")) {
        args.extend(["--acl-token".to_string(), token.trim().to_string()]);
    }
    cmd.args(&args);
    let pid = sh::spawn_detached(&mut cmd, &l.path("consul-server.log"))?;
    std::fs::write(&pidfile, format!("{pid}\n"))?;
    std::fs::write(&argsfile, &wanted)?;
    let addr = format!("127.0.0.1:{CONSUL_SERVER_PORT}");
    if !sh::wait_until(Duration::from_secs(10), || probe::tcp_open(&addr)) {
        bail!(
            "the Consul server did not open {addr}; see {}",
            l.path("consul-server.log").display()
        );
    }
    Ok(())
}

/// Host N's agent: the host's 127.0.0.1:8500 (what fleet reaches over SSH) and its Docker
/// bridge gateway 10.210.N.1 (HTTP :8500, DNS :53) for containers, synced to the server.
fn start_consul(l: &Layout, n: u32, bin: &Path) -> Result<()> {
    let pidfile = l.run_dir(n).join("consul.pid");
    let name = bin
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    if procs::live_pid(&pidfile, &name).is_some() {
        return Ok(());
    }
    let data = l.host_file(n, "consul");
    std::fs::create_dir_all(&data)?;
    let bridge = layout::bridge_gateway(n);
    let mut cmd = Command::new("nsenter");
    cmd.args(join_host(l, n)?)
        .arg(bin)
        .args(["agent", "--node", &format!("h{n}")])
        .args(["--server", &consul_server_url(n)])
        .args(["--listen", "127.0.0.1:8500"])
        .args(["--listen", &format!("{bridge}:8500")])
        .args(["--dns-listen", &format!("{bridge}:53")])
        .args(["--advertise", &layout::address(n)])
        .arg("--data-dir")
        .arg(&data);
    if let Ok(token) = std::fs::read_to_string(l.path("consul.token")) {
        cmd.args(["--acl-token", token.trim()]);
    }
    let pid = sh::spawn_detached(&mut cmd, &l.host_file(n, "consul.log"))?;
    std::fs::write(&pidfile, format!("{pid}\n"))?;
    let probe =
        format!("nsenter --net=/var/run/netns/h{n} bash -c 'exec 3<>/dev/tcp/127.0.0.1/8500'");
    if !sh::wait_until(Duration::from_secs(10), || sh::ok(&probe)) {
        eprintln!(
            "testbed: h{n}: Consul agent did not open 127.0.0.1:8500; see {}",
            l.host_file(n, "consul.log").display()
        );
    }
    Ok(())
}

/// Every process that belongs to host N: the pids it recorded, whatever runs in its network
/// namespace (sshd sessions, containerd shims, docker-proxy), and all their descendants
/// (container processes live in their own namespaces but descend from the shims).
fn host_processes(l: &Layout, n: u32) -> BTreeSet<u32> {
    let mut roots = BTreeSet::new();
    for f in ["docker.pid", "sshd.pid", "consul.pid"] {
        if let Some(p) = procs::read_pid(&l.run_dir(n).join(f)) {
            // Only if it is still in this host's network namespace: a recycled pid is not ours.
            if in_netns(p, n) {
                roots.insert(p);
            }
        }
    }
    if Path::new(&format!("/var/run/netns/h{n}")).exists()
        && let Ok(pids) = sh::output(&format!("ip netns pids h{n}"))
    {
        roots.extend(
            pids.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    procs::with_descendants(&roots)
}

fn in_netns(pid: u32, n: u32) -> bool {
    let ns = std::fs::metadata(format!("/var/run/netns/h{n}"));
    let p = std::fs::metadata(format!("/proc/{pid}/ns/net"));
    use std::os::unix::fs::MetadataExt;
    match (ns, p) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

fn stop_host_processes(l: &Layout, n: u32) -> Result<()> {
    // dockerd first and alone, so it stops its containers and containerd cleanly.
    if let Some(p) = procs::live_pid(&l.run_dir(n).join("docker.pid"), "dockerd")
        && in_netns(p, n)
    {
        procs::stop_all(&[p].into(), Duration::from_secs(20));
    }
    let rest = host_processes(l, n);
    let left = procs::stop_all(&rest, Duration::from_secs(10));
    if !left.is_empty() {
        bail!("h{n}: processes {left:?} did not stop");
    }
    Ok(())
}

fn stop_host(l: &Layout, n: u32) -> Result<()> {
    stop_host_processes(l, n)?;
    if Path::new(&format!("/var/run/netns/h{n}")).exists() {
        sh::run(&format!("ip netns del h{n}"))?;
    }
    // Deleting the namespace takes the veth pair with it, a moment later: gone by then is fine.
    let veth = layout::veth(n);
    if sh::ok(&format!("ip link show {veth}"))
        && !sh::ok(&format!("ip link del {veth} 2>/dev/null"))
        && sh::ok(&format!("ip link show {veth} 2>/dev/null"))
    {
        bail!("cannot remove the link {veth}");
    }
    // Its routes went with the link; the rule names the link and stays unless removed.
    while sh::ok(&format!(
        "ip rule del iif {} lookup {TABLE} 2>/dev/null",
        layout::veth(n)
    )) {}
    Ok(())
}

/// Mount points at or under DIR in our mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(str::to_string))
        .filter(|m| m == &d || m.starts_with(&format!("{d}/")))
        .collect()
}

pub fn down(l: &Layout) -> Result<()> {
    ensure_root()?;
    bare::down(l)?;
    let _ = std::fs::remove_file(l.path("READY"));
    let _ = std::fs::remove_file(l.path("hosts"));
    let mut hosts: BTreeSet<u32> = l.known_hosts_numbers().into_iter().collect();
    // Namespaces hN are the testbed's by convention; after a half-started run they may exist
    // without a host dir. Only when no other DIR claims them.
    let owner = std::fs::read_to_string(MARKER)
        .ok()
        .map(|s| s.trim().to_string());
    if owner.as_deref().is_none_or(|o| o == l.d()) {
        hosts.extend(layout::existing_netns());
    } else if let Some(o) = &owner {
        eprintln!("testbed: namespaces belong to the testbed in {o}; leaving them");
    }
    for &n in &hosts {
        stop_host(l, n)?;
    }
    let mut ours = BTreeSet::new();
    if let Some(p) = procs::live_pid(&l.path("registry.pid"), "docker-registry") {
        ours.insert(p);
    }
    if let Some(p) = procs::live_pid(&l.path("local.pid"), "dockerd") {
        ours.insert(p);
    }
    if let Some(p) = procs::live_pid(&l.path("consul-server.pid"), "consul-standin") {
        ours.insert(p);
    }
    let left = procs::stop_all(&procs::with_descendants(&ours), Duration::from_secs(30));
    if !left.is_empty() {
        bail!("processes {left:?} did not stop");
    }
    for m in mounts_under(&l.dir).into_iter().rev() {
        let _ = sh::run(&format!("umount -l {}", q(&m)));
    }
    for chain in cut_chains() {
        remove_cut_chain(&chain);
    }
    let _ = std::fs::remove_file(l.path("registry.pid"));
    if owner.as_deref() == Some(l.d().as_str()) || owner.is_none() {
        let _ = std::fs::remove_file(MARKER);
    }
    let problems = leftovers(l);
    if !problems.is_empty() {
        bail!(
            "testbed down left things behind:\n  {}",
            problems.join("\n  ")
        );
    }
    println!("testbed down: {} stopped, nothing left behind", l.d());
    Ok(())
}

/// What is still there of a testbed after `down` (empty = clean): live recorded pids, namespaces,
/// veths, mounts under DIR.
pub fn leftovers(l: &Layout) -> Vec<String> {
    let mut v = Vec::new();
    for n in l.known_hosts_numbers() {
        for f in ["docker.pid", "sshd.pid", "consul.pid"] {
            let path = l.run_dir(n).join(f);
            if let Some(p) = procs::read_pid(&path)
                && procs::alive(p)
                && procs::cmdline(p).contains(f.trim_end_matches(".pid"))
            {
                v.push(format!("process {p} from {}", path.display()));
            }
        }
    }
    for (f, what) in [
        ("registry.pid", "docker-registry"),
        ("local.pid", "dockerd"),
        ("consul-server.pid", "consul-standin"),
    ] {
        if let Some(p) = procs::live_pid(&l.path(f), what) {
            v.push(format!("process {p} ({what})"));
        }
    }
    // Namespaces and veths are global: they count as ours unless another DIR claims them.
    let owner = std::fs::read_to_string(MARKER).ok();
    if owner.as_deref().is_none_or(|o| o.trim() == l.d()) {
        for n in layout::existing_netns() {
            v.push(format!("network namespace h{n}"));
        }
        if let Ok(links) = sh::output("ip -o link show") {
            for line in links.lines().filter(|l| l.contains("fleet-h")) {
                v.push(format!(
                    "link {}",
                    line.split(':').nth(1).unwrap_or("").trim()
                ));
            }
        }
    }
    for m in mounts_under(&l.dir) {
        v.push(format!("mount {m}"));
    }
    for chain in cut_chains() {
        v.push(format!("iptables chain {chain}"));
    }
    v
}

/// The iptables chains `FLEET-CUT-hN` with which tests/faults.rs cuts a host's link (each
/// test removes its own; a killed test run leaves one).
fn cut_chains() -> Vec<String> {
    sh::output("iptables -S 2>/dev/null")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("-N FLEET-CUT-"))
        .map(|h| format!("FLEET-CUT-{h}"))
        .collect()
}

fn remove_cut_chain(chain: &str) {
    if let Ok(rules) = sh::output("iptables -S") {
        for rule in rules
            .lines()
            .filter(|r| r.ends_with(&format!("-j {chain}")))
        {
            if let Some(spec) = rule.strip_prefix("-A ") {
                let _ = sh::run(&format!("iptables -D {spec}"));
            }
        }
    }
    let _ = sh::run(&format!("iptables -F {chain} && iptables -X {chain}"));
}

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
