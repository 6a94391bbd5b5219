//! `fleet import pm2 ecosystem.json`.
use std::path::PathBuf;
use std::process::ExitCode;

use super::Global;

#[derive(Debug, clap::Subcommand)]
pub enum Source {
    /// Import a pm2 ecosystem file (JSON).
    Pm2 { file: PathBuf },
}

pub async fn run(_source: Source, _g: &Global) -> miette::Result<ExitCode> {
    Err(super::not_yet("import"))
}
