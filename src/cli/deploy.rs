//! `fleet deploy`.
use std::process::ExitCode;

use super::Global;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, _g: &Global) -> miette::Result<ExitCode> {
    Err(super::not_yet("deploy"))
}
