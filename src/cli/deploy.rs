//! `fleet deploy ENV [--app APP]... [--yes] [--plan FILE] [--no-build] [--no-rollback] [--json]
//! [--parallel N]`: build + push, plan, confirm, apply (health-gated, rolling back on failure).
//!
//! The pipeline itself is `crate::pipeline::Deployment`; this module parses the flags, builds
//! its options, asks for confirmation and renders its events and report. `converge` is shared
//! with `fleet rollback`, which only picks other versions.
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use comfy_table::Table;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use miette::miette;

use super::Global;
use crate::apply::ApplyEvent;
use crate::apply::deploy::Report;
use crate::desired::{DesiredState, Versions};
use crate::host::DEFAULT_PARALLEL;
use crate::manifest::Loaded;
use crate::pipeline::{Answer, Deployment, Event, Finished, Options, Outcome, PipelineError, Sink};
use crate::plan::{Plan, render};
use crate::ui;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The environment to deploy.
    #[arg(add = super::complete::environments())]
    pub env: String,
    /// Deploy only these apps (repeat); the others are left as they are.
    #[arg(long = "app", value_name = "APP", add = super::complete::apps())]
    pub apps: Vec<String>,
    /// Do not ask for confirmation (required without a TTY, e.g. in CI).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Apply this saved plan (`fleet plan --out FILE`); refused if the hosts changed since.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Do not build and push: deploy the versions of the current sources as already pushed.
    #[arg(long)]
    pub no_build: bool,
    /// On a failure, leave the instances already replaced on the new version.
    #[arg(long)]
    pub no_rollback: bool,
    /// Print the final report as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// How many hosts to work on at once.
    #[arg(long, default_value_t = DEFAULT_PARALLEL, value_name = "N")]
    pub parallel: usize,
    /// Wait between deregistering an old instance and stopping it.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Converge this many hosts first; the others start only after they all pass (default:
    /// the environment's `canary`, else 0: every host at once).
    #[arg(long, value_name = "N")]
    pub canary: Option<usize>,
}

/// How a converge runs (deploy and rollback): the pipeline's options and the CLI's own.
pub struct Converge {
    pub env: String,
    pub yes: bool,
    pub json: bool,
    pub options: Options,
}

pub async fn run(args: Args, g: &Global) -> miette::Result<ExitCode> {
    let t0 = Instant::now();
    let loaded = crate::manifest::load(g.file.as_deref())?;
    loaded.check_environment(&args.env)?;
    let (targets, registry) = loaded.build_targets();
    let targets: Vec<_> = targets
        .into_iter()
        .filter(|t| args.apps.is_empty() || args.apps.contains(&t.app))
        .collect();
    let mut versions = if args.no_build {
        super::versions(&loaded, &targets)?
    } else {
        let builder = super::build::Builder::open(&loaded).await?;
        let out = crate::build::run(
            &targets,
            registry.as_ref(),
            &crate::build::Options {
                push: true,
                events: Some(Arc::new(|app: &str, e: crate::build::Event| {
                    use crate::build::Event::*;
                    let what = match e {
                        Tagged { tag } => format!("tag {tag}"),
                        Present => "already in the registry".into(),
                        Building => "building".into(),
                        Built => "built".into(),
                        Pushing => "pushing".into(),
                        Pushed => "pushed".into(),
                        Failed(why) => format!("failed: {why}"),
                        Line(_) => return,
                    };
                    line("build", &format!("{app}: {what}"));
                })),
                engine: builder.engine.clone(),
                ..Default::default()
            },
        )
        .await;
        builder.close().await;
        let out = out.map_err(|e| miette!("build failed: {e}"))?;
        out.into_iter().map(|o| (o.app, o.tag)).collect()
    };
    // Apps not selected with --app keep their current sources' tags (only used to resolve).
    if !args.apps.is_empty() {
        let (all, _) = loaded.build_targets();
        for (app, tag) in super::versions(&loaded, &all)? {
            versions.entry(app).or_insert(tag);
        }
    }
    let c = Converge {
        env: args.env,
        yes: args.yes,
        json: args.json,
        options: Options {
            apps: args.apps,
            saved_plan: args.plan,
            rollback: !args.no_rollback,
            parallel: args.parallel,
            drain: args.drain,
            canary: args.canary,
            verb: "deploy",
        },
    };
    converge(&loaded, &versions, &c, t0).await
}

/// A timestamped plain line on stderr (no TTY, or no bars).
pub fn line(who: &str, msg: &str) {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let _ = writeln!(std::io::stderr(), "{now} {who:>6}  {msg}");
}

/// Renders the pipeline's events: per-host progress as a spinner per host on a TTY, else
/// timestamped lines; the plan on stdout (stderr with `--json`); the report at its end.
fn renderer(json: bool, t0: Instant) -> Sink {
    let bars = crate::ui::interactive().then(Bars::default);
    Arc::new(move |e: Event<'_>| match e {
        Event::TookOver { env, from } => took_over(env, from),
        Event::Unreadable(plan) => print!("{}", render::human(plan, false)),
        Event::Planned(plan) => {
            let human = render::human(plan, crate::ui::interactive());
            if json {
                eprint!("{human}");
            } else {
                print!("{human}");
            }
        }
        Event::LockSummary(msg) => line("lock", &msg),
        Event::Ledger(msg) => line("ledger", &msg),
        Event::ApplyStarted => {
            if let Some(b) = &bars {
                b.start();
            }
        }
        Event::Apply(e) => match &bars {
            Some(b) => b.show(e),
            None => line(e.host(), &e.to_string()),
        },
        Event::ApplyFinished => {
            if let Some(b) = &bars {
                b.clear();
            }
        }
        Event::Applied(report) => print_report(report, json, t0),
        Event::LockNotReleased(e) => not_released(&e),
    })
}

/// A spinner per host during a rollout.
#[derive(Default)]
struct Bars(Mutex<Option<(MultiProgress, HashMap<String, ProgressBar>)>>);

impl Bars {
    fn start(&self) {
        *self.0.lock().unwrap() = Some((MultiProgress::new(), HashMap::new()));
    }

    fn show(&self, e: &ApplyEvent) {
        let (host, msg) = (e.host(), e.to_string());
        let mut state = self.0.lock().unwrap();
        let Some((m, bars)) = state.as_mut() else {
            return line(host, &msg);
        };
        let bar = bars.entry(host.to_string()).or_insert_with(|| {
            let b = m.add(ProgressBar::new_spinner());
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix:>6}  {wide_msg} {elapsed}")
                    .expect("static template"),
            );
            b.set_prefix(host.to_string());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        bar.set_message(msg.clone());
        if e.is_failure() {
            // Keep failures visible above the bars.
            let _ = m.println(format!("{host}: {msg}"));
        }
    }

    fn clear(&self) {
        if let Some((m, _)) = self.0.lock().unwrap().take() {
            let _ = m.clear();
        }
    }
}

/// Asks on the terminal whether to apply the plan (`--yes`: without asking).
fn confirm(env: &str, yes: bool) -> impl FnOnce(&Plan) -> std::io::Result<Answer> {
    move |_| {
        let question = format!("Apply this plan to {env}?");
        Ok(match ui::confirm(yes, &question, ui::Expect::Yes)? {
            ui::Confirmation::Given => Answer::Apply,
            ui::Confirmation::NoTerminal => Answer::NoTerminal,
            ui::Confirmation::Refused => {
                eprintln!("Nothing was changed.");
                Answer::Decline
            }
        })
    }
}

/// The line saying the lock was taken over from a dead holder.
pub(crate) fn took_over(env: &str, from: &crate::release::lock::Holder) {
    eprintln!(
        "Took over the deploy lock of {env} from {from}: that process no longer runs on this machine."
    );
}

/// The warning for a lock that could not be released.
pub(crate) fn not_released(e: &dyn std::fmt::Display) {
    eprintln!("warning: could not release the deploy lock ({e}); it expires by itself");
}

/// A pipeline error as a diagnostic, with the help a user needs.
pub(crate) fn diagnostic(e: PipelineError) -> miette::Report {
    match e {
        PipelineError::Held { ref env, .. } => miette!(
            help = format!(
                "wait for it to finish; if its holder is gone, the lock expires by \
                 itself (or `fleet lock release {env}`)"
            ),
            "{e}"
        ),
        PipelineError::Unreadable(_) => miette!(
            help = "fix the hosts (or leave them out of the environment) and deploy again",
            "{e}"
        ),
        PipelineError::SavedPlan(_) | PipelineError::Confirm(_) => miette::Report::from_err(e),
        PipelineError::NoTerminal => miette!(
            help = "pass --yes to deploy without confirmation (as CI must)",
            "{e}"
        ),
        PipelineError::PreDeploy(_) => miette!(help = "nothing was changed", "{e}"),
        PipelineError::PostDeploy(_) => miette!(
            help = "the release is deployed and recorded as succeeded; only the hook failed",
            "{e}"
        ),
        e => miette!("{e}"),
    }
}

/// Resolve with `versions`, then run the [`Deployment`] (taking the lock).
pub async fn converge(
    loaded: &Loaded,
    versions: &Versions,
    c: &Converge,
    t0: Instant,
) -> miette::Result<ExitCode> {
    let desired = resolve(loaded, versions, c)?;
    let d = deployment(&desired, c, t0);
    let finished = d.run(confirm(&c.env, c.yes)).await;
    exit(finished, c, t0)
}

/// The [`Deployment`] of `desired` as `c` asks, rendering its events.
pub(crate) fn deployment<'a>(
    desired: &'a DesiredState,
    c: &'a Converge,
    t0: Instant,
) -> Deployment<'a> {
    Deployment {
        desired,
        options: &c.options,
        events: renderer(c.json, t0),
        started: t0,
    }
}

/// The desired state of `c.env` with `versions`, checking that `c.apps` exist there.
pub fn resolve(loaded: &Loaded, versions: &Versions, c: &Converge) -> miette::Result<DesiredState> {
    let desired = loaded.resolve(&c.env, versions)?;
    for a in &c.options.apps {
        if !desired.apps.iter().any(|d| &d.name == a) {
            return Err(miette!("there is no app `{a}` in environment {}", c.env));
        }
    }
    Ok(desired)
}

/// On sessions already open: [`Deployment::run_on`].
pub(crate) async fn converge_on(
    desired: &DesiredState,
    c: &Converge,
    t0: Instant,
    hosts: crate::observe::Connected<&DesiredState>,
) -> miette::Result<ExitCode> {
    let d = deployment(desired, c, t0);
    let finished = d.run_on(hosts, confirm(&c.env, c.yes)).await;
    exit(finished, c, t0)
}

/// With the deploy lock held: [`Deployment::run_locked`].
pub(crate) async fn converge_locked(
    desired: &DesiredState,
    c: &Converge,
    t0: Instant,
    locked: crate::pipeline::Locked,
) -> miette::Result<ExitCode> {
    let d = deployment(desired, c, t0);
    let finished = d.run_locked(locked, confirm(&c.env, c.yes)).await;
    exit(finished, c, t0)
}

/// The exit code of a finished deployment (1 on a declined plan or a failed instance); a
/// plan that changes nothing prints its JSON line here.
fn exit(
    finished: Result<Finished, PipelineError>,
    c: &Converge,
    t0: Instant,
) -> miette::Result<ExitCode> {
    let finished = finished.map_err(diagnostic)?;
    Ok(match &finished.outcome {
        Outcome::Unchanged => {
            if c.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "changes": 0, "versions": finished.versions, "seconds": t0.elapsed().as_secs_f64()})
                );
            }
            ExitCode::SUCCESS
        }
        Outcome::Declined => ExitCode::FAILURE,
        Outcome::Applied { report, .. } if report.ok() => ExitCode::SUCCESS,
        Outcome::Applied { .. } => ExitCode::FAILURE,
    })
}

fn print_report(r: &Report, json: bool, t0: Instant) {
    if json {
        let mut v = serde_json::to_value(r).expect("plain data");
        v["ok"] = serde_json::Value::Bool(r.ok());
        v["seconds"] = serde_json::json!(t0.elapsed().as_secs_f64());
        println!("{}", serde_json::to_string_pretty(&v).expect("plain data"));
    } else {
        let mut t = Table::new();
        t.load_preset(comfy_table::presets::NOTHING);
        t.set_header(vec![
            "HOST",
            "APP",
            "#",
            "ACTION",
            "VERSION",
            "CONTAINER",
            "PORT",
            "TIME",
        ]);
        for s in r
            .steps
            .iter()
            .filter(|s| s.action != crate::plan::Action::Unchanged)
        {
            t.add_row(vec![
                s.host.clone(),
                s.app.clone(),
                s.instance.map(|i| i.to_string()).unwrap_or_default(),
                format!("{:?}", s.action).to_lowercase(),
                match (&s.from_version, &s.to_version) {
                    (Some(a), Some(b)) if a != b => format!("{a} -> {b}"),
                    (_, Some(b)) => b.clone(),
                    (Some(a), None) => a.clone(),
                    _ => String::new(),
                },
                s.container.clone().unwrap_or_default(),
                s.port.map(|p| p.to_string()).unwrap_or_default(),
                format!("{:.1}s", s.seconds),
            ]);
        }
        println!("\n{t}");
        if r.kv.put + r.kv.deleted > 0 {
            println!("KV: {} put, {} deleted", r.kv.put, r.kv.deleted);
        }
        if r.kv.restored > 0 {
            println!(
                "KV: {} key(s) written back to the config the old containers ran with",
                r.kv.restored
            );
        }
        for f in &r.failures {
            println!("\nFAILED: {f}");
        }
        for s in &r.rolled_back {
            println!(
                "rolled back: {}#{} on {} to {}",
                s.app,
                s.instance.unwrap_or(0),
                s.host,
                s.to_version.as_deref().unwrap_or("?")
            );
        }
        for e in &r.rollback_errors {
            println!("ROLLBACK FAILED: {e}");
        }
        if !r.not_started.is_empty() {
            println!(
                "not started (the canary failed): {}; they still run the old version",
                r.not_started.join(", ")
            );
        }
        let verdict = if r.ok() { "Deployed" } else { "Deploy failed" };
        println!("{verdict} in {:.1}s.", t0.elapsed().as_secs_f64());
    }
}
