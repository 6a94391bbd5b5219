//! `fleet plan ENV [--json] [--detailed-exitcode] [--out FILE] [--parallel N]`.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use miette::IntoDiagnostic;
use owo_colors::{OwoColorize, Stream};

use super::Global;
use crate::host::{ConnectOptions, DEFAULT_PARALLEL};
use crate::plan::{live, render, saved::SavedPlan};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The environment to plan.
    #[arg(add = super::complete::environments())]
    pub env: String,
    /// Print the plan as JSON (schema: docs/plan-json.md); the same as `--format json`.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// How to print the plan: `human` (the default), `json`, or `markdown` (for a pull-request
    /// comment or `$GITHUB_STEP_SUMMARY`; see docs/ci.md).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<Format>,
    /// Exit 0 when there is nothing to do, 2 when there are changes, 1 on any error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Save the plan, with a fingerprint of what was observed, for `fleet deploy --plan FILE`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// How many hosts to connect to and read at once.
    #[arg(long, default_value_t = DEFAULT_PARALLEL, value_name = "N")]
    pub parallel: usize,
    /// Give up on a host after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
    Markdown,
}

/// Whether stdout gets colour, as `ui::init_color` decided.
fn colour_on() -> bool {
    let probe = "x"
        .if_supports_color(Stream::Stdout, |t| t.red())
        .to_string();
    probe != "x"
}

pub async fn run(args: Args, g: &Global) -> miette::Result<ExitCode> {
    let loaded = crate::manifest::load(g.file.as_deref())?;
    let (targets, _registry) = loaded.build_targets();
    let versions = super::versions(&loaded, &targets)?;
    let desired = loaded.resolve(&args.env, &versions)?;
    let connect = ConnectOptions {
        connect_timeout: args.connect_timeout,
        ..ConnectOptions::default()
    };
    let (plan, observed, _timings) = live::plan_live(&desired, &connect, args.parallel)
        .await
        .into_diagnostic()?;
    let format = match (args.json, args.format) {
        (true, _) => Format::Json,
        (false, f) => f.unwrap_or(Format::Human),
    };
    if format != Format::Human {
        if format == Format::Json {
            let doc = render::json(&plan);
            println!("{}", serde_json::to_string_pretty(&doc).into_diagnostic()?);
        } else {
            print!("{}", crate::plan::markdown::markdown(&plan));
        }
        for f in &plan.faults {
            eprintln!(
                "error: {} ({}): {}: {}",
                f.host, f.address, f.kind, f.message
            );
        }
    } else {
        print!("{}", render::human(&plan, colour_on()));
    }
    if let Some(path) = &args.out {
        SavedPlan::new(plan.clone(), &desired, &observed)
            .save(path)
            .into_diagnostic()?;
        if format == Format::Human {
            println!(
                "\nSaved the plan to {}; apply it with `fleet deploy {} --plan {}`.",
                path.display(),
                args.env,
                path.display()
            );
        }
    }
    let code = if args.detailed_exitcode {
        plan.detailed_exit_code()
    } else if plan.faults.is_empty() {
        0
    } else {
        1
    };
    Ok(ExitCode::from(code))
}
