//! The host's Consul agent as a typed client, made once per session: the first call forwards
//! the agent's port and builds the client; every later call on the same session (observe,
//! then apply, then operate) gets that client back, so one command speaks to one agent through
//! one client.

use tokio::sync::OnceCell;

use super::{HostError, HostSession};
use crate::consul::{ConsulClient, ConsulError};
use crate::desired::ConsulTarget;

/// Why a host's Consul agent has no client.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent's port could not be forwarded (the error names the host and its address).
    #[error(transparent)]
    Forward(#[from] HostError),
    /// The forwarded address makes no client.
    #[error("{host}: {source}")]
    Client {
        host: String,
        #[source]
        source: ConsulError,
    },
}

/// What a session's client was made for (checked in debug builds; no `Debug`: it holds the
/// token).
#[derive(PartialEq, Eq)]
struct Agent {
    address: String,
    datacenter: Option<String>,
    token: Option<String>,
}

impl Agent {
    fn of(agent: &ConsulTarget, token: Option<&str>) -> Self {
        Agent {
            address: agent.address.clone(),
            datacenter: agent.datacenter.clone(),
            token: token.map(str::to_string),
        }
    }
}

/// The session's client, once made (a field of [`HostSession`]).
#[derive(Default)]
pub(super) struct AgentCell(OnceCell<(Agent, ConsulClient)>);

impl HostSession {
    /// The client of this host's Consul agent (`agent.address` as seen from the host, the ACL
    /// token's value): the first call forwards the agent's port ([`consul_url`](Self::consul_url))
    /// and makes the client, named `<host> (agent <address>)` in its errors; later calls return
    /// the same client. A first call that fails is tried again by the next. A session serves
    /// one environment: every call on it asks for the same agent and token.
    pub async fn consul(
        &self,
        agent: &ConsulTarget,
        token: Option<&str>,
    ) -> Result<&ConsulClient, AgentError> {
        let host = &self.target.name;
        let (made_for, client) = self
            .consul
            .0
            .get_or_try_init(|| async {
                let url = self.consul_url(&agent.address).await?;
                let client =
                    ConsulClient::new(&url, token.map(str::to_string), agent.datacenter.clone())
                        .map_err(|source| AgentError::Client {
                            host: host.clone(),
                            source,
                        })?
                        .with_target(format!("{host} (agent {})", agent.address));
                Ok::<_, AgentError>((Agent::of(agent, token), client))
            })
            .await?;
        debug_assert!(
            *made_for == Agent::of(agent, token),
            "{host}: the session's Consul client is for agent {}, asked for {} (or another token or datacenter)",
            made_for.address,
            agent.address
        );
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ConnectOptions, close_all};
    use super::*;
    use crate::desired::HostTarget;

    fn agent(address: &str) -> ConsulTarget {
        ConsulTarget {
            address: address.into(),
            token: None,
            datacenter: Some("dc1".into()),
            container_address: None,
            agent: None,
        }
    }

    /// A local host needs no forward and making a client connects nowhere: no agent is needed.
    #[tokio::test]
    async fn one_client_per_session_for_its_agent() {
        let target = HostTarget {
            name: "laptop".into(),
            user: None,
            ..super::super::tests::target("local")
        };
        let opts = ConnectOptions::default();
        let s = HostSession::connect(&target, &opts).await.unwrap();
        let a = agent("http://127.0.0.1:8500");
        let first = s.consul(&a, Some("secret")).await.unwrap();
        assert_eq!(first.target(), "laptop (agent http://127.0.0.1:8500)");
        let again = s.consul(&a, Some("secret")).await.unwrap();
        assert!(std::ptr::eq(first, again), "a second client was made");
        // An address that is no URL: nothing is cached, the error names the host.
        let s2 = HostSession::connect(&target, &opts).await.unwrap();
        let e = s2.consul(&agent("not a url"), None).await.unwrap_err();
        assert!(matches!(e, AgentError::Forward(_)), "{e}");
        assert!(e.to_string().starts_with("laptop (local): "), "{e}");
        let then = s2.consul(&a, None).await.unwrap();
        assert_eq!(then.target(), "laptop (agent http://127.0.0.1:8500)");
        close_all(vec![Ok(s), Ok(s2)], &opts).await;
        assert!(!opts.runtime_dir.exists());
    }
}
