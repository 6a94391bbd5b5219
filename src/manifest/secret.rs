//! Reading secret values, at apply time only. Nothing here is printed or logged.

use crate::desired::SecretRef;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the environment variable `{0}` is not set")]
    MissingEnv(String),
    #[error("cannot read the secret file `{path}`: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The value of a secret. A file's trailing newline is dropped (as `echo x > file` writes one).
pub fn read(r: &SecretRef) -> Result<String, SecretError> {
    match r {
        SecretRef::Env(v) => std::env::var(v).map_err(|_| SecretError::MissingEnv(v.clone())),
        SecretRef::File(p) => std::fs::read_to_string(p)
            .map(|s| {
                s.strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(&s)
                    .to_string()
            })
            .map_err(|source| SecretError::File {
                path: p.clone(),
                source,
            }),
    }
}
