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

mod consul;
mod daemons;
mod network;
mod packages;
mod status;
mod teardown;

pub use consul::{CONSUL_SERVER_PORT, consul_standin};
use packages::ensure_packages;
pub use packages::ensure_root;
pub use status::status;
pub use teardown::{down, leftovers};

use consul::{start_consul, start_consul_server};
use daemons::{start_engine, start_local_engine, start_registry, start_sshd, wait_engine};
use network::setup_network;
use teardown::stop_host;

use crate::procs;
use crate::sh::{self, q};
use anyhow::{Context, Result, bail};
use layout::{INSECURE, Layout, MARKER, REGISTRY};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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
