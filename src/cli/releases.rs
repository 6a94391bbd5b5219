//! `fleet releases ENV [--json]`: the release ledger, newest first.
use std::process::ExitCode;
use std::time::Duration;

use comfy_table::Table;
use miette::IntoDiagnostic;

use super::Global;
use crate::release::hooks::versions_text;
use crate::release::ledger::Release;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The environment.
    #[arg(add = super::complete::environments())]
    pub env: String,
    /// Print the releases as a JSON array (newest first), not a table.
    #[arg(long)]
    pub json: bool,
    /// Give up on the host after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
}

pub async fn run(args: Args, g: &Global) -> miette::Result<ExitCode> {
    let store = super::lock::open(g, &args.env, args.connect_timeout).await?;
    let releases = store.releases().await;
    store.close().await;
    let releases = releases.into_diagnostic()?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&releases).into_diagnostic()?
        );
    } else if releases.is_empty() {
        println!("No releases of {} yet.", args.env);
    } else {
        println!("{}", table(&releases));
    }
    Ok(ExitCode::SUCCESS)
}

/// ID / WHEN / WHO / OUTCOME / VERSIONS / CONFIG (each app's config hash).
pub fn table(releases: &[Release]) -> String {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["ID", "WHEN", "WHO", "OUTCOME", "VERSIONS", "CONFIG"]);
    for r in releases {
        t.add_row([
            r.id.to_string(),
            r.started.clone(),
            match &r.ci_job {
                Some(job) => format!("{}@{} ({job})", r.user, r.host),
                None => format!("{}@{}", r.user, r.host),
            },
            r.outcome.to_string(),
            versions_text(&r.versions),
            versions_text(
                &r.config
                    .iter()
                    .map(|(app, c)| (app.clone(), c.hash.clone()))
                    .collect(),
            ),
        ]);
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::release::ledger::{ReleaseConfig, ReleaseOutcome};

    #[test]
    fn table_lists_id_when_who_outcome_versions() {
        let r = |id, outcome, v: &str| Release {
            id,
            project: "shop".into(),
            env: "prod".into(),
            versions: BTreeMap::from([
                ("api".to_string(), v.to_string()),
                ("web".to_string(), "w1".to_string()),
            ]),
            user: "alice".into(),
            host: "laptop".into(),
            ci_job: None,
            started: format!("2025-01-0{id}T10:00:00Z"),
            finished: None,
            outcome,
            summary: String::new(),
            config: BTreeMap::from([(
                "api".to_string(),
                ReleaseConfig::new(BTreeMap::from([("greeting".into(), v.to_string())])),
            )]),
        };
        insta::assert_snapshot!(table(&[
            r(2, ReleaseOutcome::Failed, "v2"),
            r(1, ReleaseOutcome::Succeeded, "v1"),
        ]));
    }
}
