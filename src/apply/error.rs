//! Why a step of apply failed: on an instance's containers (`LaunchError`, with the container's
//! last output lines in `LaunchFailure`), setting up the edge (`EdgeError`), or pruning images
//! (`PruneError`). Their texts are what reports and
//! progress lines show (`Failure::reason`, `rollback_errors`, `ApplyEvent`s), so each variant
//! renders exactly the line it stands for.

use std::fmt;

use super::health::Unhealthy;
use crate::consul::ConsulError;
use crate::desired::SecretRef;
use crate::host::ScriptError;
use crate::registry::RegistryError;

/// A secret that the manifest references but that cannot be read right now.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("env {name} of app {app}: the secret {secret} cannot be read")]
pub struct MissingSecret {
    pub app: String,
    pub name: String,
    pub secret: SecretRef,
}

/// A step on one instance's containers that failed (engine, agent or health gate). `cause` is
/// the underlying error's text, with its sources (`crate::errors::chain`) where the engine's.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("reading volume {name}: {cause}")]
    ReadVolume { name: String, cause: String },
    #[error("creating volume {name}: {cause}")]
    CreateVolume { name: String, cause: String },
    #[error("reading the Docker bridge network (for `dns`): {cause}")]
    BridgeNetwork { cause: String },
    #[error("the Docker bridge network has no IPv4 gateway (needed for `dns = \"consul\"`)")]
    NoBridgeGateway,
    #[error("looking for {image} on the host: {cause}")]
    FindImage { image: String, cause: String },
    /// The pull itself, or the credentials to send with it.
    #[error("pulling {image}: {cause}")]
    Pull { image: String, cause: String },
    #[error("creating {name}: {cause}")]
    Create { name: String, cause: String },
    /// The container name belongs to a container of another instance slot (or not fleet's).
    #[error(
        "the container name {name} is taken by container {container} that is not this instance's ({owner}): fleet leaves it alone; remove or rename it"
    )]
    NameTaken {
        name: String,
        container: String,
        owner: OtherOwner,
    },
    #[error("starting {name}: {cause}")]
    Start { name: String, cause: String },
    /// Starting an existing (stopped) container of the instance.
    #[error("starting: {cause}")]
    StartExisting { cause: String },
    /// Inspecting `container` failed; the text is the engine's alone.
    #[error("{cause}")]
    Inspect { container: String, cause: String },
    #[error("no config in the inspect")]
    NoConfig,
    /// An inspected config that does not read back as a create body.
    #[error(transparent)]
    Decode(#[from] serde_json::Error),
    #[error("port {port}/tcp is not published")]
    NotPublished { port: u16 },
    #[error("registering {id}: {cause}")]
    Register { id: String, cause: ConsulError },
    #[error("health check failed: {0}")]
    Unhealthy(Unhealthy),
    #[error("removing the old container {container}: {cause}")]
    RemoveOld { container: String, cause: String },
    #[error(transparent)]
    Secret(#[from] MissingSecret),
    /// A leftover failed its gate; `kept` says what was done about the slot (`fall_back`).
    #[error("{error}; {kept}")]
    FellBack {
        error: Box<LaunchError>,
        kept: String,
    },
}

/// A failed launch, with the last lines of the failed container's output (when it ran).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct LaunchFailure {
    pub error: LaunchError,
    pub logs: Vec<String>,
}

impl From<LaunchError> for LaunchFailure {
    fn from(error: LaunchError) -> Self {
        LaunchFailure {
            error,
            logs: Vec::new(),
        }
    }
}

/// Who a container with a clashing name belongs to: its fleet labels of the instance slot
/// (`key=value`), none when it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherOwner {
    pub labels: Vec<String>,
}

impl fmt::Display for OtherOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.labels.is_empty() {
            f.write_str("it has no fleet labels")
        } else {
            write!(f, "its labels say {}", self.labels.join(", "))
        }
    }
}

/// The edge could not be set up before the rollout.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("public routes need [consul]")]
    NoConsul,
    /// The credentials for the edge's image.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// What `crate::edge` said.
    #[error("{0}")]
    Edge(String),
}

impl From<String> for EdgeError {
    fn from(e: String) -> Self {
        EdgeError::Edge(e)
    }
}

/// Images could not be pruned (the records of what environments keep on a host).
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("no images pruned: cannot read what environments keep here: {0}")]
    ReadRecords(ScriptError),
    #[error("cannot record the images kept here: {0}")]
    WriteRecord(ScriptError),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn s(x: &str) -> String {
        x.to_string()
    }

    #[test]
    fn launch_errors_render_the_lines_they_replaced() {
        let cases: Vec<(LaunchError, &str)> = vec![
            (
                LaunchError::ReadVolume {
                    name: s("data"),
                    cause: s("boom"),
                },
                "reading volume data: boom",
            ),
            (
                LaunchError::CreateVolume {
                    name: s("data"),
                    cause: s("boom"),
                },
                "creating volume data: boom",
            ),
            (
                LaunchError::BridgeNetwork { cause: s("boom") },
                "reading the Docker bridge network (for `dns`): boom",
            ),
            (
                LaunchError::NoBridgeGateway,
                "the Docker bridge network has no IPv4 gateway (needed for `dns = \"consul\"`)",
            ),
            (
                LaunchError::FindImage {
                    image: s("r/shop/web:v1"),
                    cause: s("boom"),
                },
                "looking for r/shop/web:v1 on the host: boom",
            ),
            (
                LaunchError::Pull {
                    image: s("r/shop/web:v1"),
                    cause: s("denied"),
                },
                "pulling r/shop/web:v1: denied",
            ),
            (
                LaunchError::Create {
                    name: s("shop-prod-web-1-v1"),
                    cause: s("boom"),
                },
                "creating shop-prod-web-1-v1: boom",
            ),
            (
                LaunchError::NameTaken {
                    name: s("shop-prod-web-1-v1"),
                    container: s("0123456789ab"),
                    owner: OtherOwner {
                        labels: vec![s("fleet.project=other")],
                    },
                },
                "the container name shop-prod-web-1-v1 is taken by container 0123456789ab that is \
                 not this instance's (its labels say fleet.project=other): fleet leaves it alone; \
                 remove or rename it",
            ),
            (
                LaunchError::Start {
                    name: s("shop-prod-web-1-v1"),
                    cause: s("boom"),
                },
                "starting shop-prod-web-1-v1: boom",
            ),
            (
                LaunchError::StartExisting { cause: s("boom") },
                "starting: boom",
            ),
            (
                LaunchError::Inspect {
                    container: s("abc"),
                    cause: s("No such container: abc"),
                },
                "No such container: abc",
            ),
            (LaunchError::NoConfig, "no config in the inspect"),
            (
                LaunchError::NotPublished { port: 8080 },
                "port 8080/tcp is not published",
            ),
            (
                LaunchError::Unhealthy(Unhealthy::Exited { code: 3 }),
                "health check failed: the container exited (code 3)",
            ),
            (
                LaunchError::Unhealthy(Unhealthy::Deadline {
                    deadline: Duration::from_secs(60),
                    last: s("503"),
                }),
                "health check failed: not healthy within 1m: 503",
            ),
            (
                LaunchError::RemoveOld {
                    container: s("0123456789ab"),
                    cause: s("boom"),
                },
                "removing the old container 0123456789ab: boom",
            ),
            (
                LaunchError::FellBack {
                    error: Box::new(LaunchError::Unhealthy(Unhealthy::Other(s("x")))),
                    kept: s("both are left"),
                },
                "health check failed: x; both are left",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text, "{e:?}");
            let f = LaunchFailure::from(e);
            assert_eq!(f.to_string(), text);
            assert!(f.logs.is_empty());
        }
    }

    #[test]
    fn wrapped_errors_keep_their_own_text() {
        let missing = MissingSecret {
            app: s("api"),
            name: s("DB_PASSWORD"),
            secret: SecretRef::Env(s("DB_PW")),
        };
        let text = missing.to_string();
        assert_eq!(LaunchError::from(missing).to_string(), text);
        let json = serde_json::from_str::<u8>("x").unwrap_err();
        let text = json.to_string();
        assert_eq!(LaunchError::from(json).to_string(), text);
        let consul = ConsulError::InvalidUrl {
            url: s("x"),
            message: s("bad"),
        };
        let text = consul.to_string();
        assert_eq!(
            LaunchError::Register {
                id: s("web-1-abc"),
                cause: ConsulError::InvalidUrl {
                    url: s("x"),
                    message: s("bad"),
                },
            }
            .to_string(),
            format!("registering web-1-abc: {text}")
        );
    }

    #[test]
    fn the_other_owner_is_named_by_its_labels() {
        assert_eq!(
            OtherOwner { labels: vec![] }.to_string(),
            "it has no fleet labels"
        );
        assert_eq!(
            OtherOwner {
                labels: vec![s("fleet.project=a"), s("fleet.env=b")]
            }
            .to_string(),
            "its labels say fleet.project=a, fleet.env=b"
        );
    }

    #[test]
    fn edge_and_prune_errors_render_the_lines_they_replaced() {
        assert_eq!(
            EdgeError::NoConsul.to_string(),
            "public routes need [consul]"
        );
        assert_eq!(
            EdgeError::from(s("caddy says no")).to_string(),
            "caddy says no"
        );
        let failed = || ScriptError::Failed {
            host: s("h1"),
            code: s("1"),
            stderr: s("denied"),
        };
        assert_eq!(
            PruneError::ReadRecords(failed()).to_string(),
            "no images pruned: cannot read what environments keep here: h1: the script exited with 1: denied"
        );
        assert_eq!(
            PruneError::WriteRecord(failed()).to_string(),
            "cannot record the images kept here: h1: the script exited with 1: denied"
        );
    }
}
