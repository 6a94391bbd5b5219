//! `fleet build`: build context (`.dockerignore`), content tag, registry check, build, push.
//!
//! - [`context`]: which files go into a build (`DockerIgnore`, `files`);
//! - [`content_tag`]: the image tag, a hash of exactly those inputs;
//! - [`run`]: ask the registry, build what it lacks through the local engine, push.
//!
//! The tag depends only on the inputs, so "does the registry have `repo:tag`?" answers
//! "was this exact build already pushed?": then nothing is built or pushed (unless `force`).
pub mod context;
pub mod engine;
pub mod ignore;
pub mod tag;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

pub use tag::content_tag;

use crate::desired::{BuildTarget, RegistryTarget, Versions};
use crate::registry::{self, RegistryClient, RegistryError};

/// Why a build could not be done.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The context (or its Dockerfile, or its `.dockerignore`) is unusable. The CLI points
    /// at the manifest line of the app's `context`.
    #[error("app `{app}`: {source}")]
    Context {
        app: String,
        #[source]
        source: context::ContextError,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("cannot use the Docker engine at {endpoint}: {message}")]
    Engine { endpoint: String, message: String },
    #[error(
        "the Docker engine at {endpoint} speaks API {version}; fleet needs 1.41 (Docker 20.10) or newer"
    )]
    EngineTooOld { endpoint: String, version: String },
    #[error("app `{app}`: build failed at {step}: {message}")]
    StepFailed {
        app: String,
        step: String,
        /// What the failing step printed.
        output: String,
        message: String,
    },
    #[error("app `{app}`: push failed: {message}")]
    PushFailed { app: String, message: String },
    #[error("app `{app}`: pushed, but the registry does not list tag {tag}")]
    PushedButMissing { app: String, tag: String },
    #[error("{} apps failed", .0.len())]
    Several(Vec<BuildError>),
}

/// The version (content tag) of each app, without building anything.
pub fn versions(targets: &[BuildTarget]) -> Result<Versions, BuildError> {
    targets
        .iter()
        .map(|t| {
            content_tag(&t.build)
                .map(|tag| (t.app.clone(), tag))
                .map_err(|source| BuildError::Context {
                    app: t.app.clone(),
                    source,
                })
        })
        .collect()
}

/// Progress of one app, for the CLI's bars or plain lines.
#[derive(Debug, Clone)]
pub enum Event {
    /// The tag is known.
    Tagged {
        tag: String,
    },
    /// The registry already has it: nothing to do.
    Present,
    Building,
    /// One line of build or push output.
    Line(String),
    Built,
    Pushing,
    Pushed,
    Failed(String),
}

pub type EventSink = Arc<dyn Fn(&str, Event) + Send + Sync>;

/// How to run.
#[derive(Clone)]
pub struct Options {
    /// Push what was built.
    pub push: bool,
    /// Build even when the registry has the tag.
    pub force: bool,
    /// Apps built at once.
    pub jobs: usize,
    /// Where progress goes (app name, event).
    pub events: Option<EventSink>,
    /// The engine that builds and pushes: a builder host's (through its SSH session), or
    /// `None` for the local one.
    pub engine: Option<bollard::Docker>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            push: false,
            force: false,
            jobs: 2,
            events: None,
            engine: None,
        }
    }
}

/// What happened to one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildOutcome {
    pub app: String,
    /// `repository:tag`.
    pub image: String,
    pub tag: String,
    /// The registry's digest of the tag, when the registry has it (after a push, or before).
    pub digest: Option<String>,
    /// Built by this run.
    pub built: bool,
    /// Pushed by this run.
    pub pushed: bool,
    /// The registry already had it, so nothing was built or pushed.
    pub present: bool,
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// The registry an image repository is pushed to: `registry` when the repository is in it,
/// else the repository's own registry ([`registry::registry_of`]) without credentials; none for
/// Docker Hub.
fn registry_of(repository: &str, registry: Option<&RegistryTarget>) -> Option<RegistryTarget> {
    let server = registry::registry_of(repository);
    if let Some(r) = registry
        && r.server.trim_end_matches('/') == server
    {
        return Some(r.clone());
    }
    (server != registry::HUB).then(|| RegistryTarget {
        server: server.to_string(),
        username: None,
        password: None,
        insecure: false,
    })
}

/// The git commit of the repository containing `dir`, if any.
fn git_commit(dir: &std::path::Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Build (and with `push`, push) every target whose tag the registry lacks. Apps run in
/// parallel, at most `jobs` at once; every app is tried, then all failures are returned.
pub async fn run(
    targets: &[BuildTarget],
    registry: Option<&RegistryTarget>,
    opts: &Options,
) -> Result<Vec<BuildOutcome>, BuildError> {
    // One registry client per server, credentials read once.
    let mut clients: HashMap<String, Arc<RegistryClient>> = HashMap::new();
    for t in targets {
        if let Some(r) = registry_of(&t.repository, registry)
            && !clients.contains_key(&r.server)
        {
            clients.insert(r.server.clone(), Arc::new(RegistryClient::for_target(&r)?));
        }
    }
    let docker = tokio::sync::OnceCell::new();
    let jobs = opts.jobs.max(1);
    let results: Vec<(usize, Result<BuildOutcome, BuildError>)> =
        futures_util::stream::iter(targets.iter().enumerate())
            .map(|(i, t)| {
                let client = registry_of(&t.repository, registry)
                    .and_then(|r| clients.get(&r.server).cloned());
                let docker = &docker;
                async move { (i, run_one(t, client, docker, opts).await) }
            })
            .buffer_unordered(jobs)
            .collect()
            .await;
    let mut ordered: Vec<_> = results;
    ordered.sort_by_key(|(i, _)| *i);
    let mut outcomes = Vec::new();
    let mut errors = Vec::new();
    for (_, r) in ordered {
        match r {
            Ok(o) => outcomes.push(o),
            Err(e) => errors.push(e),
        }
    }
    match errors.len() {
        0 => Ok(outcomes),
        1 => Err(errors.pop().expect("one error")),
        _ => Err(BuildError::Several(errors)),
    }
}

async fn run_one(
    t: &BuildTarget,
    client: Option<Arc<RegistryClient>>,
    docker: &tokio::sync::OnceCell<bollard::Docker>,
    opts: &Options,
) -> Result<BuildOutcome, BuildError> {
    let start = Instant::now();
    let emit = |e: Event| {
        if let Some(s) = &opts.events {
            s(&t.app, e);
        }
    };
    let result = async {
        let ctx_err = |source| BuildError::Context {
            app: t.app.clone(),
            source,
        };
        let spec = t.build.clone();
        let files = tokio::task::spawn_blocking(move || {
            context::files_with(&spec.context, &spec.dockerfile)
                .and_then(|files| tag::tag_of(&spec, &files).map(|tag| (files, tag)))
        })
        .await
        .expect("hashing task panicked")
        .map_err(ctx_err)?;
        let (files, tag) = files;
        emit(Event::Tagged { tag: tag.clone() });
        let image = format!("{}:{}", t.repository, tag);
        let mut outcome = BuildOutcome {
            app: t.app.clone(),
            image: image.clone(),
            tag: tag.clone(),
            digest: None,
            built: false,
            pushed: false,
            present: false,
            elapsed: Duration::ZERO,
        };
        if let Some(c) = &client
            && let Some(d) = c.manifest_exists(&t.repository, &tag).await?
        {
            outcome.digest = Some(d.0);
            if !opts.force {
                outcome.present = true;
                emit(Event::Present);
                return Ok(outcome);
            }
        }
        let docker = docker
            .get_or_try_init(|| async {
                match &opts.engine {
                    Some(d) => Ok(d.clone()),
                    None => engine::connect_local().await,
                }
            })
            .await?;
        emit(Event::Building);
        let mut labels = HashMap::new();
        labels.insert(crate::identity::labels::APP.to_string(), t.app.clone());
        let ctx: PathBuf = t.build.context.clone();
        if let Some(c) = tokio::task::spawn_blocking(move || git_commit(&ctx))
            .await
            .ok()
            .flatten()
        {
            labels.insert("org.opencontainers.image.revision".into(), c);
        }
        let req = engine::BuildRequest {
            app: &t.app,
            image: image.clone(),
            dockerfile: &t.build.dockerfile,
            args: &t.build.args,
            target: t.build.target.as_deref(),
            labels,
        };
        engine::build(docker, req, files, |l| emit(Event::Line(l.to_string()))).await?;
        outcome.built = true;
        emit(Event::Built);
        if opts.push {
            let Some(c) = &client else {
                return Err(BuildError::PushFailed {
                    app: t.app.clone(),
                    message: format!(
                        "`{}` names no registry (expected host:port/name)",
                        t.repository
                    ),
                });
            };
            emit(Event::Pushing);
            engine::push(
                docker,
                &t.app,
                c.server(),
                &t.repository,
                &tag,
                c.credentials(),
                |l| emit(Event::Line(l.to_string())),
            )
            .await?;
            // A push stream carries no digest: ask the registry.
            let d = c
                .manifest_exists(&t.repository, &tag)
                .await?
                .ok_or_else(|| BuildError::PushedButMissing {
                    app: t.app.clone(),
                    tag: tag.clone(),
                })?;
            outcome.digest = Some(d.0);
            outcome.pushed = true;
            emit(Event::Pushed);
        }
        Ok(outcome)
    }
    .await;
    match result {
        Ok(mut o) => {
            o.elapsed = start.elapsed();
            Ok(o)
        }
        Err(e) => {
            emit(Event::Failed(e.to_string()));
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_taken_from_the_repository_when_not_given() {
        let r = registry_of("10.200.1.1:5000/shop/api", None).unwrap();
        assert_eq!(r.server, "10.200.1.1:5000");
        assert!(registry_of("shop/api", None).is_none());
        assert!(registry_of("index.docker.io/shop/api", None).is_none());
        let given = RegistryTarget {
            server: "10.200.1.1:5000".into(),
            username: Some("u".into()),
            password: None,
            insecure: true,
        };
        assert_eq!(
            registry_of("10.200.1.1:5000/x", Some(&given))
                .unwrap()
                .username
                .as_deref(),
            Some("u")
        );
    }
}
