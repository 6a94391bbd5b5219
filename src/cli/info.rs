//! `fleet info ENV APP [INSTANCE]`: the details of an instance, like `pm2 info`.
use std::process::ExitCode;

use super::Global;
use super::reach::{Reach, Versions, connect};
use crate::operate::{Selector, info};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The environment.
    #[arg(add = super::complete::environments())]
    pub env: String,
    /// The app.
    #[arg(add = super::complete::apps())]
    pub app: String,
    /// The instance number (every instance when left out).
    pub instance: Option<u32>,
    /// Only on this host.
    #[arg(long, add = super::complete::hosts())]
    pub host: Option<String>,
    #[command(flatten)]
    pub reach: Reach,
}

pub async fn run(args: Args, g: &Global) -> miette::Result<ExitCode> {
    let cx = connect(&args.env, &args.reach, g, Versions::Hashed).await?;
    let sel = Selector {
        app: Some(args.app.clone()),
        instance: args.instance,
        host: args.host.clone(),
    };
    let (views, errors) = info::views(&cx, &sel).await;
    cx.close().await;
    for (i, v) in views.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print!("{}", v.render());
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    if views.is_empty() {
        eprintln!("no container matches {}", sel.describe());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::from(u8::from(!errors.is_empty())))
}
