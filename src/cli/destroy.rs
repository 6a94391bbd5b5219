//! `fleet destroy ENV [--yes]`: remove every container, registration and KV key of an
//! environment, after showing them.
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use super::Global;
use super::lock::Locked;
use super::reach::{Reach, Versions, connect};
use crate::operate::destroy::{inventory, remove};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The environment to destroy.
    #[arg(add = super::complete::environments())]
    pub env: String,
    /// Do not ask; required when stdin is not a terminal.
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub reach: Reach,
}

pub async fn run(args: Args, g: &Global) -> miette::Result<ExitCode> {
    let cx = connect(&args.env, &args.reach, g, Versions::NotNeeded).await?;
    // Held from the listing to the last removal: no deploy starts in between.
    let lock = match Locked::take(&cx.desired, "fleet destroy").await {
        Ok(l) => l,
        Err(e) => {
            cx.close().await;
            return Err(e);
        }
    };
    let inv = inventory(&cx).await;
    print!("{}", inv.render());
    if inv.is_empty() {
        println!("Nothing to remove.");
        lock.release().await;
        cx.close().await;
        return Ok(ExitCode::from(u8::from(!inv.problems.is_empty())));
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            lock.release().await;
            cx.close().await;
            return Err(miette::miette!(
                help = "run it again with --yes to confirm without a terminal",
                "refusing to destroy {} without confirmation: stdin is not a terminal",
                args.env
            ));
        }
        print!(
            "Type the environment name ({}) to remove all of this: ",
            args.env
        );
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if answer.trim() != args.env {
            println!("Not confirmed; nothing removed.");
            lock.release().await;
            cx.close().await;
            return Ok(ExitCode::FAILURE);
        }
    }
    // Releasing the lock also removes its key: nothing of the environment is left in KV.
    let (errors, images) = remove(&cx, &inv).await;
    lock.release().await;
    cx.close().await;
    for e in &errors {
        eprintln!("error: {e}");
    }
    println!(
        "Removed {} containers, {} services, {} KV keys, {images} images{}.",
        inv.containers.len(),
        inv.services.len(),
        inv.kv_keys.len(),
        if errors.is_empty() {
            ""
        } else {
            " (with errors above)"
        }
    );
    Ok(ExitCode::from(u8::from(
        !errors.is_empty() || !inv.problems.is_empty(),
    )))
}
