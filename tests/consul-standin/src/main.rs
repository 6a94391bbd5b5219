//! `consul-standin`: the Consul agent stand-in as a process (the testbed runs one per host).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// A stand-in for the Consul agent HTTP API (v1), for fleet's tests, testbed and demo.
#[derive(Debug, Parser)]
#[command(name = "consul-standin", version)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8500.
    #[arg(long, default_value = "127.0.0.1:8500")]
    listen: SocketAddr,
    /// Keep services, check definitions, KV and sessions here across restarts.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Require this ACL token on every request (403 "Permission denied" otherwise).
    #[arg(long, env = "CONSUL_STANDIN_ACL_TOKEN")]
    acl_token: Option<String>,
    /// Node name shown in health and catalog answers (default: the host name).
    #[arg(long)]
    node: Option<String>,
    /// How often the DeregisterCriticalServiceAfter reaper runs (Consul: 30s).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    reap_interval: std::time::Duration,
    /// Floor for DeregisterCriticalServiceAfter (Consul: 1m).
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    deregister_critical_min: std::time::Duration,
    /// Don't log each request to stderr.
    #[arg(long)]
    quiet: bool,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    consul_standin::duration::parse(text)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "standin".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = consul_standin::Config::new(args.listen);
    config.data_dir = args.data_dir;
    config.acl_token = args.acl_token;
    config.node = args.node.unwrap_or_else(host_name);
    config.reap_interval = args.reap_interval;
    config.deregister_critical_min = args.deregister_critical_min;
    config.log_requests = !args.quiet;
    let node = config.node.clone();
    let handle = consul_standin::start(config).await?;
    eprintln!(
        "consul-standin: node {node} serving the Consul HTTP API on http://{}",
        handle.addr()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("consul-standin: shutting down");
    handle.shutdown().await;
    Ok(())
}
