//! Bare hosts b1..bN: sshd and dockerd only, no Consul agent (what `fleet setup` starts from).
//! `cargo xtask testbed up --bare N` adds them to a testbed that is up (h1..hM are not touched),
//! `cargo xtask testbed down --bare` removes only them; `down` removes them too.
//!
//! Host N: network namespace `bN`, address 10.201.N.2 (outer end of veth `fleet-bN`:
//! 10.201.N.1), Docker bridge 10.211.N.1/24, everything under DIR/bare/bN. Their own Consul
//! stand-in store (`consul-standin server`) listens on 10.201.1.1:8300 (every bN reaches it
//! through its default route) and 127.0.0.1:8310; the agents `fleet setup` starts from
//! `fleet-test/consul:standin` forward to it. Files for users and tests: DIR/bare/ssh_config
//! (the testbed's hosts and b1..bN), DIR/bare/known_hosts, DIR/bare/hosts.
use super::layout::{INSECURE, Layout};
use super::probe;
use crate::procs;
use crate::sh::{self, q};
use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The routing table of the testbed (see `setup_network` in mod.rs).
const TABLE: u32 = 4200;
/// Where the bare hosts' stand-in store listens for the machine (the hosts use 10.201.1.1:8300).
pub const STORE_LOCAL: &str = "127.0.0.1:8310";

pub fn dir(l: &Layout) -> PathBuf {
    l.path("bare")
}
fn host_dir(l: &Layout, n: u32) -> PathBuf {
    dir(l).join(format!("b{n}"))
}
pub fn address(n: u32) -> String {
    format!("10.201.{n}.2")
}
fn gateway(n: u32) -> String {
    format!("10.201.{n}.1")
}
fn veth(n: u32) -> String {
    format!("fleet-b{n}")
}
/// The socket of bN's engine, from the machine.
pub fn docker_sock(l: &Layout, n: u32) -> PathBuf {
    host_dir(l, n).join("run/docker.sock")
}

fn existing() -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix('b')?.parse().ok()
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn network(n: u32) -> Result<()> {
    let (ns, v, inner, outer) = (format!("b{n}"), veth(n), address(n), gateway(n));
    if !Path::new(&format!("/var/run/netns/{ns}")).exists() {
        sh::run(&format!("ip netns add {ns}"))?;
    }
    if !sh::ok(&format!("ip link show {v}")) {
        sh::run(&format!(
            "ip link add {v} type veth peer name eth0 netns {ns}"
        ))?;
    }
    let bridge = format!("10.211.{n}.0/24");
    sh::run(&format!(
        "ip addr replace {outer}/24 dev {v} && ip link set {v} up && \
         ip -n {ns} link set lo up && ip -n {ns} addr replace {inner}/24 dev eth0 && \
         ip -n {ns} link set eth0 up && ip -n {ns} route replace default via {outer} && \
         sysctl -qw net.ipv4.conf.{v}.forwarding=1 && \
         ip route replace 10.201.{n}.0/24 dev {v} table {TABLE} && \
         ip route replace {bridge} via {inner} dev {v} table {TABLE} && \
         ip route replace {bridge} via {inner} dev {v} && \
         ip route replace unreachable default table {TABLE} && \
         {{ ip rule show | grep -q 'iif {v} lookup {TABLE}' || ip rule add iif {v} lookup {TABLE} priority {TABLE}; }}"
    ))
}

fn files(l: &Layout, n: u32) -> Result<()> {
    let d = host_dir(l, n);
    std::fs::create_dir_all(&d)?;
    let key = d.join("ssh_host_ed25519_key");
    if !key.exists() {
        sh::run(&format!(
            "ssh-keygen -q -t ed25519 -N '' -C b{n} -f {}",
            q(key.display().to_string())
        ))?;
    }
    std::fs::write(
        d.join("sshd_config"),
        format!(
            "# b{n}: written by `cargo xtask testbed up --bare`\n\
             ListenAddress {addr}\nPort 22\nHostKey {key}\nPidFile /run/sshd.pid\n\
             AuthorizedKeysFile {auth}\nPermitRootLogin prohibit-password\nStrictModes no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             AllowTcpForwarding yes\nAllowStreamLocalForwarding yes\nStreamLocalBindUnlink yes\n\
             MaxSessions 64\nMaxStartups 64:30:128\nLogLevel INFO\n",
            addr = address(n),
            key = key.display(),
            auth = l.path("authorized_keys").display(),
        ),
    )?;
    std::fs::write(
        d.join("daemon.json"),
        format!(
            "{{\"deprecated-key-path\": \"{}\"}}\n",
            d.join("key.json").display()
        ),
    )?;
    Ok(())
}

fn start_engine(l: &Layout, n: u32) -> Result<()> {
    let d = host_dir(l, n);
    let run = d.join("run");
    if procs::live_pid(&run.join("docker.pid"), "dockerd").is_some() {
        return Ok(());
    }
    // A host whose engine stopped: its sshd (in the old mount namespace) goes too, by its pid
    // file, before /run is cleared; `start_sshd` starts it again in the new one.
    if let Some(pid) = procs::live_pid(&run.join("sshd.pid"), "sshd") {
        procs::stop_all(&[pid].into(), Duration::from_secs(10));
    }
    if run.exists() {
        std::fs::remove_dir_all(&run)?;
    }
    std::fs::create_dir_all(&run)?;
    std::fs::create_dir_all(d.join("docker"))?;
    let script = format!(
        "set -e; hostname b{n}; mount --bind {run} /run; \
         exec dockerd --config-file {cfg} --data-root {data} --exec-root /run/docker \
         --pidfile /run/docker.pid -H unix:///run/docker.sock --iptables=false \
         --bip 10.211.{n}.1/24 --insecure-registry {INSECURE}",
        run = q(run.display().to_string()),
        cfg = q(d.join("daemon.json").display().to_string()),
        data = q(d.join("docker").display().to_string()),
    );
    sh::spawn_detached(
        Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/b{n}"))
            .args(["unshare", "--mount", "--uts", "--propagation", "private"])
            .args(["sh", "-c", &script]),
        &d.join("dockerd.log"),
    )?;
    Ok(())
}

/// sshd inside bN's namespaces (joined through its dockerd).
pub fn start_sshd(l: &Layout, n: u32) -> Result<()> {
    let d = host_dir(l, n);
    if procs::live_pid(&d.join("run/sshd.pid"), "sshd").is_some() {
        return Ok(());
    }
    // sshd's privilege separation directory, on the host's /run.
    std::fs::create_dir_all(d.join("run/sshd"))?;
    let pid = procs::live_pid(&d.join("run/docker.pid"), "dockerd")
        .with_context(|| format!("dockerd of b{n} is not running"))?;
    let status = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/b{n}"))
        .arg(format!("--mount=/proc/{pid}/ns/mnt"))
        .arg(format!("--uts=/proc/{pid}/ns/uts"))
        .arg("/usr/sbin/sshd")
        .arg("-f")
        .arg(d.join("sshd_config"))
        .arg("-E")
        .arg(d.join("sshd.log"))
        .status()?;
    if !status.success() {
        bail!("sshd of b{n} failed; see {}", d.join("sshd.log").display());
    }
    Ok(())
}

fn start_store(l: &Layout, bin: &Path) -> Result<()> {
    let pidfile = dir(l).join("consul-store.pid");
    if procs::live_pid(&pidfile, "consul-standin").is_some() {
        return Ok(());
    }
    let mut cmd = Command::new(bin);
    cmd.args([
        "server",
        "--quiet",
        "--listen",
        "10.201.1.1:8300",
        "--listen",
        STORE_LOCAL,
    ]);
    cmd.arg("--data-dir").arg(dir(l).join("consul-store"));
    let pid = sh::spawn_detached(&mut cmd, &dir(l).join("consul-store.log"))?;
    std::fs::write(&pidfile, format!("{pid}\n"))?;
    if !sh::wait_until(Duration::from_secs(10), || probe::tcp_open(STORE_LOCAL)) {
        bail!("the bare hosts' Consul store did not open {STORE_LOCAL}");
    }
    Ok(())
}

fn client_files(l: &Layout, hosts: u32) -> Result<()> {
    let (d, b) = (l.d(), dir(l).display().to_string());
    let mut known = String::new();
    let mut cfg = std::fs::read_to_string(l.path("ssh_config")).unwrap_or_default();
    cfg.push_str("\n# bare hosts, written by `cargo xtask testbed up --bare`\n");
    for n in 1..=hosts {
        let pubkey = std::fs::read_to_string(host_dir(l, n).join("ssh_host_ed25519_key.pub"))?;
        let mut parts = pubkey.split_whitespace();
        let (kind, key) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let addr = address(n);
        writeln!(known, "b{n},{addr} {kind} {key}")?;
        write!(
            cfg,
            "\nHost b{n} {addr}\n  HostName {addr}\n  Port 22\n  User root\n  IdentityFile {d}/id_ed25519\n  \
             IdentitiesOnly yes\n  UserKnownHostsFile {b}/known_hosts\n  GlobalKnownHostsFile /dev/null\n  \
             StrictHostKeyChecking yes\n  ControlMaster no\n  ConnectTimeout 5\n  LogLevel ERROR\n"
        )?;
    }
    std::fs::write(dir(l).join("known_hosts"), known)?;
    std::fs::write(dir(l).join("ssh_config"), cfg)?;
    std::fs::write(dir(l).join("hosts"), format!("{hosts}\n"))?;
    Ok(())
}

/// Adds b1..bN to the testbed that is up in DIR (its client key and registry).
pub fn up(l: &Layout, hosts: u32, bin: &Path) -> Result<()> {
    if hosts == 0 || hosts > 250 {
        bail!("--bare must be between 1 and 250");
    }
    if !l.path("authorized_keys").exists() {
        bail!(
            "no testbed in {} (run `cargo xtask testbed up` first)",
            l.d()
        );
    }
    for n in existing().into_iter().filter(|n| *n > hosts) {
        stop_host(l, n);
    }
    std::fs::create_dir_all(dir(l))?;
    for n in 1..=hosts {
        network(n)?;
        files(l, n)?;
        start_engine(l, n)?;
    }
    start_store(l, bin)?;
    for n in 1..=hosts {
        if !sh::wait_until(Duration::from_secs(60), || {
            probe::docker_ping(&docker_sock(l, n))
        }) {
            bail!(
                "dockerd of b{n} did not come up; see {}",
                host_dir(l, n).join("dockerd.log").display()
            );
        }
        start_sshd(l, n)?;
    }
    for n in 1..=hosts {
        let a = format!("{}:22", address(n));
        if !sh::wait_until(Duration::from_secs(15), || probe::tcp_open(&a)) {
            bail!("sshd of b{n} does not answer at {a}");
        }
    }
    client_files(l, hosts)?;
    for n in 1..=hosts {
        let out = sh::output(&format!(
            "ssh -F {} b{n} docker info --format '{{{{.Name}}}}' </dev/null",
            q(dir(l).join("ssh_config").display().to_string())
        ))?;
        if out != format!("b{n}") {
            bail!("ssh b{n} reached an engine named {out:?}");
        }
    }
    images(l, bin, hosts)?;
    std::fs::write(dir(l).join("READY"), format!("{hosts}\n"))?;
    println!(
        "bare hosts b1..b{hosts} up (10.201.N.2, sshd + dockerd, no agent); FLEET_SSH_CONFIG={}/ssh_config; store {STORE_LOCAL}",
        dir(l).display()
    );
    Ok(())
}

fn stop_host(l: &Layout, n: u32) {
    let run = host_dir(l, n).join("run");
    let mut pids = BTreeSet::new();
    for (f, what) in [("sshd.pid", "sshd"), ("docker.pid", "dockerd")] {
        if let Some(p) = procs::live_pid(&run.join(f), what) {
            pids.insert(p);
        }
    }
    let pids = procs::with_descendants(&pids);
    procs::stop_all(&pids, Duration::from_secs(20));
    let v = veth(n);
    let _ = sh::ok(&format!(
        "ip link del {v} 2>/dev/null; ip netns del b{n} 2>/dev/null; \
         ip route del 10.211.{n}.0/24 2>/dev/null; \
         ip route del 10.201.{n}.0/24 table {TABLE} 2>/dev/null; \
         ip route del 10.211.{n}.0/24 table {TABLE} 2>/dev/null; \
         while ip rule del iif {v} lookup {TABLE} 2>/dev/null; do :; done; true"
    ));
}

/// Removes b1..bN and their store (by pid files), keeping nothing of them running.
pub fn down(l: &Layout) -> Result<()> {
    for n in existing() {
        stop_host(l, n);
    }
    if let Some(pid) = procs::live_pid(&dir(l).join("consul-store.pid"), "consul-standin") {
        // The stand-in may ignore SIGTERM while blocking queries are open: stop_all kills it.
        procs::stop_all(&[pid].into(), Duration::from_secs(3));
    }
    let _ = std::fs::remove_file(dir(l).join("READY"));
    let _ = std::fs::remove_dir_all(dir(l).join("consul-store"));
    for n in 1..=250 {
        let d = host_dir(l, n);
        if !d.exists() {
            break;
        }
        // The engine's data (images, the agents' volumes): the next `up --bare` starts bare.
        let _ = std::fs::remove_dir_all(d.join("docker"));
    }
    Ok(())
}

pub const CONSUL_IMAGE: &str = "fleet-test/consul";
/// Two tags of the same stand-in, for the rolling-upgrade test (a changed image tag).
pub const CONSUL_TAGS: [&str; 2] = ["standin", "standin-2"];

/// Builds `fleet-test/consul:standin` and `:standin-2` (the stand-in named `consul`, its
/// libraries, FROM scratch) on the local engine and loads them into every bare host's engine.
pub fn images(l: &Layout, bin: &Path, hosts: u32) -> Result<()> {
    let ctx = dir(l).join("image/consul");
    if ctx.exists() {
        std::fs::remove_dir_all(&ctx)?;
    }
    let root = ctx.join("rootfs");
    let mut files = vec![("/bin/consul".to_string(), bin.to_path_buf())];
    let ldd = sh::output(&format!("ldd {}", q(bin.display().to_string())))?;
    files.extend(super::image::libraries(&ldd));
    super::image::copy_rootfs(&root, &files)?;
    std::fs::create_dir_all(root.join("consul/data"))?;
    std::fs::create_dir_all(root.join("tmp"))?;
    let docker = "DOCKER_BUILDKIT=0 docker -H unix:///run/docker.sock";
    for (i, tag) in CONSUL_TAGS.iter().enumerate() {
        std::fs::write(
            ctx.join("Dockerfile"),
            format!(
                "# The Consul stand-in as `consul` (consul agent flags), for `fleet setup` on bare hosts.\n\
                 FROM scratch\nCOPY rootfs/ /\nENV CONSUL_STANDIN_STORE=http://10.201.1.1:8300\n\
                 LABEL fleet-test.consul-build=\"{i}\"\nENTRYPOINT [\"/bin/consul\"]\nCMD [\"agent\"]\n"
            ),
        )?;
        sh::run(&format!(
            "{docker} build -q -t {CONSUL_IMAGE}:{tag} {} >/dev/null",
            q(ctx.display().to_string())
        ))
        .with_context(|| format!("building {CONSUL_IMAGE}:{tag}"))?;
    }
    let refs: Vec<String> = CONSUL_TAGS
        .iter()
        .map(|t| format!("{CONSUL_IMAGE}:{t}"))
        .collect();
    for n in 1..=hosts {
        sh::run(&format!(
            "{docker} save {} | docker -H unix://{} load -q >/dev/null",
            refs.join(" "),
            q(docker_sock(l, n).display().to_string())
        ))
        .with_context(|| format!("loading the Consul images into b{n}"))?;
    }
    println!("loaded {} into b1..b{hosts}", refs.join(", "));
    Ok(())
}
