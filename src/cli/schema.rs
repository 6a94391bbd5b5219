//! `fleet schema`: the JSON Schema of the manifest, for editors (docs/editors.md).
use std::process::ExitCode;

use super::Global;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, _g: &Global) -> miette::Result<ExitCode> {
    println!("{}", crate::manifest::keys::schema_text());
    Ok(ExitCode::SUCCESS)
}
