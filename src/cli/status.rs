//! `fleet status ENV [APP] [--json] [--watch]`: one row per instance, like `pm2 list`.
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use miette::IntoDiagnostic;

use super::Global;
use crate::host::{ConnectOptions, DEFAULT_PARALLEL};
use crate::operate::status::{StatusDoc, faults, gather, rows, table};
use crate::operate::{Connected, Selector};

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

/// Load the manifest, resolve `env` and connect to its hosts: the start of every operate command.
pub(crate) async fn connect(env: &str, reach: &Reach, g: &Global) -> miette::Result<Connected> {
    let loaded = crate::manifest::load(g.file.as_deref())?;
    let (targets, _registry) = loaded.build_targets();
    let versions = crate::build::versions(&targets).into_diagnostic()?;
    let desired = loaded.resolve(env, &versions)?;
    let connect = ConnectOptions {
        connect_timeout: reach.connect_timeout,
        ..ConnectOptions::default()
    };
    Connected::open(desired, connect, reach.parallel)
        .await
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

/// Unix seconds now.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The environment.
    pub env: String,
    /// Only this app.
    pub app: Option<String>,
    /// Print JSON (schema: docs/status-json.md).
    #[arg(long)]
    pub json: bool,
    /// Refresh until Ctrl-C (in place on a terminal, repeated tables otherwise).
    #[arg(long, short = 'w')]
    pub watch: bool,
    /// How often --watch refreshes.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    #[command(flatten)]
    pub reach: Reach,
}

pub async fn run(args: Args, g: &Global) -> miette::Result<ExitCode> {
    let cx = connect(&args.env, &args.reach, g).await?;
    let sel = Selector {
        app: args.app.clone(),
        ..Default::default()
    };
    let tty = std::io::stdout().is_terminal();
    let mut code = 0;
    // One listener for the whole watch: a Ctrl-C that comes while the hosts are being read
    // (not only during the sleep) must end it.
    let mut stop = interrupted();
    loop {
        let readings = tokio::select! {
            r = gather(&cx, &sel) => r,
            _ = &mut stop, if args.watch => break,
        };
        let now = now();
        let rows = rows(&cx.desired, &readings, &sel, now);
        let faults = faults(&readings);
        code = u8::from(!faults.is_empty());
        let out = if args.json {
            let doc = StatusDoc::new(&cx.desired, &readings, rows, now);
            serde_json::to_string_pretty(&doc).into_diagnostic()? + "\n"
        } else {
            table(&rows, &faults)
        };
        if args.watch && tty && !args.json {
            // Home, clear screen, then the table: refreshes in place.
            print!("\x1b[H\x1b[2J{out}");
        } else {
            print!("{out}");
        }
        if !args.watch {
            break;
        }
        if !tty || args.json {
            println!();
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(args.interval) => {}
        }
    }
    cx.close().await;
    Ok(ExitCode::from(code))
}
