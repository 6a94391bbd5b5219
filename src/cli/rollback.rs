//! `fleet rollback ENV [APP] [--to VERSION]`: converge on the versions of the previous good
//! release (or a named version), health-gated like any deploy, without building.
use std::process::ExitCode;
use std::time::{Duration, Instant};

use miette::{IntoDiagnostic, miette};

use super::Global;
use super::deploy::{Converge, converge};
use crate::apply::services::Services;
use crate::host::{ConnectOptions, DEFAULT_PARALLEL, HostSession};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The environment to roll back.
    pub env: String,
    /// Roll back only this app (the others stay as they are).
    pub app: Option<String>,
    /// The version (image tag) to return to, instead of the previous good release's.
    #[arg(long, value_name = "VERSION")]
    pub to: Option<String>,
    /// Do not ask for confirmation (required without a TTY).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the final report as JSON.
    #[arg(long)]
    pub json: bool,
    /// How many hosts to work on at once.
    #[arg(long, default_value_t = DEFAULT_PARALLEL, value_name = "N")]
    pub parallel: usize,
    /// Wait between deregistering an old instance and stopping it.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
}

pub async fn run(args: Args, g: &Global) -> miette::Result<ExitCode> {
    let t0 = Instant::now();
    let loaded = crate::manifest::load(g.file.as_deref())?;
    loaded.check_environment(&args.env)?;
    let (targets, _) = loaded.build_targets();
    // Read the ledger through the first host's agent.
    let probe = loaded.resolve(
        &args.env,
        &crate::build::versions(&targets).into_diagnostic()?,
    )?;
    let connect = ConnectOptions::default();
    let first = probe
        .hosts
        .first()
        .ok_or_else(|| miette!("environment {} has no hosts", args.env))?;
    let session = HostSession::connect(&first.target, &connect)
        .await
        .into_diagnostic()?;
    let token = crate::observe::ObserveOptions::for_desired(&probe, 1)
        .map_err(|e| miette!("{e}"))?
        .consul_token;
    let consul = crate::apply::deploy::consul_for(&session, &probe, token)
        .await
        .map_err(|e| miette!("{e}"))?;
    let services = Services {
        consul,
        project: probe.project.clone(),
        environment: probe.environment.clone(),
    };
    let releases = services.releases().await;
    session.close().await;
    // What runs now: the newest release's versions (else the current sources').
    let mut versions = releases
        .last()
        .map(|r| r.versions.clone())
        .unwrap_or_else(|| {
            probe
                .apps
                .iter()
                .map(|a| (a.name.clone(), a.version.clone()))
                .collect()
        });
    let target: crate::desired::Versions = match &args.to {
        Some(v) => {
            let apps: Vec<String> = match &args.app {
                Some(a) => vec![a.clone()],
                None => targets.iter().map(|t| t.app.clone()).collect(),
            };
            apps.into_iter().map(|a| (a, v.clone())).collect()
        }
        None => {
            let Some(r) = crate::apply::services::previous_good(&releases, &versions) else {
                return Err(miette!(
                    help = "name a version with --to VERSION",
                    "no earlier good release of {} to return to",
                    args.env
                ));
            };
            match &args.app {
                Some(a) => r
                    .versions
                    .get(a)
                    .map(|v| [(a.clone(), v.clone())].into())
                    .ok_or_else(|| miette!("the previous good release has no app `{a}`"))?,
                None => r.versions.clone(),
            }
        }
    };
    for (app, v) in &target {
        eprintln!("rollback: {app} -> {v}");
        versions.insert(app.clone(), v.clone());
    }
    let c = Converge {
        env: args.env,
        apps: args.app.into_iter().collect(),
        yes: args.yes,
        saved_plan: None,
        rollback: true,
        json: args.json,
        parallel: args.parallel,
        drain: args.drain,
        verb: "rollback",
    };
    converge(&loaded, &versions, &c, t0).await
}
