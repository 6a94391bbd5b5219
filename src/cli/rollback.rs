//! `fleet rollback ENV [APP] [--to VERSION]`: converge on the versions of the release ledger's
//! last good release other than what runs now (or a named version), health-gated like any
//! deploy (lock, hooks and ledger included), without building.
use std::process::ExitCode;
use std::time::{Duration, Instant};

use miette::{IntoDiagnostic, miette};

use super::Global;
use super::deploy::{Converge, converge_locked, resolve};
use super::lock::Locked;
use std::collections::BTreeMap;

use crate::desired::{DesiredState, Versions};
use crate::host::DEFAULT_PARALLEL;
use crate::pipeline::Options;
use crate::release::ledger::{Release, ReleaseConfig, ReleaseOutcome, newest_good};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The environment to roll back.
    #[arg(add = super::complete::environments())]
    pub env: String,
    /// Roll back only this app (the others stay as they are).
    #[arg(add = super::complete::apps())]
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
    let sources = super::versions(&loaded, &targets)?;
    // The lock first, then the ledger read under it: what runs cannot change in between.
    let probe = loaded.resolve(&args.env, &sources)?;
    let locked = Locked::take(&probe, "rollback: planning").await?;
    let c = Converge {
        env: args.env.clone(),
        yes: args.yes,
        json: args.json,
        options: Options {
            apps: args.app.clone().into_iter().collect(),
            saved_plan: None,
            rollback: true,
            parallel: args.parallel,
            drain: args.drain,
            // A rollback goes back to a version that ran everywhere: no canary wave.
            canary: Some(0),
            verb: "rollback",
        },
    };
    let chosen = async {
        let releases = locked.0.store.releases().await.into_diagnostic()?;
        let target = what_to_return_to(&args, &targets, sources, &releases)?;
        let mut desired = resolve(&loaded, &target.versions, &c)?;
        for note in target.set_config(&mut desired) {
            eprintln!("rollback: {note}");
        }
        Ok::<_, miette::Report>(desired)
    };
    match chosen.await {
        Ok(desired) => converge_locked(&desired, &c, t0, locked.0).await,
        Err(e) => {
            locked.release().await;
            Err(e)
        }
    }
}

/// What a rollback converges on: versions, and the config each app ran with.
#[derive(Debug)]
struct Target {
    versions: Versions,
    /// Per app, the config of the release it returns to (or of the newest good release, for
    /// an app that stays): written back with the images. An app without one keeps the
    /// manifest's config (releases recorded before they carried config).
    config: BTreeMap<String, ReleaseConfig>,
}

impl Target {
    /// Puts each app's recorded config into `desired`; what it says about the apps without.
    fn set_config(&self, desired: &mut DesiredState) -> Vec<String> {
        let mut notes = Vec::new();
        for a in &mut desired.apps {
            match self.config.get(&a.name) {
                Some(rc) => {
                    let prefix = crate::manifest::config_prefix(
                        &desired.project,
                        &desired.environment,
                        &a.name,
                    );
                    a.config = rc
                        .values
                        .iter()
                        .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
                        .collect();
                }
                None => notes.push(format!(
                    "{}: the ledger has no config recorded for this version; the manifest's is kept",
                    a.name
                )),
            }
        }
        notes
    }
}

/// The versions a rollback converges on: what runs now (the newest good release, else the
/// current sources) with the rolled-back apps set to `--to` or to the release before; the
/// config goes with each version.
fn what_to_return_to(
    args: &Args,
    targets: &[crate::desired::BuildTarget],
    sources: Versions,
    releases: &[Release],
) -> miette::Result<Target> {
    let now = newest_good(releases, None);
    let mut versions: Versions = now.map(|r| r.versions.clone()).unwrap_or(sources);
    let mut config: BTreeMap<String, ReleaseConfig> =
        now.map(|r| r.config.clone()).unwrap_or_default();
    let target: Versions = match &args.to {
        Some(v) => {
            let apps: Vec<String> = match &args.app {
                Some(a) => vec![a.clone()],
                None => targets.iter().map(|t| t.app.clone()).collect(),
            };
            apps.into_iter().map(|a| (a, v.clone())).collect()
        }
        None => {
            let Some(r) = rollback_target(releases, &versions, args.app.as_deref()) else {
                return Err(miette!(
                    help = "name a version with --to VERSION (`fleet releases ENV` lists them)",
                    "no earlier good release of {} to return to",
                    args.env
                ));
            };
            eprintln!(
                "rollback: to release {} ({}, {}@{})",
                r.id, r.started, r.user, r.host
            );
            match &args.app {
                Some(a) => r
                    .versions
                    .get(a)
                    .map(|v| [(a.clone(), v.clone())].into())
                    .ok_or_else(|| miette!("release {} has no app `{a}`", r.id))?,
                None => r.versions.clone(),
            }
        }
    };
    for (app, v) in &target {
        // The config that version ran with: the newest good release that ran it.
        let ran = releases
            .iter()
            .find(|r| r.outcome == ReleaseOutcome::Succeeded && r.versions.get(app) == Some(v));
        match ran.and_then(|r| r.config.get(app)) {
            Some(rc) => {
                eprintln!("rollback: {app} -> {v} (config {})", rc.hash);
                config.insert(app.clone(), rc.clone());
            }
            None => {
                eprintln!("rollback: {app} -> {v}");
                config.remove(app);
            }
        }
        versions.insert(app.clone(), v.clone());
    }
    Ok(Target { versions, config })
}

/// The release to return to: the newest succeeded one whose versions differ from `current`
/// (for one `app`: whose version of that app differs). Releases are newest first.
pub fn rollback_target<'a>(
    releases: &'a [Release],
    current: &Versions,
    app: Option<&str>,
) -> Option<&'a Release> {
    match app {
        None => newest_good(releases, Some(current)),
        Some(app) => releases.iter().find(|r| {
            r.outcome == ReleaseOutcome::Succeeded
                && r.versions
                    .get(app)
                    .is_some_and(|v| current.get(app) != Some(v))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(id: u64, outcome: ReleaseOutcome, api: &str, web: &str) -> Release {
        Release {
            id,
            project: "shop".into(),
            env: "prod".into(),
            versions: [("api".into(), api.into()), ("web".into(), web.into())].into(),
            user: "u".into(),
            host: "m".into(),
            ci_job: None,
            started: "2025-01-01T00:00:00Z".into(),
            finished: None,
            outcome,
            summary: String::new(),
            config: Default::default(),
        }
    }

    #[test]
    fn rollback_skips_the_current_failed_and_unfinished_releases() {
        use ReleaseOutcome::*;
        let list = vec![
            rel(5, InProgress, "a4", "w2"),
            rel(4, Failed, "a3", "w2"),
            rel(3, Succeeded, "a2", "w2"),
            rel(2, RolledBack, "a9", "w1"),
            rel(1, Succeeded, "a1", "w1"),
        ];
        let current = list[2].versions.clone();
        assert_eq!(rollback_target(&list, &current, None).unwrap().id, 1);
        // For one app: the newest good release with another version of it.
        let current: Versions = [("api".into(), "a2".into()), ("web".into(), "w1".into())].into();
        assert_eq!(rollback_target(&list, &current, Some("web")).unwrap().id, 3);
        assert_eq!(rollback_target(&list, &current, Some("api")).unwrap().id, 1);
        assert!(rollback_target(&list[2..3], &list[2].versions, None).is_none());
    }
}
