//! Files the testbed writes into DIR: keys, configs of its daemons, and what users and tests read
//! (ssh_config, known_hosts, registry.env, hosts.toml, README).
use super::layout::{self, Layout, REGISTRY};
use crate::sh::{self, q};
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

pub struct Creds {
    pub user: String,
    pub password: String,
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn random_hex(bytes: usize) -> Result<String> {
    sh::output(&format!(
        "od -An -tx1 -N{bytes} /dev/urandom | tr -d ' \\n'"
    ))
}

/// Client key, registry credentials (kept across `up`s so they stay stable), htpasswd file.
pub fn credentials(l: &Layout) -> Result<Creds> {
    let key = l.path("id_ed25519");
    if !key.exists() {
        sh::run(&format!(
            "ssh-keygen -q -t ed25519 -N '' -C fleet-testbed-client -f {}",
            q(key.display().to_string())
        ))?;
    }
    std::fs::copy(l.path("id_ed25519.pub"), l.path("authorized_keys"))?;
    let env = l.path("registry.env");
    let old = std::fs::read_to_string(&env).unwrap_or_default();
    let get = |k: &str| {
        old.lines()
            .find_map(|line| line.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    let creds = match (get("FLEET_REGISTRY_USER"), get("FLEET_REGISTRY_PASSWORD")) {
        (Some(user), Some(password)) if !user.is_empty() && !password.is_empty() => {
            Creds { user, password }
        }
        _ => Creds {
            user: format!("fleet-{}", random_hex(3)?),
            password: random_hex(16)?,
        },
    };
    write(
        &env,
        &format!(
            "FLEET_REGISTRY={REGISTRY}\nFLEET_REGISTRY_USER={}\nFLEET_REGISTRY_PASSWORD={}\n",
            creds.user, creds.password
        ),
    )?;
    let line = sh::output(&format!(
        "htpasswd -Bbn {} {}",
        q(&creds.user),
        q(&creds.password)
    ))?;
    write(&l.path("htpasswd"), &format!("{line}\n"))?;
    Ok(creds)
}

pub fn registry_config(l: &Layout) -> Result<()> {
    std::fs::create_dir_all(l.path("registry"))?;
    let secret = random_hex(16)?;
    write(
        &l.path("registry.yml"),
        &format!(
            "# written by `cargo xtask testbed up`\nversion: 0.1\nlog:\n  level: info\n  fields:\n    service: registry\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
             http:\n  addr: 0.0.0.0:5000\n  secret: {secret}\n  headers:\n    X-Content-Type-Options: [nosniff]\n\
             auth:\n  htpasswd:\n    realm: fleet-testbed\n    path: {htpasswd}\n",
            root = l.path("registry").display(),
            htpasswd = l.path("htpasswd").display(),
        ),
    )
}

/// The engine's own daemon config (a machine-wide /etc/docker/daemon.json must not clash with our
/// flags). Each engine gets its own trust key, which is what `docker info` reports as its ID:
/// the default /etc/docker/key.json would give every host the same engine ID.
pub fn daemon_json(path: &Path, key: &Path) -> Result<()> {
    write(
        path,
        &format!("{{\"deprecated-key-path\": \"{}\"}}\n", key.display()),
    )
}

pub fn host_key(l: &Layout, n: u32) -> Result<()> {
    std::fs::create_dir_all(l.host_dir(n))?;
    let key = l.host_file(n, "ssh_host_ed25519_key");
    if !key.exists() {
        sh::run(&format!(
            "ssh-keygen -q -t ed25519 -N '' -C h{n} -f {}",
            q(key.display().to_string())
        ))?;
    }
    Ok(())
}

/// Our own sshd config (not the machine's): key auth only, root allowed, socket forwarding on
/// (fleet forwards the host's /run/docker.sock and 127.0.0.1:8500).
pub fn sshd_config(l: &Layout, n: u32) -> Result<()> {
    write(
        &l.host_file(n, "sshd_config"),
        // StrictModes would refuse the key when DIR sits under a world-writable directory
        // (a checkout in /tmp): the test hosts' files are the testbed's own.
        &format!(
            "# h{n}: written by `cargo xtask testbed up`\n\
             ListenAddress {addr}\nPort 22\nHostKey {key}\nPidFile /run/sshd.pid\n\
             AuthorizedKeysFile {auth}\nPermitRootLogin prohibit-password\n\
             StrictModes no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             AllowTcpForwarding yes\nAllowStreamLocalForwarding yes\nStreamLocalBindUnlink yes\n\
             MaxSessions 64\nMaxStartups 64:30:128\nLogLevel INFO\n\
             Subsystem sftp /usr/lib/openssh/sftp-server\n",
            addr = layout::address(n),
            key = l.host_file(n, "ssh_host_ed25519_key").display(),
            auth = l.path("authorized_keys").display(),
        ),
    )
}

/// known_hosts, ssh_config, hosts.toml and README for users, tests and fleet.
pub fn client_files(l: &Layout, hosts: u32, creds: &Creds) -> Result<()> {
    let d = l.d();
    let (mut known, mut cfg, mut toml) = (String::new(), String::new(), String::new());
    cfg.push_str("# fleet testbed: `ssh -F ");
    cfg.push_str(&d);
    cfg.push_str("/ssh_config h1`. Written by `cargo xtask testbed up`.\n");
    toml.push_str(&format!(
        "# fleet testbed hosts, written by `cargo xtask testbed up`: paste under a manifest.\n\
         # fleet also needs the testbed's known_hosts: run it with FLEET_SSH_CONFIG={d}/ssh_config\n\
         # (that file maps both hN and 10.200.N.2 to the key and known_hosts below).\n"
    ));
    for n in 1..=hosts {
        let pubkey = std::fs::read_to_string(l.host_file(n, "ssh_host_ed25519_key.pub"))?;
        let mut parts = pubkey.split_whitespace();
        let (kind, key) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let addr = layout::address(n);
        writeln!(known, "h{n},{addr} {kind} {key}")?;
        write!(
            cfg,
            "\nHost h{n} {addr}\n  HostName {addr}\n  Port 22\n  User root\n  IdentityFile {d}/id_ed25519\n  \
             IdentitiesOnly yes\n  UserKnownHostsFile {d}/known_hosts\n  GlobalKnownHostsFile /dev/null\n  \
             StrictHostKeyChecking yes\n  ControlMaster no\n  ConnectTimeout 5\n  LogLevel ERROR\n"
        )?;
        write!(
            toml,
            "\n[hosts.h{n}]\naddress = \"{addr}\"\nuser = \"root\"\nport = 22\nidentity_file = \"{d}/id_ed25519\"\n"
        )?;
    }
    write(&l.path("known_hosts"), &known)?;
    write(&l.path("ssh_config"), &cfg)?;
    write(&l.path("hosts.toml"), &toml)?;
    write(&l.path("hosts"), &format!("{hosts}\n"))?;
    let _ = creds;
    write(&l.path("README"), &readme(l, hosts))
}

fn readme(l: &Layout, hosts: u32) -> String {
    let d = l.d();
    format!(
        r#"fleet testbed in {d}  (written by `cargo xtask testbed up --hosts {hosts} --dir {d}`)

HOSTS  h1..h{hosts}: host N is network namespace hN (+ its own mount and UTS namespace, hostname hN)
       at 10.200.N.2 (the outer end of its veth fleet-hN is 10.200.N.1). Each runs:
       - sshd on 10.200.N.2:22 (root, key auth only, host key {d}/hN/ssh_host_ed25519_key)
       - its own dockerd, seen by every SSH session at the default /run/docker.sock
         (from outside also at {d}/hN/run/docker.sock); bridge 10.210.N.1/24, no iptables
       - a Consul agent (consul-standin agent, node hN, address 10.200.N.2) on the host's own
         127.0.0.1:8500 (what fleet reaches through SSH) and on the Docker bridge gateway for
         containers: HTTP 10.210.N.1:8500, DNS 10.210.N.1:53 (UDP+TCP; <service>.service.consul
         A/SRV, passing instances only). It keeps its own services and checks (data
         {d}/hN/consul) and syncs them to the cluster's server; check status changes reach the
         catalog after 300 ms. KV, sessions, health and catalog are the server's: every agent
         sees the same cluster. With `--acl-token TOKEN` when {d}/consul.token exists (read at
         start: after changing it, kill the agents and the server by their pid files and run
         `up` again). FLEET_CONSUL_STANDIN=/path/to/binary overrides the workspace's build.
       Logs: {d}/hN/{{dockerd,sshd,consul}}.log

SSH    ssh -F {d}/ssh_config h2 docker info
       ssh_config   Host entries for hN and 10.200.N.2: User root, IdentityFile id_ed25519,
                    UserKnownHostsFile known_hosts, StrictHostKeyChecking yes
       id_ed25519   the client key (.pub is authorized on every host)
       known_hosts  the real host keys, under both names hN and 10.200.N.2

CONSUL SERVER  consul-standin server in this (outer) namespace on 127.0.0.1:8300 and on every
       host's gateway 10.200.N.1:8300 (agents use their own gateway); data {d}/consul-server,
       log {d}/consul-server.log, pid {d}/consul-server.pid.

REGISTRY  10.200.1.1:5000 (CNCF distribution, plain HTTP, htpasswd auth) - the one address for
       everybody: push from this machine, pull on every host, image references in manifests.
       Every engine trusts 10.200.0.0/16 as insecure. Credentials: {d}/registry.env
       (FLEET_REGISTRY, FLEET_REGISTRY_USER, FLEET_REGISTRY_PASSWORD; `set -a; . {d}/registry.env`).
       Storage {d}/registry, log {d}/registry.log, config {d}/registry.yml.

LOCAL ENGINE  /run/docker.sock for `fleet build`: the one already running there, else a dockerd
       started by the testbed (no bridge, no iptables, data under {d}/local, log {d}/local.log).

FLEET  hosts.toml lists the hosts as a manifest fragment ([hosts.hN] address/user/port/identity_file).
       Point fleet at the known_hosts by running it with FLEET_SSH_CONFIG={d}/ssh_config
       (fleet honours an -F style ssh config from that variable), e.g.
         set -a; . {d}/registry.env; set +a
         FLEET_SSH_CONFIG={d}/ssh_config fleet plan ...
       Tests find all of this through FLEET_TESTBED={d} (tests/testsuite/support/mod.rs).

IMAGES `cargo xtask testbed image --dir {d}` pushes 10.200.1.1:5000/fleet-test/hello:v1 and :v2
       (busybox httpd on :8080, `/` says the version, `/health` says ok).

STOP   `cargo xtask testbed down --dir {d}` stops everything by pid file, removes the namespaces and
       veths; `up` again is harmless and repairs what is missing.
"#
    )
}
