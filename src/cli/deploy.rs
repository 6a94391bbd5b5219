//! `fleet deploy ENV [--app APP]... [--yes] [--plan FILE] [--no-build] [--no-rollback] [--json]
//! [--parallel N]`: build + push, plan, confirm, apply (health-gated, rolling back on failure).
//!
//! `converge` is shared with `fleet rollback`, which only picks other versions.
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use comfy_table::Table;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use miette::{IntoDiagnostic, miette};

use super::Global;
use super::lock::Locked;
use crate::apply::deploy::{ApplyOptions, Events, Report};
use crate::apply::hooks::{self, HookKind};
use crate::apply::ledger::{Release, ReleaseOutcome};
use crate::apply::lock::{DeployLock, Store};
use crate::desired::{DesiredState, Versions};
use crate::host::{ConnectOptions, DEFAULT_PARALLEL, close_all, connect_all};
use crate::manifest::Loaded;
use crate::observe::{ObserveOptions, observe_all};
use crate::plan::{Plan, diff, render, saved::SavedPlan};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The environment to deploy.
    pub env: String,
    /// Deploy only these apps (repeat); the others are left as they are.
    #[arg(long = "app", value_name = "APP")]
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

/// How a converge runs (deploy and rollback).
pub struct Converge {
    pub env: String,
    pub apps: Vec<String>,
    pub yes: bool,
    pub saved_plan: Option<PathBuf>,
    pub rollback: bool,
    pub json: bool,
    pub parallel: usize,
    pub drain: Duration,
    /// `--canary`, else the environment's.
    pub canary: Option<usize>,
    /// What the ledger records as the release summary prefix (`deploy`, `rollback`).
    pub verb: &'static str,
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
        apps: args.apps,
        yes: args.yes,
        saved_plan: args.plan,
        rollback: !args.no_rollback,
        json: args.json,
        parallel: args.parallel,
        drain: args.drain,
        canary: args.canary,
        verb: "deploy",
    };
    converge(&loaded, &versions, &c, t0).await
}

/// A timestamped plain line on stderr (no TTY, or no bars).
pub fn line(who: &str, msg: &str) {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let _ = writeln!(std::io::stderr(), "{now} {who:>6}  {msg}");
}

/// Per-host progress: a spinner per host on a TTY, timestamped lines otherwise.
fn events() -> (Events, Option<MultiProgress>) {
    if !crate::ui::interactive() {
        return (Arc::new(|host: &str, msg: &str| line(host, msg)), None);
    }
    let multi = MultiProgress::new();
    let bars: Arc<Mutex<HashMap<String, ProgressBar>>> = Arc::default();
    let m = multi.clone();
    let ev: Events = Arc::new(move |host: &str, msg: &str| {
        let mut bars = bars.lock().unwrap();
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
        bar.set_message(msg.to_string());
        if msg.contains("FAILED") {
            // Keep failures visible above the bars.
            let _ = m.println(format!("{host}: {msg}"));
        }
    });
    (ev, Some(multi))
}

/// Keep only the changes of `apps` in the plan (`--app`).
fn restrict(plan: &mut Plan, d: &DesiredState, apps: &[String]) {
    if apps.is_empty() {
        return;
    }
    for h in &mut plan.hosts {
        h.instances.retain(|i| apps.contains(&i.app));
        h.services.retain(|s| apps.contains(&s.app));
    }
    let keys: Vec<String> = d
        .apps
        .iter()
        .filter(|a| apps.contains(&a.name))
        .map(|a| format!("{}/{}/{}/", d.project, d.environment, a.name))
        .collect();
    plan.kv
        .retain(|k| keys.iter().any(|p| k.key.starts_with(p)));
}

/// The apps a plan changes (instances, registrations or KV config): `FLEET_APPS` of the hooks.
fn changed_apps(plan: &Plan, d: &DesiredState) -> Vec<String> {
    let mut apps = std::collections::BTreeSet::new();
    for h in &plan.hosts {
        for i in &h.instances {
            if i.action != crate::plan::Action::Unchanged {
                apps.insert(i.app.clone());
            }
        }
        for s in &h.services {
            if s.action != crate::plan::ServiceAction::Unchanged {
                apps.insert(s.app.clone());
            }
        }
    }
    for k in &plan.kv {
        if k.action != crate::plan::KvAction::Unchanged {
            let rest = k
                .key
                .strip_prefix(&format!("{}/{}/", d.project, d.environment));
            if let Some(app) = rest.and_then(|r| r.split('/').next()) {
                apps.insert(app.to_string());
            }
        }
    }
    apps.into_iter().collect()
}

/// What the ledger records for a finished apply.
pub fn outcome_of(report: &Report) -> ReleaseOutcome {
    if report.ok() {
        ReleaseOutcome::Succeeded
    } else if !report.rolled_back.is_empty() && report.rollback_errors.is_empty() {
        ReleaseOutcome::RolledBack
    } else {
        ReleaseOutcome::Failed
    }
}

/// Resolve with `versions`, take the deploy lock, then [`converge_locked`].
pub async fn converge(
    loaded: &Loaded,
    versions: &Versions,
    c: &Converge,
    t0: Instant,
) -> miette::Result<ExitCode> {
    let desired = resolve(loaded, versions, c)?;
    // The lock before anything else touches a host: a second deploy is refused at once.
    // Connecting touches nothing, so the SSH connections open while the lock is taken.
    let connect = ConnectOptions::default();
    let targets: Vec<_> = desired.hosts.iter().map(|h| h.target.clone()).collect();
    let what = format!("{}: planning", c.verb);
    let (locked, sessions) = tokio::join!(
        Locked::take(&desired, &what),
        connect_all(&targets, &connect, c.parallel)
    );
    tracing::info!(
        "connected and locked after {:.3}s",
        t0.elapsed().as_secs_f64()
    );
    match locked {
        Ok(locked) => converge_with(&desired, c, t0, locked, sessions, &connect).await,
        Err(e) => {
            close_all(sessions, &connect).await;
            Err(e)
        }
    }
}

/// The desired state of `c.env` with `versions`, checking that `c.apps` exist there.
pub fn resolve(loaded: &Loaded, versions: &Versions, c: &Converge) -> miette::Result<DesiredState> {
    let desired = loaded.resolve(&c.env, versions)?;
    for a in &c.apps {
        if !desired.apps.iter().any(|d| &d.name == a) {
            return Err(miette!("there is no app `{a}` in environment {}", c.env));
        }
    }
    Ok(desired)
}

/// Holding the deploy lock: observe, plan, confirm, run the `pre_deploy` hooks, record the
/// release, apply, record its outcome, run the `post_deploy` hooks; the lock is released on
/// every path. The exit code is 1 on a failed instance.
pub(crate) async fn converge_locked(
    desired: &DesiredState,
    c: &Converge,
    t0: Instant,
    locked: Locked,
) -> miette::Result<ExitCode> {
    let connect = ConnectOptions::default();
    let targets: Vec<_> = desired.hosts.iter().map(|h| h.target.clone()).collect();
    let sessions = connect_all(&targets, &connect, c.parallel).await;
    converge_with(desired, c, t0, locked, sessions, &connect).await
}

/// [`converge_locked`] with the sessions open; closes them and releases the lock.
async fn converge_with(
    desired: &DesiredState,
    c: &Converge,
    t0: Instant,
    locked: Locked,
    sessions: Vec<Result<crate::host::HostSession, crate::host::HostError>>,
    connect: &ConnectOptions,
) -> miette::Result<ExitCode> {
    let Locked { store, mut lock } = locked;
    let result = match ObserveOptions::for_desired(desired, c.parallel) {
        Ok(oo) => converge_on(desired, &sessions, &oo, c, t0, &store, &mut lock).await,
        Err(e) => Err(miette!("{e}")),
    };
    close_all(sessions, connect).await;
    Locked { store, lock }.release().await;
    result
}

async fn converge_on(
    desired: &DesiredState,
    sessions: &[Result<crate::host::HostSession, crate::host::HostError>],
    oo: &ObserveOptions,
    c: &Converge,
    t0: Instant,
    store: &Store,
    lock: &mut DeployLock,
) -> miette::Result<ExitCode> {
    let targets: Vec<_> = desired.hosts.iter().map(|h| h.target.clone()).collect();
    let observed = observe_all(&targets, sessions, oo).await;
    tracing::info!("observed after {:.3}s", t0.elapsed().as_secs_f64());
    let mut plan = diff(desired, &observed);
    if !plan.faults.is_empty() {
        print!("{}", render::human(&plan, false));
        let list: Vec<String> = plan
            .faults
            .iter()
            .map(|f| format!("{} ({}): {}", f.host, f.address, f.message))
            .collect();
        return Err(miette!(
            help = "fix the hosts (or leave them out of the environment) and deploy again",
            "cannot deploy: {} host(s) could not be read:\n  {}",
            list.len(),
            list.join("\n  ")
        ));
    }
    if let Some(path) = &c.saved_plan {
        let saved = SavedPlan::load(path).into_diagnostic()?;
        saved.check(desired, &observed).into_diagnostic()?;
    }
    restrict(&mut plan, desired, &c.apps);
    let human = render::human(&plan, crate::ui::interactive());
    if c.json {
        eprint!("{human}");
    } else {
        print!("{human}");
    }
    let open: Vec<&crate::host::HostSession> =
        sessions.iter().filter_map(|s| s.as_ref().ok()).collect();
    let versions: BTreeMap<String, String> = desired
        .apps
        .iter()
        .map(|a| (a.name.clone(), a.version.clone()))
        .collect();
    if !plan.has_changes() {
        if c.json {
            println!(
                "{}",
                serde_json::json!({"ok": true, "changes": 0, "versions": versions, "seconds": t0.elapsed().as_secs_f64()})
            );
        }
        record_unchanged(store, lock, &versions, c.verb).await;
        return Ok(ExitCode::SUCCESS);
    }
    if !c.yes {
        if !std::io::stdin().is_terminal() {
            return Err(miette!(
                help = "pass --yes to deploy without confirmation (as CI must)",
                "no terminal to confirm the deploy on"
            ));
        }
        eprint!("Apply this plan to {}? [y/N] ", c.env);
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).into_diagnostic()?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("Nothing was changed.");
            return Ok(ExitCode::FAILURE);
        }
    }
    let s = plan.summary();
    let summary = format!(
        "{}: {} create, {} replace, {} remove, {} start",
        c.verb, s.create, s.replace, s.remove, s.start
    );
    if let Err(e) = lock.set_summary(&summary).await {
        line(
            "lock",
            &format!("could not write the plan into the lock: {e}"),
        );
    }
    let lost = lock.lost_flag();
    if lost.load(Ordering::SeqCst) {
        return Err(miette!(
            "the deploy lock of {} was lost before the rollout started; nothing was changed",
            c.env
        ));
    }
    let changed = changed_apps(&plan, desired);
    let hook_env = hooks::env_for(&desired.project, &desired.environment, &versions, &changed);
    hooks::run_all(HookKind::PreDeploy, &desired.hooks.pre_deploy, &hook_env)
        .await
        .map_err(|e| miette!(help = "nothing was changed", "{e}"))?;
    match store.close_interrupted().await {
        Ok(ids) if !ids.is_empty() => line(
            "ledger",
            &format!("releases {ids:?} were interrupted (fleet was killed): marked failed"),
        ),
        Ok(_) => {}
        Err(e) => line("ledger", &format!("could not read the ledger: {e}")),
    }
    let release = match store
        .append_release(Release::begin(lock.holder(), versions.clone(), &summary))
        .await
    {
        Ok(r) => {
            line("ledger", &format!("release {} ({})", r.id, r.outcome));
            Some(r.id)
        }
        Err(e) => {
            line("ledger", &format!("could not record the release: {e}"));
            None
        }
    };
    let (ev, multi) = events();
    let opts = ApplyOptions {
        parallel: c.parallel,
        rollback: c.rollback,
        drain: c.drain,
        canary: c.canary.unwrap_or(desired.canary),
        consul_token: oo.consul_token.clone(),
        events: Some(ev),
        cancel: Some(Arc::new(move || {
            lost.load(Ordering::SeqCst).then(|| {
                "the deploy lock was lost (released with `fleet lock release`, or not renewed \
                 in time); another deploy may hold it now"
                    .to_string()
            })
        })),
        ..Default::default()
    };
    tracing::info!("apply starts after {:.3}s", t0.elapsed().as_secs_f64());
    let report = crate::apply::apply(desired, &observed, &plan, &open, &opts).await;
    tracing::info!("apply done after {:.3}s", t0.elapsed().as_secs_f64());
    if let Some(m) = multi {
        let _ = m.clear();
    }
    let outcome = match &report {
        Ok(r) => outcome_of(r),
        Err(_) => ReleaseOutcome::Failed,
    };
    if let Some(id) = release
        && let Err(e) = store.update_release(id, outcome).await
    {
        line(
            "ledger",
            &format!("could not record release {id} as {outcome}: {e}"),
        );
    }
    let report = report.map_err(|e| miette!("{e}"))?;
    print_report(&report, c.json, t0);
    if !report.ok() {
        return Ok(ExitCode::FAILURE);
    }
    let mut post_env = hook_env;
    post_env.push(("FLEET_OUTCOME".into(), outcome.to_string()));
    if let Some(id) = release {
        post_env.push(("FLEET_RELEASE".into(), id.to_string()));
    }
    hooks::run_all(HookKind::PostDeploy, &desired.hooks.post_deploy, &post_env)
        .await
        .map_err(|e| {
            miette!(
                help = "the release is deployed and recorded as succeeded; only the hook failed",
                "{e}"
            )
        })?;
    Ok(ExitCode::SUCCESS)
}

/// A deploy that changes nothing still says which versions run, when the ledger does not
/// say so already (the first deploy of an existing environment, or after a failed deploy):
/// that is what `fleet rollback` returns to later.
async fn record_unchanged(
    store: &Store,
    lock: &DeployLock,
    versions: &BTreeMap<String, String>,
    verb: &str,
) {
    let list = match store.releases().await {
        Ok(l) => l,
        Err(e) => {
            line("ledger", &format!("cannot read the release ledger: {e}"));
            return;
        }
    };
    if list
        .first()
        .is_some_and(|r| r.outcome == ReleaseOutcome::Succeeded && &r.versions == versions)
    {
        return;
    }
    let mut r = Release::begin(
        lock.holder(),
        versions.clone(),
        &format!("{verb}: no changes"),
    );
    r.outcome = ReleaseOutcome::Succeeded;
    r.finished = Some(r.started.clone());
    if let Err(e) = store.append_release(r).await {
        line("ledger", &format!("could not record the release: {e}"));
    }
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
