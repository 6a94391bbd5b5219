//! `fleet import pm2 ecosystem.json [-o fleet.toml]`.
use std::path::PathBuf;
use std::process::ExitCode;

use miette::{IntoDiagnostic, WrapErr};

use super::Global;
use crate::manifest;

#[derive(Debug, clap::Subcommand)]
pub enum Source {
    /// Import a pm2 ecosystem file (JSON; for ecosystem.config.js, print it as JSON first).
    Pm2 {
        file: PathBuf,
        /// Write the manifest here instead of standard output (refuses to overwrite).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The registry (`host:port`) that built images go through: needed when the file's
        /// `deploy` section names remote hosts.
        #[arg(long, value_name = "HOST:PORT")]
        registry: Option<String>,
    },
}

pub async fn run(source: Source, _g: &Global) -> miette::Result<ExitCode> {
    let Source::Pm2 {
        file,
        output,
        registry,
    } = source;
    if registry
        .as_deref()
        .is_some_and(|r| r.is_empty() || r.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(miette::miette!(
            "--registry takes the registry's `host:port`, e.g. `10.0.0.5:5000`"
        ));
    }
    let text = std::fs::read_to_string(&file)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", file.display()))?;
    let imported = manifest::pm2::import(
        &text,
        &file.display().to_string(),
        &manifest::pm2::Options { registry },
    )?;
    for w in &imported.warnings {
        eprintln!("warning: {w}");
    }
    // What we write must load: check it the way `fleet validate` would.
    let dir = output
        .as_deref()
        .and_then(|o| o.parent())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    manifest::pm2::check(&imported, "imported fleet.toml", &dir)
        .wrap_err("the imported manifest does not validate (a bug in the importer)")?;
    match output {
        Some(o) => {
            if o.exists() {
                return Err(miette::miette!(
                    "{} exists; not overwriting it",
                    o.display()
                ));
            }
            std::fs::write(&o, &imported.manifest)
                .into_diagnostic()
                .wrap_err_with(|| format!("cannot write {}", o.display()))?;
            eprintln!(
                "wrote {} ({} warnings)",
                o.display(),
                imported.warnings.len()
            );
        }
        None => print!("{}", imported.manifest),
    }
    Ok(ExitCode::SUCCESS)
}
