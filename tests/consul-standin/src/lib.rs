//! A stand-in for Consul (v1 HTTP API and DNS), for fleet's tests, testbed and demo.
//!
//! No Consul can be installed on the project's machines, so this crate serves the parts of the
//! API fleet uses with the semantics Consul documents and its source implements, shaped like a
//! real cluster:
//!
//! - a **server** ([`start_server`]) holds what Consul servers hold in raft: the catalog (nodes,
//!   services, checks as last synced), KV and sessions;
//! - an **agent** per host ([`start_agent`]) keeps its own local services and checks
//!   (`/v1/agent/*`), runs the checks, and syncs them to the server as anti-entropy does:
//!   registrations and deregistrations before the call returns, check status changes after
//!   [`Config::sync_delay`]; every other path (KV, sessions, health, catalog) is forwarded to the
//!   server, so every agent sees the same cluster. An agent may also answer DNS
//!   ([`Config::dns_listen`]).
//! - [`start`] without [`Config::server`] runs both in one (as `consul agent -dev` does).
//!
//! The same contract suite (`tests/consul.rs`) also runs against a real agent, which keeps this
//! honest; docs/consul.md lists each behaviour with the Consul source file that defines it.
//!
//! Deliberate knobs (all default to Consul's own rules): [`Config::reap_interval`] (Consul: 30 s),
//! [`Config::deregister_critical_min`] (Consul: 1 min) and [`Config::min_check_interval`]
//! (Consul: 1 s), so tests can watch a critical service being reaped within seconds.

pub mod acl;
mod checks;
pub mod consul_cli;
pub mod dns;
pub mod duration;
mod http;
pub mod members;
mod proxy;
pub mod state;
mod sync;
mod txn;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use acl::Acl;
use state::{Limits, State};

/// How to run a stand-in agent (and, without [`Config::server`], its own server).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free port (see [`Handle::addr`]).
    pub listen: SocketAddr,
    /// More addresses to serve the same HTTP API on (a real agent's `client_addr` list).
    pub extra_listen: Vec<SocketAddr>,
    /// Where to answer DNS (UDP and TCP), as Consul's `ports.dns` (8600 by default on a real one).
    pub dns_listen: Vec<SocketAddr>,
    /// The cluster's server (`http://ADDR`); `None` runs one in this process (dev mode).
    pub server: Option<String>,
    /// The node's address in the catalog (default: the listen address, or 127.0.0.1).
    pub advertise: Option<String>,
    /// When set, the agent keeps its services and check definitions (and, in dev mode, the
    /// server its catalog, KV and sessions) here across restarts.
    pub data_dir: Option<PathBuf>,
    /// ACLs; `None`: disabled (unless `acl_token` is set).
    pub acl: Option<Acl>,
    /// The old single-token setup, kept for callers that set it: when `acl` is `None`, ACLs are
    /// [`Acl::single_token`] of this token.
    pub acl_token: Option<String>,
    /// The node name shown in health and catalog answers.
    pub node: String,
    /// How long a check's new status stays local before it reaches the catalog.
    pub sync_delay: Duration,
    /// How often the DeregisterCriticalServiceAfter reaper runs (Consul: every 30 s).
    pub reap_interval: Duration,
    /// The floor applied to DeregisterCriticalServiceAfter (Consul: 1 minute).
    pub deregister_critical_min: Duration,
    /// The floor applied to check intervals (Consul: 1 s).
    pub min_check_interval: Duration,
    /// Log every request to stderr.
    pub log_requests: bool,
    /// Join the cluster's membership as this (`consul agent` mode: `-server`,
    /// `-bootstrap-expect`); `None`: not a member (the testbed's h1..hN agents, dev mode).
    pub member: Option<members::MemberRole>,
}

/// The default delay between a check's status change on its agent and the catalog.
pub const DEFAULT_SYNC_DELAY: Duration = Duration::from_millis(300);

impl Config {
    /// Consul's defaults, listening on `listen`, node `standin`, its own server.
    pub fn new(listen: SocketAddr) -> Self {
        Config {
            listen,
            extra_listen: Vec::new(),
            dns_listen: Vec::new(),
            server: None,
            advertise: None,
            data_dir: None,
            acl: None,
            acl_token: None,
            node: "standin".into(),
            sync_delay: DEFAULT_SYNC_DELAY,
            reap_interval: Duration::from_secs(30),
            deregister_critical_min: Duration::from_secs(60),
            min_check_interval: Duration::from_secs(1),
            log_requests: false,
            member: None,
        }
    }

    /// Fast reaping for tests: reaper every 100 ms, no minimum DeregisterCriticalServiceAfter.
    pub fn fast_reaper(mut self) -> Self {
        self.reap_interval = Duration::from_millis(100);
        self.deregister_critical_min = Duration::ZERO;
        self
    }

    /// Requests must carry this token (the old single-token setup): see [`Acl::single_token`].
    pub fn with_token(mut self, token: &str) -> Self {
        self.acl = Some(Acl::single_token(token));
        self
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::new(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// How to run a server: the cluster's store.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub acl: Option<Acl>,
    pub log_requests: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            data_dir: None,
            acl: None,
            log_requests: false,
        }
    }
}

/// What a process is in the cluster.
pub(crate) enum Role {
    Server,
    Agent { server: String, sync: sync::Syncer },
}

/// State shared by the HTTP handlers, the check runners and the ticker.
pub(crate) struct Shared {
    pub role: Role,
    pub config: Config,
    pub state: Mutex<State>,
    /// Carries the raft index; every write sends, so blocking queries wake and re-check.
    pub changed: watch::Sender<u64>,
    pub http: reqwest::Client,
    pub runners: Mutex<std::collections::HashMap<String, JoinHandle<()>>>,
    pub node_id: String,
    pub node_address: String,
    pub state_file: Option<PathBuf>,
    /// On a server: the members that joined (see `members`).
    pub members: Mutex<members::Members>,
}

impl Shared {
    pub fn limits(&self) -> Limits {
        Limits {
            min_check_interval: self.config.min_check_interval,
            deregister_critical_min: self.config.deregister_critical_min,
        }
    }

    pub fn acl(&self) -> Option<&Acl> {
        self.config.acl.as_ref()
    }

    /// Call after every write, with the state lock released: persists and wakes watchers; on
    /// an agent, schedules the sync of the change to the catalog.
    pub fn committed(&self) {
        let state = self.state.lock().unwrap();
        if let Some(file) = &self.state_file
            && let Err(e) = state.save(file)
        {
            eprintln!("consul-standin: cannot persist state: {e:#}");
        }
        let index = state.index;
        drop(state);
        self.changed.send_replace(index);
        if let Role::Agent { sync, .. } = &self.role {
            sync.changed();
        }
    }
}

/// A running stand-in (an agent, with its own server in dev mode). Dropping it stops everything.
pub struct Handle {
    addr: SocketAddr,
    addrs: Vec<SocketAddr>,
    dns: Vec<SocketAddr>,
    shared: Arc<Shared>,
    stop: Option<watch::Sender<bool>>,
    tasks: Vec<JoinHandle<()>>,
    server: Option<Box<Handle>>,
}

impl Handle {
    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every HTTP address bound, the first being [`Handle::addr`].
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The DNS addresses bound (UDP and TCP on each).
    pub fn dns_addrs(&self) -> &[SocketAddr] {
        &self.dns
    }

    /// `http://<addr>`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server this agent syncs to (its own in dev mode), `http://<addr>`.
    pub fn server_url(&self) -> Option<String> {
        match &self.shared.role {
            Role::Agent { server, .. } => Some(server.clone()),
            Role::Server => None,
        }
    }

    /// Leaves the cluster's membership gracefully (a member agent; else nothing).
    pub async fn leave(&self) {
        members::leave(&self.shared).await
    }

    /// Stops serving and waits until the listeners are closed.
    pub async fn shutdown(mut self) {
        self.stop_tasks();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        if let Some(server) = self.server.take() {
            Box::pin(server.shutdown()).await;
        }
    }

    fn stop_tasks(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        for (_, runner) in self.shared.runners.lock().unwrap().drain() {
            runner.abort();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop_tasks();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Resolves when `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn load_state(file: &Option<PathBuf>) -> anyhow::Result<State> {
    if let Some(file) = file {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if let Some(restored) = State::load(file)? {
            return Ok(restored);
        }
    }
    Ok(State::default())
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .user_agent("Consul Health Check")
        .build()?)
}

/// Serves `app` on every listener until `stop` turns true.
fn serve(
    listeners: Vec<tokio::net::TcpListener>,
    app: axum::Router,
    stop: &watch::Sender<bool>,
) -> Vec<JoinHandle<()>> {
    listeners
        .into_iter()
        .map(|listener| {
            let app = app.clone();
            let mut stopped = stop.subscribe();
            tokio::spawn(async move {
                let result = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { crate::stopped(&mut stopped).await })
                    .await;
                if let Err(e) = result {
                    eprintln!("consul-standin: server error: {e}");
                }
            })
        })
        .collect()
}

async fn bind_all(
    addrs: &[SocketAddr],
) -> anyhow::Result<(Vec<tokio::net::TcpListener>, Vec<SocketAddr>)> {
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    for addr in addrs {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        bound.push(listener.local_addr()?);
        listeners.push(listener);
    }
    Ok((listeners, bound))
}

/// Starts a server: the catalog, KV and sessions every agent of the cluster shares.
pub async fn start_server(config: ServerConfig) -> anyhow::Result<Handle> {
    let state_file = config
        .data_dir
        .as_ref()
        .map(|d| d.join("server-state.json"));
    let state = load_state(&state_file)?;
    let (listeners, addrs) = bind_all(&config.listen).await?;
    let addr = *addrs
        .first()
        .ok_or_else(|| anyhow::anyhow!("no address to listen on"))?;
    let mut agent_config = Config::new(addr);
    agent_config.acl = config.acl.clone();
    agent_config.log_requests = config.log_requests;
    agent_config.node = "server".into();
    let (changed, _) = watch::channel(state.index);
    let shared = Arc::new(Shared {
        role: Role::Server,
        node_id: http::uuid_from("server"),
        config: agent_config,
        state: Mutex::new(state),
        changed,
        http: client()?,
        runners: Mutex::new(Default::default()),
        node_address: addr.ip().to_string(),
        state_file,
        members: Mutex::new(Default::default()),
    });
    let (stop, _) = watch::channel(false);
    let mut tasks = serve(listeners, http::server_router(shared.clone()), &stop);
    tasks.push(spawn_ticker(&shared, &stop));
    Ok(Handle {
        addr,
        addrs,
        dns: Vec::new(),
        shared,
        stop: Some(stop),
        tasks,
        server: None,
    })
}

fn spawn_ticker(shared: &Arc<Shared>, stop: &watch::Sender<bool>) -> JoinHandle<()> {
    let shared = shared.clone();
    let mut stopped = stop.subscribe();
    tokio::spawn(async move {
        tokio::select! {
            _ = checks::ticker(shared) => {}
            _ = crate::stopped(&mut stopped) => {}
        }
    })
}

/// Starts an agent. Without [`Config::server`] it first starts its own server on a free
/// loopback port (dev mode), keeping the server's data under `<data_dir>/server`.
pub async fn start(config: Config) -> anyhow::Result<Handle> {
    let mut config = config;
    if config.acl.is_none()
        && let Some(token) = &config.acl_token
    {
        config.acl = Some(Acl::single_token(token));
    }
    let mut own_server = None;
    if config.server.is_none() {
        let server = start_server(ServerConfig {
            data_dir: config.data_dir.as_ref().map(|d| d.join("server")),
            acl: config.acl.clone(),
            log_requests: config.log_requests,
            ..Default::default()
        })
        .await?;
        config.server = Some(server.url());
        own_server = Some(Box::new(server));
    }
    let mut handle = start_agent(config).await?;
    handle.server = own_server;
    Ok(handle)
}

/// Starts an agent of the cluster whose server is [`Config::server`].
pub async fn start_agent(mut config: Config) -> anyhow::Result<Handle> {
    if config.acl.is_none()
        && let Some(token) = &config.acl_token
    {
        config.acl = Some(Acl::single_token(token));
    }
    let server = config
        .server
        .clone()
        .ok_or_else(|| anyhow::anyhow!("an agent needs a server address"))?;
    let state_file = config
        .data_dir
        .as_ref()
        .map(|d| d.join("standin-state.json"));
    let mut state = load_state(&state_file)?;
    // What a server holds is not the agent's to keep.
    state.forget_server_data();
    let mut wanted = vec![config.listen];
    wanted.extend(config.extra_listen.iter().copied());
    let (listeners, addrs) = bind_all(&wanted).await?;
    let addr = addrs[0];
    let node_address = config.advertise.clone().unwrap_or_else(|| {
        addrs
            .iter()
            .find(|a| !a.ip().is_loopback() && !a.ip().is_unspecified())
            .unwrap_or(&addr)
            .ip()
            .to_string()
            .replace("0.0.0.0", "127.0.0.1")
    });
    let (changed, _) = watch::channel(state.index);
    let check_ids: Vec<String> = state.checks.keys().cloned().collect();
    let shared = Arc::new(Shared {
        role: Role::Agent {
            server,
            sync: sync::Syncer::default(),
        },
        node_id: http::uuid_from(&config.node),
        config,
        state: Mutex::new(state),
        changed,
        http: client()?,
        runners: Mutex::new(Default::default()),
        node_address,
        state_file,
        members: Mutex::new(Default::default()),
    });
    for id in check_ids {
        checks::spawn_runner(&shared, &id);
    }
    // Join the cluster before serving: the node and its services are in the catalog at once.
    if let Err(e) = sync::sync_now(&shared).await {
        eprintln!("consul-standin: first sync to the server failed (will retry): {e}");
    }
    let (stop, _) = watch::channel(false);
    let mut tasks = serve(listeners, http::agent_router(shared.clone()), &stop);
    tasks.push(spawn_ticker(&shared, &stop));
    tasks.push(sync::spawn_loop(&shared, &stop));
    tasks.extend(members::spawn_heartbeat(&shared, &stop));
    let mut dns = Vec::new();
    for addr in shared.config.dns_listen.clone() {
        let (bound, dns_tasks) = dns::serve(shared.clone(), addr, &stop).await?;
        dns.push(bound);
        tasks.extend(dns_tasks);
    }
    Ok(Handle {
        addr,
        addrs,
        dns,
        shared,
        stop: Some(stop),
        tasks,
        server: None,
    })
}
