//! `fleet logs ENV [APP] [--instance N] [--host H] [--stream out|err] [-f] [--since 10m] [--tail N]`.
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use super::Global;
use super::reach::{Reach, Versions, Which, connect, interrupted};
use crate::operate::logs::{Event, LogOptions, Stream, collect, follow};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub which: Which,
    /// Only stdout (`out`) or only stderr (`err`).
    #[arg(long, value_parser = ["out", "err"])]
    pub stream: Option<String>,
    /// Keep following every instance until Ctrl-C (picks up replaced containers). After `logs`,
    /// `-f` means --follow: give the manifest as `fleet -f FILE logs ...` or `--file FILE`.
    #[arg(long)]
    pub follow: bool,
    /// Only lines newer than this (`10m`, `1h 30m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Only the last N lines of each instance.
    #[arg(long, value_name = "N")]
    pub tail: Option<u64>,
    /// Print the engine's timestamp in front of each line.
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// The edges' access logs (Caddy's, one JSON line per request) instead of the apps'.
    #[arg(long)]
    pub edge: bool,
    #[command(flatten)]
    pub reach: Reach,
}

/// `fleet logs ... -f`: `-f` is the global `--file` everywhere else, but after `logs` it means
/// follow, as in `docker logs -f` / `tail -f`. Rewrites a bare `-f` that comes after the `logs`
/// subcommand to `--follow`; everything else is left alone.
pub fn follow_shorthand(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    // None: the subcommand is not reached yet; Some(is it `logs`).
    let mut subcommand: Option<bool> = None;
    let mut skip_value = false;
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            if i == 0 || skip_value {
                skip_value = false;
                return a;
            }
            match subcommand {
                None => {
                    // Global options before the subcommand that take a separate value.
                    if a == "-f" || a == "--file" || a == "--color" {
                        skip_value = true;
                    } else if !a.to_string_lossy().starts_with('-') {
                        subcommand = Some(a == "logs");
                    }
                    a
                }
                Some(true) if a == "-f" => "--follow".into(),
                Some(_) => a,
            }
        })
        .collect()
}

pub async fn run(args: Args, g: &Global) -> miette::Result<ExitCode> {
    let cx = connect(&args.which.env, &args.reach, g, Versions::NotNeeded).await?;
    if args.edge {
        let hosts: Vec<String> = cx
            .desired
            .edge
            .as_ref()
            .map(|e| e.hosts.clone())
            .unwrap_or_default();
        if hosts.is_empty() {
            cx.close().await;
            return Err(miette::miette!(
                "environment {} has no edge (no app is `public`)",
                args.which.env
            ));
        }
        let print = |h: &str, l: &str| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "edge@{h} | {l}");
        };
        let results = futures_util::future::join_all(
            cx.hosts()
                .filter(|(t, _)| hosts.contains(&t.name))
                .filter_map(|(_, s)| s.as_ref().ok())
                .map(|s| crate::edge::logs(s, args.tail, args.since, args.follow, &print)),
        )
        .await;
        let mut failed = false;
        for r in results {
            if let Err(e) = r {
                failed = true;
                eprintln!("error: {e}");
            }
        }
        cx.close().await;
        return Ok(ExitCode::from(u8::from(failed)));
    }
    let sel = args.which.selector();
    let o = LogOptions {
        stream: match args.stream.as_deref() {
            Some("out") => Some(Stream::Out),
            Some("err") => Some(Stream::Err),
            _ => None,
        },
        since: args.since,
        tail: args.tail,
    };
    let failed;
    if args.follow {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = interrupted();
        let stop = async {
            let _ = stop.await;
        };
        let printer = async {
            let mut failed = false;
            while let Some(ev) = rx.recv().await {
                match ev {
                    Event::Line(l) => {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{}", l.render(args.timestamps));
                        let _ = out.flush();
                    }
                    Event::Problem(p) => {
                        failed = true;
                        eprintln!("error: {p}");
                    }
                }
            }
            failed
        };
        let (_, f) = tokio::join!(
            async {
                follow(&cx, &sel, &o, tx, stop).await;
            },
            printer
        );
        failed = f;
    } else {
        let (lines, errors) = collect(&cx, &sel, &o).await;
        let mut out = std::io::stdout().lock();
        for l in &lines {
            let _ = writeln!(out, "{}", l.render(args.timestamps));
        }
        for e in &errors {
            eprintln!("error: {e}");
        }
        failed = !errors.is_empty();
    }
    cx.close().await;
    Ok(ExitCode::from(u8::from(failed)))
}

#[cfg(test)]
mod tests {
    use super::follow_shorthand;

    fn r(args: &[&str]) -> Vec<String> {
        follow_shorthand(args.iter().map(|s| s.into()))
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn dash_f_after_logs_means_follow() {
        assert_eq!(
            r(&["fleet", "-f", "logs", "logs", "prod", "-f"]),
            ["fleet", "-f", "logs", "logs", "prod", "--follow"]
        );
        assert_eq!(
            r(&["fleet", "plan", "prod", "-f", "x.toml"]),
            ["fleet", "plan", "prod", "-f", "x.toml"]
        );
        // An environment called `logs` is not the subcommand.
        assert_eq!(
            r(&["fleet", "--color", "never", "plan", "logs", "-f", "x.toml"]),
            ["fleet", "--color", "never", "plan", "logs", "-f", "x.toml"]
        );
    }
}
