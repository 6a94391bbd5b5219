//! `fleet status ENV [APP] [--json] [--watch]`: one row per instance, like `pm2 list`.
//!
//! `operate::status` reads the hosts and makes the rows; `render` shows them (table or JSON).
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use miette::IntoDiagnostic;

use super::Global;
use super::reach::{Reach, Versions, connect, interrupted};
use crate::operate::Selector;
use crate::operate::status::{StatusDoc, faults, gather, rows};

pub mod render;

use render::{json, table};

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
    #[arg(add = super::complete::environments())]
    pub env: String,
    /// Only this app.
    #[arg(add = super::complete::apps())]
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
    let cx = connect(&args.env, &args.reach, g, Versions::Hashed).await?;
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
        let routes = match &cx.desired.edge {
            Some(e) => {
                let sessions = cx
                    .hosts()
                    .filter_map(|(t, s)| s.as_ref().ok().map(|s| (t.name.as_str(), s)))
                    .collect();
                crate::edge::route_status(&cx.desired.project, &cx.desired.environment, e, sessions)
                    .await
            }
            None => Vec::new(),
        };
        let out = if args.json {
            let mut doc = StatusDoc::new(&cx.desired, &readings, rows, now);
            doc.routes = routes;
            json(&doc).into_diagnostic()?
        } else {
            table(&rows, &faults) + &crate::edge::status_lines(&routes)
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
