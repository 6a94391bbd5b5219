//! The manifest: TOML and JSON loading into one model, environment overlays, validation
//! with spans, secret references, pm2 import.
//!
//! The contract the rest of fleet codes against:
//! - `load(path)` finds and parses the manifest (`-f`, else `fleet.toml`, then `fleet.json`)
//!   and validates it, reporting every problem at once;
//! - `Loaded::build_targets()` lists the apps fleet builds, for `fleet build`;
//! - `Loaded::resolve(env, &versions)` gives the `DesiredState` of one environment;
//! - `Loaded::check_secrets(env)` (for commands that will need secret values) and
//!   `secret::read` (apply time) deal with secret references.
//!
//! How it works: the file is parsed into a spanned, format-neutral tree (`node`), decoded into
//! the typed model (`model`) while every problem is collected (`diag`), and resolved per
//! environment (`resolve`). The reference for every key is docs/manifest.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::NamedSource;

use crate::desired::{BuildTarget, DesiredState, RegistryTarget, SecretRef, Versions};

pub mod diag;
pub mod init;
pub mod keys;
pub mod model;
pub mod node;
pub mod pm2;
pub mod resolve;
pub mod secret;
pub use model::{Kind, setup};
pub mod show;

pub use diag::Problem;
use diag::see;
pub use resolve::{ResolveError, config_prefix, service_id, spec_hash};

/// The version shown for a built app whose image tag is not known yet.
pub const UNBUILT: &str = "unbuilt";

/// The two formats a manifest may be written in; the same model either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    /// From the file name: `.json` is JSON, anything else TOML.
    pub fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Toml,
        }
    }
}

/// A manifest that parsed and validated, with its source kept for diagnostics.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    src: Arc<str>,
    manifest: model::Manifest,
}

/// Why a manifest could not be used. Rendered as `miette` diagnostics with spans.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ManifestError {
    #[error("no manifest found: looked for fleet.toml and fleet.json in {0}")]
    #[diagnostic(
        code(fleet::manifest::not_found),
        help(
            "write one with `fleet init`, or name it with -f\n{}",
            see("fleet::manifest::not_found")
        )
    )]
    NotFound(String),

    #[error("cannot read {path}")]
    #[diagnostic(code(fleet::manifest::read), help("{}", see("fleet::manifest::read")))]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// Every problem found, each with its place in the file.
    #[error("{path}: {} problem{} found", problems.len(), if problems.len() == 1 { "" } else { "s" })]
    #[diagnostic(
        code(fleet::manifest::invalid),
        help("{}", see("fleet::manifest::invalid"))
    )]
    Invalid {
        path: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[related]
        problems: Vec<Problem>,
    },

    #[error("there is no environment `{name}` in {path}")]
    #[diagnostic(
        code(fleet::manifest::environment),
        help("{}\n{}", env_help(known), see("fleet::manifest::environment"))
    )]
    UnknownEnvironment {
        name: String,
        path: String,
        known: Vec<String>,
    },

    #[error("cannot resolve environment `{env}`")]
    #[diagnostic(
        code(fleet::manifest::resolve),
        help("{}", see("fleet::manifest::resolve"))
    )]
    Resolve {
        env: String,
        #[source]
        source: ResolveError,
    },
}

fn env_help(known: &[String]) -> String {
    if known.is_empty() {
        "the manifest defines no environments: add `[environments.production]`".into()
    } else {
        format!("the environments are: {}", known.join(", "))
    }
}

/// Which file `load` reads: `path` if given (a directory is searched like the current one),
/// else `fleet.toml`, then `fleet.json`, in the current directory.
pub fn find(path: Option<&Path>) -> Result<PathBuf, ManifestError> {
    let dir = match path {
        Some(p) if !p.is_dir() => return Ok(p.to_path_buf()),
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("."),
    };
    ["fleet.toml", "fleet.json"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| ManifestError::NotFound(dir.display().to_string()))
}

pub fn load(path: Option<&Path>) -> Result<Loaded, ManifestError> {
    let file = find(path)?;
    let src = std::fs::read_to_string(&file).map_err(|source| ManifestError::Read {
        path: file.display().to_string(),
        source,
    })?;
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    parse(&src, Format::of(&file), &file.display().to_string(), &dir).map(|(manifest, src)| {
        Loaded {
            path: file,
            src,
            manifest,
        }
    })
}

/// Parses and validates manifest text. `name` labels diagnostics; `dir` anchors build contexts.
pub fn load_str(
    src: &str,
    format: Format,
    name: &str,
    dir: &Path,
) -> Result<Loaded, ManifestError> {
    parse(src, format, name, dir).map(|(manifest, src)| Loaded {
        path: PathBuf::from(name),
        src,
        manifest,
    })
}

fn parse(
    src: &str,
    format: Format,
    name: &str,
    dir: &Path,
) -> Result<(model::Manifest, Arc<str>), ManifestError> {
    let shared: Arc<str> = Arc::from(src);
    let invalid = |mut problems: Vec<Problem>| ManifestError::Invalid {
        // In file order, as a reader goes through it (stable: same place keeps found order).
        problems: {
            problems.sort_by_key(|p| p.span.offset());
            diag::fit(src, &mut problems);
            problems
        },
        path: name.to_string(),
        src: NamedSource::new(name, shared.clone()).with_language(match format {
            Format::Toml => "TOML",
            Format::Json => "JSON",
        }),
    };
    let tree = match format {
        Format::Toml => node::parse_toml(src),
        Format::Json => node::parse_json(src),
    };
    let tree = tree.map_err(|errs| {
        let mut cx = diag::Cx::default();
        for e in errs {
            cx.err(
                &e.span,
                format!(
                    "invalid {}: {}",
                    if format == Format::Toml {
                        "TOML"
                    } else {
                        "JSON"
                    },
                    e.message
                ),
                "here",
                None,
            );
        }
        invalid(cx.problems)
    })?;
    let mut cx = diag::Cx::default();
    let manifest = model::decode(&mut cx, &tree, dir);
    match manifest {
        Some(m) if cx.problems.is_empty() => Ok((m, shared)),
        _ => {
            if cx.problems.is_empty() {
                cx.err(&(0..0), "the manifest is not usable", "here", None);
            }
            Err(invalid(cx.problems))
        }
    }
}

impl Loaded {
    /// How many apps and hosts the manifest defines.
    pub fn counts(&self) -> (usize, usize) {
        (self.manifest.apps.len(), self.manifest.hosts.len())
    }

    pub fn project(&self) -> &str {
        &self.manifest.project
    }

    /// The environments the manifest defines, in manifest order.
    pub fn environments(&self) -> Vec<String> {
        self.manifest
            .environments
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }

    /// An error unless `env` is one of the manifest's environments.
    pub fn check_environment(&self, env: &str) -> Result<(), ManifestError> {
        if self.manifest.environments.iter().any(|e| e.name == env) {
            return Ok(());
        }
        Err(ManifestError::UnknownEnvironment {
            name: env.into(),
            path: self.path.display().to_string(),
            known: self.environments(),
        })
    }

    /// The apps that fleet builds itself, and the registry they go to.
    pub fn build_targets(&self) -> (Vec<BuildTarget>, Option<RegistryTarget>) {
        let m = &self.manifest;
        let targets = m
            .apps
            .iter()
            .filter_map(|a| match &a.source {
                Some(model::Source::Build(b)) => Some(BuildTarget {
                    app: a.name.clone(),
                    repository: resolve::repository(m, &a.name),
                    build: b.clone(),
                }),
                _ => None,
            })
            .collect();
        (targets, m.registry.clone())
    }

    /// Every app's build context is a directory with its Dockerfile in it: each one that is
    /// not is a problem pointing at the app's `build.context` in the manifest.
    pub fn check_build_contexts(&self) -> Result<(), ManifestError> {
        let mut cx = diag::Cx::default();
        for a in &self.manifest.apps {
            let (Some(model::Source::Build(b)), Some(span)) = (&a.source, &a.build_span) else {
                continue;
            };
            let context = b.context.display();
            let problem = if !b.context.exists() {
                Some((
                    format!("the build context {context} does not exist"),
                    "no such directory",
                ))
            } else if !b.context.is_dir() {
                Some((
                    format!("the build context {context} is not a directory"),
                    "not a directory",
                ))
            } else if !b.context.join(&b.dockerfile).is_file() {
                let file = &b.dockerfile;
                Some((
                    format!("the build context {context} has no {file}"),
                    "no Dockerfile there",
                ))
            } else {
                None
            };
            if let Some((message, label)) = problem {
                cx.err(
                    span,
                    format!("app `{}`: {message}", a.name),
                    label,
                    Some(format!(
                        "build contexts are relative to the manifest's directory ({}); `build.dockerfile` names the Dockerfile inside it",
                        self.manifest.dir.display()
                    )),
                );
            }
        }
        self.problems(cx)
    }

    /// The host named by `[builder] host`, whose engine builds; `None` builds locally.
    pub fn builder(&self) -> Option<&crate::desired::HostTarget> {
        let name = self.manifest.builder.as_ref()?;
        self.manifest
            .hosts
            .iter()
            .map(|h| &h.target)
            .find(|t| &t.name == name)
    }

    /// Versions for commands that show a desired state without building (`validate`, `show`):
    /// every built app gets the tag `unbuilt`.
    pub fn placeholder_versions(&self) -> Versions {
        self.build_targets()
            .0
            .into_iter()
            .map(|t| (t.app, UNBUILT.to_string()))
            .collect()
    }

    /// The desired state of one environment, given the version of each built app.
    pub fn resolve(&self, env: &str, versions: &Versions) -> Result<DesiredState, ManifestError> {
        self.check_environment(env)?;
        resolve::resolve(&self.manifest, env, versions).map_err(|source| ManifestError::Resolve {
            env: env.into(),
            source,
        })
    }

    /// Every secret an environment needs (app env, Consul token, registry password), checked
    /// to be readable now: a missing variable or file is a diagnostic at the reference. Call
    /// it from commands that will read the values (deploy), not from validate/show.
    pub fn check_secrets(&self, env: &str) -> Result<(), ManifestError> {
        self.check_environment(env)?;
        let e = self
            .manifest
            .environments
            .iter()
            .find(|e| e.name == env)
            .expect("checked");
        let mut cx = diag::Cx::default();
        let registry = self.manifest.registry_secrets.iter();
        for (r, span) in e.secrets.iter().chain(registry) {
            if let Err(err) = secret::read(r) {
                let help = match r {
                    SecretRef::Env(v) => format!("export {v}=... before running fleet"),
                    SecretRef::File(f) => {
                        format!("create {}, readable by the user running fleet", f.path)
                    }
                };
                cx.err(span, err.to_string(), "secret not available", Some(help));
            }
        }
        self.problems(cx)
    }

    /// `Ok` without problems; else every problem, pointing into this manifest.
    fn problems(&self, cx: diag::Cx) -> Result<(), ManifestError> {
        if cx.problems.is_empty() {
            return Ok(());
        }
        let name = self.path.display().to_string();
        let mut problems = cx.problems;
        diag::fit(&self.src, &mut problems);
        Err(ManifestError::Invalid {
            src: NamedSource::new(&name, self.src.clone()),
            path: name,
            problems,
        })
    }
}

/// Renders a diagnostic as plain text at a fixed width (no colour): stable for snapshots
/// and for logs.
pub fn render_plain(diag: &dyn miette::Diagnostic) -> String {
    let mut out = String::new();
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(100)
            .with_links(false);
    handler
        .render_report(&mut out, diag)
        .expect("rendering to a String cannot fail");
    out
}
