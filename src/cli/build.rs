//! `fleet build [APP...] [--push] [--force] [--json] [--jobs N]`.
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use comfy_table::Table;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use miette::miette;

use super::Global;
use crate::build::{self, BuildError, BuildOutcome, Event, Options};
use crate::host::{ConnectOptions, HostSession};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Apps to build (default: every app the manifest builds).
    #[arg(add = super::complete::apps())]
    pub apps: Vec<String>,
    /// Push what was built to the registry.
    #[arg(long)]
    pub push: bool,
    /// Build even when the registry already has the tag.
    #[arg(long)]
    pub force: bool,
    /// Print a JSON array, one object per app (image, tag, digest, built, pushed), not a table.
    #[arg(long)]
    pub json: bool,
    /// How many apps build at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
}

pub async fn run(args: Args, g: &Global) -> miette::Result<ExitCode> {
    let loaded = crate::manifest::load(g.file.as_deref())?;
    loaded.check_build_contexts()?;
    let (mut targets, registry) = loaded.build_targets();
    if !args.apps.is_empty() {
        for a in &args.apps {
            if !targets.iter().any(|t| &t.app == a) {
                let near = targets
                    .iter()
                    .map(|t| t.app.as_str())
                    .filter(|n| strsim::jaro_winkler(n, a) > 0.8)
                    .collect::<Vec<_>>();
                let help = if near.is_empty() {
                    format!(
                        "apps fleet builds: {}",
                        targets
                            .iter()
                            .map(|t| t.app.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    format!("did you mean {}?", near.join(" or "))
                };
                return Err(miette!(
                    help = help,
                    "no app `{a}` with a build in the manifest"
                ));
            }
        }
        targets.retain(|t| args.apps.contains(&t.app));
    }
    if targets.is_empty() {
        eprintln!("nothing to build: no app in the manifest has a `build` section");
        return Ok(ExitCode::SUCCESS);
    }

    let progress = Progress::new(
        crate::ui::interactive() && !args.json,
        targets.iter().map(|t| t.app.clone()),
    );
    let sink = progress.clone();
    let builder = Builder::open(&loaded).await?;
    let opts = Options {
        push: args.push,
        force: args.force,
        jobs: args.jobs as usize,
        events: Some(Arc::new(move |app: &str, e: Event| sink.event(app, e))),
        engine: builder.engine.clone(),
    };
    let result = build::run(&targets, registry.as_ref(), &opts).await;
    builder.close().await;
    progress.finish();
    let outcomes = result.map_err(diagnose)?;

    if args.json {
        let rows: Vec<_> = outcomes.iter().map(json_row).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("plain data serializes")
        );
    } else {
        println!("{}", table(&outcomes));
    }
    Ok(ExitCode::SUCCESS)
}

/// The engine that builds: the `[builder]` host's, reached over SSH like any host (its session
/// open while building), else the local one (`engine: None`).
pub(crate) struct Builder {
    session: Option<HostSession>,
    pub engine: Option<bollard::Docker>,
}

impl Builder {
    pub async fn open(loaded: &crate::manifest::Loaded) -> miette::Result<Builder> {
        let Some(target) = loaded.builder() else {
            return Ok(Builder {
                session: None,
                engine: None,
            });
        };
        let help = "the [builder] host builds the images: check that it is reachable and runs Docker, or remove [builder] to build here";
        let session = HostSession::connect(target, &ConnectOptions::default())
            .await
            .map_err(|e| miette!(help = help, "cannot reach the builder: {e}"))?;
        match session.docker().await {
            Ok(engine) => Ok(Builder {
                session: Some(session),
                engine: Some(engine),
            }),
            Err(e) => {
                session.close().await;
                Err(miette!(help = help, "cannot use the builder's engine: {e}"))
            }
        }
    }

    pub async fn close(self) {
        if let Some(s) = self.session {
            s.close().await;
        }
    }
}

fn json_row(o: &BuildOutcome) -> serde_json::Value {
    serde_json::json!({
        "app": o.app,
        "image": o.image,
        "tag": o.tag,
        "digest": o.digest,
        "built": o.built,
        "pushed": o.pushed,
        "present": o.present,
        "seconds": (o.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
    })
}

/// The final table: app / tag / built|reused / pushed|present / time.
pub fn table(outcomes: &[BuildOutcome]) -> String {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["APP", "TAG", "BUILD", "REGISTRY", "TIME"]);
    for o in outcomes {
        let build = if o.built { "built" } else { "reused" };
        let reg = if o.pushed {
            "pushed"
        } else if o.present {
            "present"
        } else {
            "-"
        };
        t.add_row([
            o.app.clone(),
            o.tag.clone(),
            build.into(),
            reg.into(),
            format!("{:.1}s", o.elapsed.as_secs_f64()),
        ]);
    }
    t.to_string()
}

/// Turn a build error into a diagnostic: which app, which step and its output, which
/// registry and user; never a password (none is ever in a `BuildError`).
fn diagnose(e: BuildError) -> miette::Report {
    use crate::registry::RegistryError;
    match e {
        BuildError::StepFailed {
            app,
            step,
            output,
            message,
        } => {
            let shown = if output.is_empty() {
                String::new()
            } else {
                format!("\n{output}")
            };
            miette!("app `{app}`: build failed at {step}{shown}\n{message}")
        }
        BuildError::Registry(RegistryError::Unauthorized { registry, user }) => miette!(
            help = "check the registry's username and password (secret reference) in the manifest, or `docker login`",
            "{}",
            RegistryError::Unauthorized { registry, user }
        ),
        BuildError::Registry(e @ RegistryError::Unreachable { .. }) => {
            miette!(
                help = "is the registry running, and is host:port right?",
                "{e}"
            )
        }
        BuildError::Registry(e @ RegistryError::CredentialHelper { .. }) => miette!(
            help = "is the helper on PATH and logged in (`docker login`)? Or give the registry a username and password in the manifest",
            "{e}"
        ),
        BuildError::Context { app, source } => miette!(
            help = "check the app's `build.context` (paths are relative to the manifest)",
            "app `{app}`: {source}"
        ),
        BuildError::Several(errors) => {
            let all: Vec<String> = errors
                .into_iter()
                .map(|e| format!("{:?}", diagnose(e)))
                .collect();
            miette!("{} apps failed:\n{}", all.len(), all.join("\n"))
        }
        e => miette!("{e}"),
    }
}

/// Per-app progress: a bar per app on a TTY, plain timestamped lines otherwise. Plain lines
/// never go through a (hidden) bar, and on a TTY lines are printed through the
/// `MultiProgress`, so bars and text do not tear each other.
#[derive(Clone)]
struct Progress {
    inner: Arc<ProgressInner>,
}

struct ProgressInner {
    multi: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
}

impl Progress {
    fn new(tty: bool, apps: impl Iterator<Item = String>) -> Self {
        let multi = tty.then(MultiProgress::new);
        let mut bars = HashMap::new();
        if let Some(m) = &multi {
            let style = ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}")
                .expect("valid template");
            for app in apps {
                let b = m.add(ProgressBar::new_spinner());
                b.set_style(style.clone());
                b.set_prefix(app.clone());
                b.set_message("hashing context");
                b.enable_steady_tick(Duration::from_millis(120));
                bars.insert(app, b);
            }
        }
        Self {
            inner: Arc::new(ProgressInner { multi, bars }),
        }
    }

    fn event(&self, app: &str, e: Event) {
        let msg = match &e {
            Event::Tagged { tag } => format!("tag {tag}"),
            Event::Present => "registry has it: nothing to do".into(),
            Event::Building => "building".into(),
            Event::Line(l) => l.clone(),
            Event::Built => "built".into(),
            Event::Pushing => "pushing".into(),
            Event::Pushed => "pushed".into(),
            Event::Failed(m) => format!("failed: {m}"),
        };
        if let Some(bar) = self.inner.bars.get(app) {
            match e {
                Event::Present | Event::Pushed | Event::Failed(_) => bar.finish_with_message(msg),
                _ => bar.set_message(msg),
            }
            return;
        }
        // Plain mode: step lines and state changes, not every output line.
        if matches!(&e, Event::Line(l) if !l.starts_with("Step ")) {
            return;
        }
        let now = humantime::format_rfc3339_seconds(SystemTime::now());
        eprintln!("[{now}] {app}: {msg}");
    }

    fn finish(&self) {
        for b in self.inner.bars.values() {
            if !b.is_finished() {
                b.finish();
            }
        }
        if let Some(m) = &self.inner.multi {
            let _ = m.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_says_built_reused_pushed_present() {
        let o = |app: &str, built, pushed, present| BuildOutcome {
            app: app.into(),
            image: format!("r:5000/{app}:abc"),
            tag: "abcdef012345".into(),
            digest: Some("sha256:00".into()),
            built,
            pushed,
            present,
            elapsed: Duration::from_millis(1234),
        };
        let t = table(&[o("web", true, true, false), o("api", false, false, true)]);
        insta::assert_snapshot!(t);
        let j = json_row(&o("web", true, true, false));
        assert_eq!(j["image"], "r:5000/web:abc");
        assert_eq!(j["digest"], "sha256:00");
    }
}
