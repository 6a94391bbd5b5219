//! `fleet show ENV [--json]`: the resolved desired state, secrets masked (only their
//! references are ever known to fleet before apply).
use std::process::ExitCode;

use super::Global;
use crate::manifest;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The environment to resolve.
    #[arg(add = super::complete::environments())]
    pub env: String,
    /// Print the desired state as JSON (the `DesiredState` type).
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args, g: &Global) -> miette::Result<ExitCode> {
    let loaded = manifest::load(g.file.as_deref())?;
    loaded.check_environment(&args.env)?;
    // The versions fleet would deploy: the content tag of each built app's context.
    let (targets, _) = loaded.build_targets();
    let versions = super::versions(&loaded, &targets)?;
    let state = loaded.resolve(&args.env, &versions)?;
    if args.json {
        let text = serde_json::to_string_pretty(&state).map_err(|e| miette::miette!("{e}"))?;
        println!("{text}");
    } else {
        print!("{}", manifest::show::render(&state));
    }
    Ok(ExitCode::SUCCESS)
}
