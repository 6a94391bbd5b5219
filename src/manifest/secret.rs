//! Reading secret values, at apply time only. Nothing here is printed or logged.

use crate::desired::{ConsulTarget, SecretRef};

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
        SecretRef::File(f) => std::fs::read_to_string(&f.path)
            .map(|s| {
                s.strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(&s)
                    .to_string()
            })
            .map_err(|source| SecretError::File {
                path: f.path.clone(),
                source,
            }),
    }
}

/// The Consul ACL token's value, when the project has one (every command that talks to the
/// agents reads it here).
pub fn consul_token(consul: Option<&ConsulTarget>) -> Result<Option<String>, SecretError> {
    consul.and_then(|c| c.token.as_ref()).map(read).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::EnvValue;

    /// `{ file = "secrets/db" }` is the file next to the manifest, wherever fleet runs from
    /// (the tests run in the crate's directory, not the manifest's).
    #[test]
    fn relative_secret_files_are_relative_to_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        std::fs::write(dir.path().join("secrets/db"), "s3cret\n").unwrap();
        std::fs::write(dir.path().join("token"), "tok\n").unwrap();
        let file = dir.path().join("fleet.toml");
        let abs = dir.path().join("token").display().to_string();
        std::fs::write(
            &file,
            r#"[project]
name = "p"
[consul]
address = "http://127.0.0.1:8500"
token = { file = "./token" }
[hosts.h1]
address = "local"
[apps.web]
image = "nginx:1.27"
env = { DB = { file = "secrets/db" }, ABS = { file = "ABS_PATH" } }
[environments.production]
"#
            .replace("ABS_PATH", &abs),
        )
        .unwrap();
        assert_ne!(std::env::current_dir().unwrap(), dir.path());
        let m = crate::manifest::load(Some(&file)).unwrap();
        m.check_secrets("production").unwrap();
        let state = m.resolve("production", &m.placeholder_versions()).unwrap();
        let env = &state.hosts[0].instances[0].container.env;
        let EnvValue::Secret(r) = &env["DB"] else {
            panic!("{env:?}")
        };
        assert_eq!(read(r).unwrap(), "s3cret");
        assert_eq!(
            env["ABS"],
            EnvValue::Secret(SecretRef::File(crate::desired::FileRef::at(abs)))
        );
        let token = state
            .consul
            .as_ref()
            .and_then(|c| c.token.as_ref())
            .unwrap();
        assert_eq!(read(token).unwrap(), "tok");
    }
}
