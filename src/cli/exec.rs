//! `fleet exec ENV APP [--instance N] [--host H] -- CMD...`: run a command in a container.
use std::io::IsTerminal;
use std::process::ExitCode;

use miette::IntoDiagnostic;

use super::Global;
use super::reach::{Reach, Versions, connect};
use crate::operate::{Selector, exec};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The environment.
    #[arg(add = super::complete::environments())]
    pub env: String,
    /// The app.
    #[arg(add = super::complete::apps())]
    pub app: String,
    /// The instance number (default: the first running one).
    #[arg(long)]
    pub instance: Option<u32>,
    /// The host (default: the first with a running instance).
    #[arg(long, add = super::complete::hosts())]
    pub host: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
    #[command(flatten)]
    pub reach: Reach,
}

/// Puts the terminal in raw mode (through `stty`) and restores it when dropped, so keys reach
/// the remote TTY as typed.
struct RawTerminal(Option<String>);

impl RawTerminal {
    fn enter() -> Self {
        let saved = std::process::Command::new("stty")
            .arg("-g")
            .stdin(std::process::Stdio::inherit())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if saved.is_some() {
            let _ = std::process::Command::new("stty")
                .args(["raw", "-echo"])
                .stdin(std::process::Stdio::inherit())
                .status();
        }
        RawTerminal(saved)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            let _ = std::process::Command::new("stty")
                .arg(s)
                .stdin(std::process::Stdio::inherit())
                .status();
        }
    }
}

pub async fn run(args: Args, g: &Global) -> miette::Result<ExitCode> {
    let cx = connect(&args.env, &args.reach, g, Versions::NotNeeded).await?;
    let sel = Selector {
        app: Some(args.app.clone()),
        instance: args.instance,
        host: args.host.clone(),
    };
    let chosen = match exec::choose(&cx, &sel).await {
        Ok(c) => c,
        Err(e) => {
            cx.close().await;
            return Err(e).into_diagnostic();
        }
    };
    if chosen.matched > 1 {
        eprintln!(
            "{} instances match; running in {} (choose with --instance / --host)",
            chosen.matched, chosen.label
        );
    }
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let code = {
        let _raw = tty.then(RawTerminal::enter);
        exec::run(&chosen, args.cmd.clone(), tty).await
    };
    cx.close().await;
    let code = code.into_diagnostic()?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
