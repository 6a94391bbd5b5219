//! `cargo xtask testbed down`: every host's processes, mounts, namespaces and chains gone, and
//! a check that nothing is left behind.

use super::network::{TABLE, cut_chains, remove_cut_chain};
use super::*;

/// Every process that belongs to host N: the pids it recorded, whatever runs in its network
/// namespace (sshd sessions, containerd shims, docker-proxy), and all their descendants
/// (container processes live in their own namespaces but descend from the shims).
pub(super) fn host_processes(l: &Layout, n: u32) -> BTreeSet<u32> {
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

pub(super) fn in_netns(pid: u32, n: u32) -> bool {
    let ns = std::fs::metadata(format!("/var/run/netns/h{n}"));
    let p = std::fs::metadata(format!("/proc/{pid}/ns/net"));
    use std::os::unix::fs::MetadataExt;
    match (ns, p) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

pub(super) fn stop_host_processes(l: &Layout, n: u32) -> Result<()> {
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

pub(super) fn stop_host(l: &Layout, n: u32) -> Result<()> {
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
