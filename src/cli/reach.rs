//! What every operate command (status, info, logs, restart / stop / start, exec, destroy)
//! shares: how to reach an environment's hosts, and Ctrl-C.
use std::time::Duration;

use miette::IntoDiagnostic;

use super::Global;
use crate::host::{ConnectOptions, DEFAULT_PARALLEL};
use crate::observe::Connected;
use crate::operate::{OperateError, Selector};

/// How to reach the hosts; shared by every operate command.
#[derive(Debug, Clone, clap::Args)]
pub struct Reach {
    /// How many hosts to connect to at once.
    #[arg(long, default_value_t = DEFAULT_PARALLEL, value_name = "N")]
    pub parallel: usize,
    /// Give up on a host after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
}

/// Which instances of an environment a command acts on (logs, restart / stop / start).
#[derive(Debug, Clone, clap::Args)]
pub struct Which {
    /// The environment.
    #[arg(add = super::complete::environments())]
    pub env: String,
    /// Only this app.
    #[arg(add = super::complete::apps())]
    pub app: Option<String>,
    /// Only this instance number.
    #[arg(long)]
    pub instance: Option<u32>,
    /// Only this host.
    #[arg(long, add = super::complete::hosts())]
    pub host: Option<String>,
}

impl Which {
    pub fn selector(&self) -> Selector {
        Selector {
            app: self.app.clone(),
            instance: self.instance,
            host: self.host.clone(),
        }
    }
}

/// Whether a command needs the version each built app would have now (its build context
/// hashed): `status` (its "wants" column), `info` and restart / start (the desired spec) do;
/// logs, exec and destroy find containers by their labels alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Versions {
    Hashed,
    NotNeeded,
}

/// Load the manifest, resolve `env` and connect to its hosts: the start of every operate command.
pub(crate) async fn connect(
    env: &str,
    reach: &Reach,
    g: &Global,
    need: Versions,
) -> miette::Result<Connected> {
    let loaded = crate::manifest::load(g.file.as_deref())?;
    let versions = match need {
        Versions::Hashed => super::versions(&loaded, &loaded.build_targets().0)?,
        Versions::NotNeeded => loaded.placeholder_versions(),
    };
    let desired = loaded.resolve(env, &versions)?;
    let connect = ConnectOptions {
        connect_timeout: reach.connect_timeout,
        ..ConnectOptions::default()
    };
    Connected::open(desired, connect, reach.parallel)
        .await
        .map_err(OperateError::ConsulToken)
        .into_diagnostic()
}

/// Resolves at the first Ctrl-C from now on. The listener is installed at once (a spawned task),
/// so a Ctrl-C while hosts are being read is seen too, and the command can close its SSH
/// masters instead of dying with them left running.
pub(crate) fn interrupted() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = tx.send(());
        }
    });
    rx
}
