//! `fleet restart | stop | start ENV [APP] [--instance N] [--host H]`: Consul deregistration
//! before a stop, registration after a start.
use std::process::ExitCode;

use super::Global;
use super::lock::with_lock;
use super::reach::{Reach, Versions, Which, connect};
use crate::operate::lifecycle::{Action, run as lifecycle};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub which: Which,
    #[command(flatten)]
    pub reach: Reach,
}

pub async fn run(args: Args, g: &Global, action: Action) -> miette::Result<ExitCode> {
    let cx = connect(&args.which.env, &args.reach, g, Versions::Hashed).await?;
    let sel = args.which.selector();
    let what = format!("fleet {}", action.verb());
    let done = with_lock(&cx.desired, &what, async || {
        Ok(lifecycle(&cx, &sel, action).await)
    })
    .await;
    cx.close().await;
    let (outcomes, errors) = done?;
    let mut failed = !errors.is_empty();
    for o in &outcomes {
        match &o.result {
            Ok(done) => println!("{} ({}): {done}", o.instance, o.container),
            Err(e) => {
                failed = true;
                println!(
                    "{} ({}): {} FAILED: {e}",
                    o.instance,
                    o.container,
                    action.verb()
                );
            }
        }
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    if outcomes.is_empty() && errors.is_empty() {
        eprintln!("no container matches {}", sel.describe());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::from(u8::from(failed)))
}
