//! A stand-in for the Consul agent's HTTP API (v1), for fleet's tests, testbed and demo.
//!
//! No Consul can be installed on the project's machines, so this crate serves the parts of the
//! API fleet uses with the semantics Consul documents: services with checks that really run,
//! KV with indexes, CAS and blocking queries, sessions and locks, an ACL token, and a data dir
//! that survives restarts. The same contract suite (`tests/consul.rs`) also runs against a real
//! agent, which keeps this honest.
//!
//! Deliberate knobs (all default to Consul's own rules): [`Config::reap_interval`] (Consul: 30 s),
//! [`Config::deregister_critical_min`] (Consul: 1 min) and [`Config::min_check_interval`]
//! (Consul: 1 s), so tests can watch a critical service being reaped within seconds.

mod checks;
pub mod duration;
mod http;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use state::{Limits, State};

/// How to run a stand-in agent.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free port (see [`Handle::addr`]).
    pub listen: SocketAddr,
    /// When set, services, check definitions, KV and sessions are kept in
    /// `<data_dir>/standin-state.json` and restored on start.
    pub data_dir: Option<PathBuf>,
    /// When set, every request must carry it (`X-Consul-Token`, `Authorization: Bearer`, or
    /// `?token=`); others get 403 "Permission denied".
    pub acl_token: Option<String>,
    /// The node name shown in health and catalog answers.
    pub node: String,
    /// How often the DeregisterCriticalServiceAfter reaper runs (Consul: every 30 s).
    pub reap_interval: Duration,
    /// The floor applied to DeregisterCriticalServiceAfter (Consul: 1 minute).
    pub deregister_critical_min: Duration,
    /// The floor applied to check intervals (Consul: 1 s).
    pub min_check_interval: Duration,
    /// Log every request to stderr.
    pub log_requests: bool,
}

impl Config {
    /// Consul's defaults, listening on `listen`, node `standin`.
    pub fn new(listen: SocketAddr) -> Self {
        Config {
            listen,
            data_dir: None,
            acl_token: None,
            node: "standin".into(),
            reap_interval: Duration::from_secs(30),
            deregister_critical_min: Duration::from_secs(60),
            min_check_interval: Duration::from_secs(1),
            log_requests: false,
        }
    }

    /// Fast reaping for tests: reaper every 100 ms, no minimum DeregisterCriticalServiceAfter.
    pub fn fast_reaper(mut self) -> Self {
        self.reap_interval = Duration::from_millis(100);
        self.deregister_critical_min = Duration::ZERO;
        self
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::new(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// State shared by the HTTP handlers, the check runners and the ticker.
pub(crate) struct Shared {
    pub config: Config,
    pub state: Mutex<State>,
    /// Carries the raft index; every write sends, so blocking queries wake and re-check.
    pub changed: watch::Sender<u64>,
    pub http: reqwest::Client,
    pub runners: Mutex<std::collections::HashMap<String, JoinHandle<()>>>,
    pub node_id: String,
    pub node_address: String,
}

impl Shared {
    pub fn limits(&self) -> Limits {
        Limits {
            min_check_interval: self.config.min_check_interval,
            deregister_critical_min: self.config.deregister_critical_min,
        }
    }

    /// Call after every write, with the state lock released: persists and wakes watchers.
    pub fn committed(&self) {
        let state = self.state.lock().unwrap();
        if let Some(dir) = &self.config.data_dir
            && let Err(e) = state.save(&dir.join("standin-state.json"))
        {
            eprintln!("consul-standin: cannot persist state: {e:#}");
        }
        let index = state.index;
        drop(state);
        self.changed.send_replace(index);
    }
}

/// A running stand-in. Dropping it stops the server and every check runner.
pub struct Handle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    ticker: JoinHandle<()>,
}

impl Handle {
    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits until the listener is closed.
    pub async fn shutdown(mut self) {
        self.stop_tasks();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    fn stop_tasks(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.ticker.abort();
        for (_, runner) in self.shared.runners.lock().unwrap().drain() {
            runner.abort();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop_tasks();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Starts a stand-in agent on `config.listen`, restoring `config.data_dir` if it has state.
pub async fn start(config: Config) -> anyhow::Result<Handle> {
    let mut state = State::default();
    if let Some(dir) = &config.data_dir {
        std::fs::create_dir_all(dir)?;
        if let Some(restored) = State::load(&dir.join("standin-state.json"))? {
            state = restored;
        }
    }
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let node_address = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .user_agent("Consul Health Check")
        .build()?;
    let (changed, _) = watch::channel(state.index);
    let check_ids: Vec<String> = state.checks.keys().cloned().collect();
    let shared = Arc::new(Shared {
        node_id: http::uuid_from(&config.node),
        config,
        state: Mutex::new(state),
        changed,
        http,
        runners: Mutex::new(Default::default()),
        node_address,
    });
    for id in check_ids {
        checks::spawn_runner(&shared, &id);
    }
    let ticker = tokio::spawn(checks::ticker(shared.clone()));
    let app = http::router(shared.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = result {
            eprintln!("consul-standin: server error: {e}");
        }
    });
    Ok(Handle {
        addr,
        shared,
        stop: Some(stop),
        server: Some(server),
        ticker,
    })
}
