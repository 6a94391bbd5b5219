//! `consul-standin`: the Consul stand-in as a process.
//!
//! - `consul-standin server --listen ADDR [--listen ADDR]... [--data-dir DIR] [--acl-file F]`:
//!   the cluster's store (catalog, health, KV, sessions).
//! - `consul-standin agent --node hN --server URL --listen ADDR [--listen ADDR]...
//!   [--dns-listen ADDR]... [--advertise IP] [--data-dir DIR]`: one host's agent.
//! - `consul-standin --listen ADDR [--data-dir DIR] [--node N] [--acl-token T]` (no subcommand):
//!   an agent with its own server in the same process, as `consul agent -dev`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use consul_standin::acl::Acl;

/// A stand-in for Consul (HTTP API v1 and DNS), for fleet's tests, testbed and demo.
#[derive(Debug, Parser)]
#[command(
    name = "consul-standin",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The cluster's server: catalog, health, KV and sessions, shared by every agent.
    Server(ServerArgs),
    /// One host's agent: its own services and checks, synced to --server.
    Agent(AgentArgs),
}

#[derive(Debug, Args)]
struct AclArgs {
    /// Require this ACL token (it may do everything; no token: anonymous, default deny).
    #[arg(long, env = "CONSUL_STANDIN_ACL_TOKEN")]
    acl_token: Option<String>,
    /// ACLs from a JSON file: {"default_policy": "deny", "default_token": "...",
    /// "tokens": {"SECRET": {"management": true}, "SECRET2": {"rules": {"key_prefix": {"app/":
    /// {"policy": "write"}}}}}}.
    #[arg(long)]
    acl_file: Option<PathBuf>,
}

impl AclArgs {
    fn acl(&self) -> anyhow::Result<Option<Acl>> {
        if let Some(file) = &self.acl_file {
            let text = std::fs::read_to_string(file)?;
            let mut acl =
                Acl::from_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if let Some(token) = &self.acl_token {
                acl.tokens.insert(
                    token.clone(),
                    Acl::single_token(token).tokens.remove(token).unwrap(),
                );
            }
            return Ok(Some(acl));
        }
        Ok(self.acl_token.as_deref().map(Acl::single_token))
    }
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Address to serve on (repeatable), e.g. 127.0.0.1:8300.
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// Keep the catalog, KV and sessions here across restarts.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    acl: AclArgs,
    /// Don't log each request to stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct AgentArgs {
    /// Address to serve the HTTP API on (repeatable; a real agent's client_addr).
    #[arg(long, default_value = "127.0.0.1:8500")]
    listen: Vec<SocketAddr>,
    /// Answer DNS (UDP and TCP) here (repeatable; a real agent's ports.dns, 8600).
    #[arg(long)]
    dns_listen: Vec<SocketAddr>,
    /// The server, e.g. http://10.200.1.1:8300 (none: run one in this process).
    #[arg(long)]
    server: Option<String>,
    /// This node's address in the catalog (default: the first non-loopback --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// Keep services and check definitions here across restarts (and, without --server, the
    /// server's data under DIR/server).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    acl: AclArgs,
    /// Node name shown in health and catalog answers (default: the host name).
    #[arg(long)]
    node: Option<String>,
    /// How long a check's new status stays local before the catalog sees it.
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
    sync_delay: Duration,
    /// How often the DeregisterCriticalServiceAfter reaper runs (Consul: 30s).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    reap_interval: Duration,
    /// Floor for DeregisterCriticalServiceAfter (Consul: 1m).
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    deregister_critical_min: Duration,
    /// Don't log each request to stderr.
    #[arg(long)]
    quiet: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    consul_standin::duration::parse(text)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "standin".into())
}

async fn until_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("consul-standin: shutting down");
    Ok(())
}

/// Run as `consul` (the image's entrypoint is this binary named `consul`): `consul agent FLAGS`
/// with Consul's own flags (`consul_standin::consul_cli`).
async fn as_consul(args: Vec<String>) -> anyhow::Result<()> {
    let rest = match args.get(1).map(String::as_str) {
        Some("agent") => &args[2..],
        Some("version") => {
            println!(
                "Consul v1.20.1 (consul-standin {})",
                env!("CARGO_PKG_VERSION")
            );
            return Ok(());
        }
        other => anyhow::bail!("consul (stand-in): only `consul agent` is modelled, not {other:?}"),
    };
    let store = std::env::var("CONSUL_STANDIN_STORE")
        .unwrap_or_else(|_| consul_standin::consul_cli::DEFAULT_STORE.into());
    let mut config = consul_standin::consul_cli::parse(rest, &store, &host_name())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    config.log_requests = false;
    if let Some(dir) = &config.data_dir {
        std::fs::create_dir_all(dir)?;
    }
    let node = config.node.clone();
    let handle = consul_standin::start_agent(config).await?;
    eprintln!(
        "consul-standin: consul agent {node} on {:?}, store {store}",
        handle.addrs()
    );
    until_signal().await?;
    // Consul leaves on SIGTERM for clients (leave_on_terminate); servers here too, so that a
    // replaced server is `left` at once. Exit without waiting for open blocking queries.
    handle.leave().await;
    std::process::exit(0);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "consul")
    {
        return as_consul(args).await;
    }
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Server(args)) => {
            let handle = consul_standin::start_server(consul_standin::ServerConfig {
                listen: args.listen,
                data_dir: args.data_dir,
                acl: args.acl.acl()?,
                log_requests: !args.quiet,
            })
            .await?;
            let addrs: Vec<String> = handle
                .addrs()
                .iter()
                .map(|a| format!("http://{a}"))
                .collect();
            eprintln!("consul-standin: server on {}", addrs.join(" "));
            until_signal().await?;
            handle.shutdown().await;
        }
        Some(Command::Agent(args)) => run_agent(args, true).await?,
        None => run_agent(cli.agent, false).await?,
    }
    Ok(())
}

async fn run_agent(args: AgentArgs, needs_server: bool) -> anyhow::Result<()> {
    if needs_server && args.server.is_none() {
        anyhow::bail!("`consul-standin agent` needs --server URL");
    }
    let mut listen = args.listen.into_iter();
    let mut config = consul_standin::Config::new(listen.next().expect("clap default"));
    config.extra_listen = listen.collect();
    config.dns_listen = args.dns_listen;
    config.server = args.server;
    config.advertise = args.advertise;
    config.data_dir = args.data_dir;
    config.acl = args.acl.acl()?;
    config.node = args.node.unwrap_or_else(host_name);
    config.sync_delay = args.sync_delay;
    config.reap_interval = args.reap_interval;
    config.deregister_critical_min = args.deregister_critical_min;
    config.log_requests = !args.quiet;
    let node = config.node.clone();
    let handle = consul_standin::start(config).await?;
    let http: Vec<String> = handle
        .addrs()
        .iter()
        .map(|a| format!("http://{a}"))
        .collect();
    let dns: Vec<String> = handle.dns_addrs().iter().map(|a| a.to_string()).collect();
    eprintln!(
        "consul-standin: node {node} serving the Consul HTTP API on {}{}; server {}",
        http.join(" "),
        if dns.is_empty() {
            String::new()
        } else {
            format!(", DNS on {}", dns.join(" "))
        },
        handle.server_url().unwrap_or_default()
    );
    until_signal().await?;
    handle.shutdown().await;
    Ok(())
}
