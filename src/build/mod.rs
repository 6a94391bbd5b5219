//! `fleet build`: build context (`.dockerignore`), content tag, registry check, build, push.
//!
//! - [`context`]: which files go into a build (`DockerIgnore`, `files`);
//! - [`content_tag`]: the image tag, a hash of exactly those inputs;
//! - [`run`]: ask the registry, build what it lacks through the local engine, push.
pub mod context;
pub mod ignore;
pub mod tag;

pub use tag::content_tag;

use crate::desired::{BuildTarget, Versions};

/// Why a build could not be done.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("app `{app}`: {source}")]
    Context {
        app: String,
        #[source]
        source: context::ContextError,
    },
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
