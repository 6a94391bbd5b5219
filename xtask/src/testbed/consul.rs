//! The Consul stand-in (tests/consul-standin): one server process with the shared catalog, KV
//! and sessions, and an agent per host that syncs to it.

use super::daemons::join_host;
use super::*;

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

pub(super) fn consul_server_args(l: &Layout, hosts: u32) -> Vec<String> {
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
pub(super) fn start_consul_server(l: &Layout, hosts: u32, bin: &Path) -> Result<()> {
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
pub(super) fn start_consul(l: &Layout, n: u32, bin: &Path) -> Result<()> {
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
