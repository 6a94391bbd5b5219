//! `fleet validate [ENV]`: every problem of the manifest at once; with ENV, also that the
//! environment exists and resolves.
use std::process::ExitCode;

use super::Global;
use crate::manifest;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also check this environment (it exists, and resolves to a desired state).
    #[arg(add = super::complete::environments())]
    pub env: Option<String>,
    /// Also check that every secret the environment uses is available now.
    #[arg(long, requires = "env")]
    pub secrets: bool,
}

pub async fn run(args: Args, g: &Global) -> miette::Result<ExitCode> {
    let loaded = manifest::load(g.file.as_deref())?;
    let envs = match &args.env {
        Some(e) => vec![e.clone()],
        None => loaded.environments(),
    };
    let versions = loaded.placeholder_versions();
    let mut instances = 0;
    for env in &envs {
        let state = loaded.resolve(env, &versions)?;
        if args.secrets {
            loaded.check_secrets(env)?;
        }
        instances += state.hosts.iter().map(|h| h.instances.len()).sum::<usize>();
    }
    let (apps, hosts) = loaded.counts();
    println!(
        "{}: ok (project {}, {apps} app{}, {hosts} host{}, environment{} {}: {instances} instance{})",
        loaded.path.display(),
        loaded.project(),
        if apps == 1 { "" } else { "s" },
        if hosts == 1 { "" } else { "s" },
        if envs.len() == 1 { "" } else { "s" },
        if envs.is_empty() {
            "none".to_string()
        } else {
            envs.join(", ")
        },
        if instances == 1 { "" } else { "s" },
    );
    Ok(ExitCode::SUCCESS)
}
