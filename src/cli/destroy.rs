//! `fleet destroy ENV [--yes]`: remove every container, registration and KV key of an
//! environment, after showing them.
use std::process::ExitCode;

use super::Global;
use super::lock::with_lock;
use super::reach::{Reach, Versions, connect};
use crate::observe::Connected;
use crate::operate::destroy::{inventory, remove};
use crate::ui::Confirmation;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The environment to destroy.
    #[arg(add = super::complete::environments())]
    pub env: String,
    /// Do not ask; required when stdin is not a terminal.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Also remove the named volumes fleet created for the environment (accessories' data).
    #[arg(long)]
    pub volumes: bool,
    #[command(flatten)]
    pub reach: Reach,
}

pub async fn run(args: Args, g: &Global) -> miette::Result<ExitCode> {
    let cx = connect(&args.env, &args.reach, g, Versions::NotNeeded).await?;
    // Held from the listing to the last removal: no deploy starts in between. Releasing the
    // lock also removes its key: nothing of the environment is left in KV.
    let result = with_lock(&cx.desired, "fleet destroy", async || {
        destroy(&cx, &args).await
    })
    .await;
    cx.close().await;
    result
}

async fn destroy(cx: &Connected, args: &Args) -> miette::Result<ExitCode> {
    let mut inv = inventory(cx).await;
    inv.remove_volumes = args.volumes;
    print!("{}", inv.render());
    if inv.is_empty() {
        println!("Nothing to remove.");
        return Ok(ExitCode::from(u8::from(!inv.problems.is_empty())));
    }
    let question = format!(
        "Type the environment name ({}) to remove all of this:",
        args.env
    );
    match crate::ui::confirm(args.yes, &question, crate::ui::Expect::Typed(&args.env)) {
        Ok(Confirmation::Given) => {}
        Ok(Confirmation::NoTerminal) => {
            return Err(miette::miette!(
                help = "run it again with --yes to confirm without a terminal",
                "refusing to destroy {} without confirmation: stdin is not a terminal",
                args.env
            ));
        }
        Ok(Confirmation::Refused) => {
            println!("Not confirmed; nothing removed.");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(miette::miette!("cannot read the confirmation: {e}")),
    }
    let (errors, images) = remove(cx, &inv).await;
    for e in &errors {
        eprintln!("error: {e}");
    }
    println!(
        "Removed {} containers, {} services, {} KV keys, {images} images{}{}.",
        inv.containers.len(),
        inv.services.len(),
        inv.kv_keys.len(),
        if inv.remove_volumes {
            format!(", {} volumes", inv.volumes.len())
        } else {
            String::new()
        },
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
