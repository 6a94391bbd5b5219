//! When a step on a host fails, was it the instance or the host? A lost SSH connection, an
//! engine or agent that stopped answering are faults of the host: the report names them
//! plainly (`h2: connection lost while starting hello#1 (10.200.2.2)`), says what may be left
//! on the host, and that the next deploy converges it.
//!
//! `Phase` is what an instance was doing (set by the steps in `instance.rs`); `diagnose` asks
//! the host's links in order (SSH master, engine, agent) after a failure.

use std::time::Duration;

use super::context::Host;
pub(super) use super::context::Phase;

/// A fault of the host itself, found after a step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostFault {
    /// The SSH connection is gone (keepalives unanswered, master exited).
    Lost(String),
    /// SSH works, the Docker engine does not answer.
    Engine(String),
    /// SSH and engine work, the Consul agent does not answer.
    Agent(String),
}

impl HostFault {
    /// A stable word for the JSON report.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            HostFault::Lost(_) => "connection-lost",
            HostFault::Engine(_) => "engine-down",
            HostFault::Agent(_) => "agent-down",
        }
    }

    /// `connection lost while starting hello#1 (10.200.2.2)`: the failure's reason (the report
    /// puts the host name in front).
    pub(super) fn reason(&self, doing: &str, address: &str) -> String {
        match self {
            HostFault::Lost(_) => format!("connection lost while {doing} ({address})"),
            HostFault::Engine(cause) => {
                format!("the Docker engine stopped answering while {doing} ({address}): {cause}")
            }
            HostFault::Agent(cause) => {
                format!("the Consul agent stopped answering while {doing} ({address}): {cause}")
            }
        }
    }
}

/// How long each link may take to answer the diagnosis.
const ASK: Duration = Duration::from_secs(5);

/// After a failed step on `h`: is the SSH connection, the engine or the agent gone? `None`
/// when all three answer (the instance itself failed).
pub(super) async fn diagnose(h: &Host<'_>) -> Option<HostFault> {
    if let Some(why) = h.session.lost().await {
        return Some(HostFault::Lost(why));
    }
    match tokio::time::timeout(ASK, h.docker.ping()).await {
        Err(_) => return Some(HostFault::Engine(format!("no answer within {ASK:?}"))),
        Ok(Err(e)) => return Some(HostFault::Engine(crate::errors::chain(&e))),
        Ok(Ok(_)) => {}
    }
    if let Some(c) = &h.consul {
        match tokio::time::timeout(ASK, c.agent_checks()).await {
            Err(_) => return Some(HostFault::Agent(format!("no answer within {ASK:?}"))),
            Ok(Err(e)) => return Some(HostFault::Agent(e.to_string())),
            Ok(Ok(_)) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_host_is_named_with_what_it_was_doing_and_its_address() {
        let f = HostFault::Lost("control socket gone".into());
        assert_eq!(
            f.reason(&Phase::Starting.doing("hello#1"), "10.200.2.2"),
            "connection lost while starting hello#1 (10.200.2.2)"
        );
        let pull = Phase::Pulling {
            image: "reg:5000/hello:v2".into(),
        };
        assert_eq!(
            HostFault::Engine("EOF".into()).reason(&pull.doing("hello#1"), "10.0.0.9"),
            "the Docker engine stopped answering while pulling reg:5000/hello:v2 for hello#1 \
             (10.0.0.9): EOF"
        );
        assert_eq!(f.kind(), "connection-lost");
    }

    #[test]
    fn what_is_left_follows_the_crash_safe_order() {
        assert!(
            Phase::Pulling { image: "x".into() }
                .left("h2", "hello#1")
                .starts_with("nothing of hello#1 was changed on h2")
        );
        assert!(
            Phase::Starting
                .left("h2", "hello#1")
                .contains("keeps serving")
        );
        assert!(
            Phase::Draining
                .left("h2", "hello#1")
                .contains("passed its health check")
        );
    }
}
