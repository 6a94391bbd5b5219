//! Why a host could not be used (`HostError`, each naming the host and its address), what ssh
//! printed turned into one (`classify`), and why a bookkeeping script failed (`ScriptError`).

use std::path::PathBuf;

use crate::desired::HostTarget;

use super::MIN_API;

/// Why a bookkeeping script ([`HostSession::run_ok`]) did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("{host}: the script exited with {code}: {stderr}")]
    Failed {
        host: String,
        code: String,
        stderr: String,
    },
}

/// Why a host could not be used. Every variant names the host and its address.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(
        "{host} ({address}): host key unknown: the host is not in known_hosts and strict checking is on ({detail})"
    )]
    UnknownHostKey {
        host: String,
        address: String,
        detail: String,
    },
    #[error(
        "{host} ({address}): HOST KEY CHANGED: the key differs from known_hosts; refusing to connect ({detail})"
    )]
    ChangedHostKey {
        host: String,
        address: String,
        detail: String,
    },
    #[error("{host} ({address}): SSH authentication refused for user {user} ({detail})")]
    AuthRefused {
        host: String,
        address: String,
        user: String,
        detail: String,
    },
    #[error("{host} ({address}): unreachable: {cause}")]
    Unreachable {
        host: String,
        address: String,
        cause: String,
    },
    #[error("{host} ({address}): SSH failed: {cause}")]
    Ssh {
        host: String,
        address: String,
        cause: String,
    },
    #[error("{host} ({address}): the Docker engine at {socket} does not answer: {cause}")]
    EngineDown {
        host: String,
        address: String,
        socket: String,
        cause: String,
    },
    #[error(
        "{host} ({address}): the Docker engine speaks API {api}; fleet needs {}.{} or newer (Docker 20.10+)",
        MIN_API.0, MIN_API.1
    )]
    EngineTooOld {
        host: String,
        address: String,
        api: String,
    },
    #[error("{host} ({address}): cannot forward {what}: {cause}")]
    Forward {
        host: String,
        address: String,
        what: String,
        cause: String,
    },
    #[error("cannot create the local runtime directory {path}: {source}")]
    RuntimeDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl HostError {
    /// A stable word for reports and JSON (`observe::Fault::kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            HostError::UnknownHostKey { .. } => "unknown-host-key",
            HostError::ChangedHostKey { .. } => "changed-host-key",
            HostError::AuthRefused { .. } => "auth-refused",
            HostError::Unreachable { .. } => "unreachable",
            HostError::Ssh { .. } => "ssh",
            HostError::EngineDown { .. } => "engine-down",
            HostError::EngineTooOld { .. } => "engine-too-old",
            HostError::Forward { .. } => "forward",
            HostError::RuntimeDir { .. } => "local",
        }
    }

    /// The message without the `host (address): ` prefix (and without the kind word, which
    /// reports print apart), e.g. `connect to host 10.0.0.9 port 22: Connection refused`.
    pub fn cause(&self) -> String {
        match self {
            HostError::Unreachable { cause, .. } | HostError::Ssh { cause, .. } => cause.clone(),
            HostError::RuntimeDir { .. } => self.to_string(),
            _ => {
                let s = self.to_string();
                match s.split_once("): ") {
                    Some((_, rest)) => rest.to_string(),
                    None => s,
                }
            }
        }
    }
}

/// Turn what `ssh` printed into a typed error.
pub(super) fn classify(target: &HostTarget, text: &str) -> HostError {
    let host = target.name.clone();
    let address = target.address.clone();
    let text = text
        .replace("failed to connect to the remote host: ", "")
        .replace("the master connection failed: ", "");
    let detail: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("@@@") && !l.starts_with('@'))
        .collect::<Vec<_>>()
        .join(" / ");
    let t = text.to_ascii_lowercase();
    if t.contains("remote host identification has changed")
        || t.contains("host key for") && t.contains("has changed")
    {
        HostError::ChangedHostKey {
            host,
            address,
            detail,
        }
    } else if t.contains("host key verification failed") || t.contains("host key is known") {
        HostError::UnknownHostKey {
            host,
            address,
            detail,
        }
    } else if t.contains("permission denied") || t.contains("too many authentication failures") {
        HostError::AuthRefused {
            host,
            address,
            user: target
                .user
                .clone()
                .unwrap_or_else(|| "(from ssh config)".into()),
            detail,
        }
    } else if [
        "connection refused",
        "timed out",
        "no route to host",
        "network is unreachable",
        "could not resolve",
        "connection closed",
        "connection reset",
    ]
    .iter()
    .any(|p| t.contains(p))
    {
        HostError::Unreachable {
            host,
            address,
            cause: detail,
        }
    } else {
        HostError::Ssh {
            host,
            address,
            cause: detail,
        }
    }
}
