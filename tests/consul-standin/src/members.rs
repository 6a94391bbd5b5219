//! Membership, quorum and the leader, modelled only as far as fleet must respect them
//! (docs/consul.md, *Members, peers and the leader*):
//!
//! - an agent started with a member role ([`crate::Config::member`]) joins the cluster: it tells
//!   the server it is there every [`HEARTBEAT`], and is `alive` (Status 1) in
//!   `/v1/agent/members` from its first heartbeat (Consul: `agent/agent.go` `JoinLAN`, serf's
//!   `MemberStatus` in `serf/serf.go`: alive 1, leaving 2, left 3, failed 4);
//! - a member that leaves (SIGTERM, `consul leave`) is `left` (3) at once; one whose heartbeats
//!   stop (its container killed) is `failed` (4) after [`FAILED_AFTER`];
//! - a server counts toward quorum while it is alive; `/v1/status/leader` is `""` while fewer
//!   than a majority of `bootstrap_expect` servers are alive (raft needs a quorum,
//!   `agent/consul/server.go` / `leader.go`), else a leader's `IP:8300`, kept while that server
//!   stays alive; `/v1/status/peers` lists the alive servers (`agent/status_endpoint.go`).
//!
//! A server process with no members at all (the testbed's h1..hN, the contract suite) answers as
//! before: itself as the leader.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Shared;

/// The path on the server that takes a member's heartbeat (the stand-in's internal RPC).
pub const MEMBER_PATH: &str = "/v1/internal/standin/member";
/// How often a member tells the server it is there.
pub const HEARTBEAT: Duration = Duration::from_millis(200);
/// A member not heard of for this long is failed.
pub const FAILED_AFTER: Duration = Duration::from_millis(1500);

/// What an agent is in the cluster, from `-server` and `-bootstrap-expect`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberRole {
    pub server: bool,
    /// `-bootstrap-expect` (servers only; 0: not given).
    pub bootstrap_expect: u32,
    pub datacenter: String,
    /// `-retry-join` addresses, as given (shown in the member's tags).
    pub retry_join: Vec<String>,
}

/// One heartbeat (or, with `leave`, a graceful leave).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Beat {
    pub node: String,
    pub address: String,
    pub role: MemberRole,
    #[serde(default)]
    pub leave: bool,
}

#[derive(Debug)]
struct Member {
    address: String,
    role: MemberRole,
    seen: Instant,
    left: bool,
}

/// The server's view of the members.
#[derive(Debug, Default)]
pub struct Members {
    members: BTreeMap<String, Member>,
    leader: Option<String>,
}

const ALIVE: u8 = 1;
const LEFT: u8 = 3;
const FAILED: u8 = 4;

impl Members {
    pub fn beat(&mut self, b: Beat) {
        self.beat_at(b, Instant::now())
    }

    fn beat_at(&mut self, b: Beat, now: Instant) {
        self.members.insert(
            b.node,
            Member {
                address: b.address,
                role: b.role,
                seen: now,
                left: b.leave,
            },
        );
    }

    fn status(m: &Member, now: Instant) -> u8 {
        if m.left {
            LEFT
        } else if now.duration_since(m.seen) > FAILED_AFTER {
            FAILED
        } else {
            ALIVE
        }
    }

    /// Whether any member ever joined (else the server answers as a lone one).
    pub fn used(&self) -> bool {
        !self.members.is_empty()
    }

    fn alive_servers(&self, now: Instant) -> Vec<(&String, &Member)> {
        self.members
            .iter()
            .filter(|(_, m)| m.role.server && Self::status(m, now) == ALIVE)
            .collect()
    }

    /// The leader's node name, electing one when there is a quorum and none (or a dead one).
    pub fn leader_at(&mut self, now: Instant) -> Option<String> {
        let expect = self
            .members
            .values()
            .filter(|m| m.role.server)
            .map(|m| m.role.bootstrap_expect)
            .max()
            .unwrap_or(0)
            .max(1);
        let alive: Vec<String> = self
            .alive_servers(now)
            .into_iter()
            .map(|(n, _)| n.clone())
            .collect();
        if (alive.len() as u32) < expect / 2 + 1 {
            self.leader = None;
            return None;
        }
        match &self.leader {
            Some(l) if alive.contains(l) => {}
            _ => self.leader = alive.first().cloned(),
        }
        self.leader.clone()
    }

    /// `/v1/status/leader`: `"IP:8300"`, or `""` without a quorum.
    pub fn leader_address(&mut self) -> String {
        let now = Instant::now();
        match self.leader_at(now) {
            Some(node) => format!("{}:8300", self.members[&node].address),
            None => String::new(),
        }
    }

    /// `/v1/status/peers`: the alive servers' `IP:8300`.
    pub fn peers(&self) -> Vec<String> {
        self.alive_servers(Instant::now())
            .into_iter()
            .map(|(_, m)| format!("{}:8300", m.address))
            .collect()
    }

    /// `/v1/agent/members`: the shape of Consul's `[]*structs.Member` (api/agent.go
    /// `AgentMember`).
    pub fn list(&self) -> Value {
        let now = Instant::now();
        Value::Array(
            self.members
                .iter()
                .map(|(name, m)| {
                    let mut tags = json!({
                        "role": if m.role.server { "consul" } else { "node" },
                        "dc": if m.role.datacenter.is_empty() { "dc1" } else { &m.role.datacenter },
                    });
                    if m.role.server && m.role.bootstrap_expect > 0 {
                        tags["expect"] = m.role.bootstrap_expect.to_string().into();
                    }
                    json!({
                        "Name": name,
                        "Addr": m.address,
                        "Port": 8301,
                        "Tags": tags,
                        "Status": Self::status(m, now),
                        "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
                        "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
                    })
                })
                .collect(),
        )
    }
}

fn beat_of(shared: &Shared, leave: bool) -> Option<Beat> {
    let role = shared.config.member.clone()?;
    Some(Beat {
        node: shared.config.node.clone(),
        address: shared.node_address.clone(),
        role,
        leave,
    })
}

async fn send(shared: &Shared, beat: &Beat) -> anyhow::Result<()> {
    let crate::Role::Agent { server, .. } = &shared.role else {
        return Ok(());
    };
    let r = shared
        .http
        .put(format!("{server}{MEMBER_PATH}"))
        .timeout(Duration::from_secs(2))
        .json(beat)
        .send()
        .await?;
    if !r.status().is_success() {
        anyhow::bail!("server answered {}", r.status());
    }
    Ok(())
}

/// The heartbeat loop of an agent with a member role.
pub(crate) fn spawn_heartbeat(
    shared: &Arc<Shared>,
    stop: &watch::Sender<bool>,
) -> Option<JoinHandle<()>> {
    let beat = beat_of(shared, false)?;
    let shared = shared.clone();
    let mut stopped = stop.subscribe();
    Some(tokio::spawn(async move {
        let mut warned = false;
        loop {
            match send(&shared, &beat).await {
                Ok(()) => warned = false,
                Err(e) if !warned => {
                    eprintln!("consul-standin: cannot reach the server to join: {e:#}");
                    warned = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = crate::stopped(&mut stopped) => return,
            }
        }
    }))
}

/// A graceful leave (`consul leave`, or SIGTERM without `leave_on_terminate = false`).
pub(crate) async fn leave(shared: &Shared) {
    if let Some(beat) = beat_of(shared, true)
        && let Err(e) = send(shared, &beat).await
    {
        eprintln!("consul-standin: leave: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(node: &str, expect: u32) -> Beat {
        Beat {
            node: node.into(),
            address: format!("10.0.0.{}", node.len()),
            role: MemberRole {
                server: true,
                bootstrap_expect: expect,
                ..Default::default()
            },
            leave: false,
        }
    }

    #[test]
    fn a_leader_needs_a_majority_of_the_expected_servers_and_stays_while_alive() {
        let t0 = Instant::now();
        let mut m = Members::default();
        m.beat_at(server("a", 3), t0);
        assert_eq!(m.leader_at(t0), None, "1 of 3 is no quorum");
        m.beat_at(server("bb", 3), t0);
        assert_eq!(m.leader_at(t0).as_deref(), Some("a"));
        m.beat_at(server("ccc", 3), t0);
        // "a" leaves: another alive server leads at once.
        let mut leave = server("a", 3);
        leave.leave = true;
        m.beat_at(leave, t0);
        assert_eq!(m.leader_at(t0).as_deref(), Some("bb"));
        // "a" is back: "bb" stays leader.
        m.beat_at(server("a", 3), t0);
        assert_eq!(m.leader_at(t0).as_deref(), Some("bb"));
        // Everyone but "ccc" stops beating: failed after FAILED_AFTER, no quorum.
        let later = t0 + FAILED_AFTER + Duration::from_millis(10);
        m.beat_at(server("ccc", 3), later);
        assert_eq!(m.leader_at(later), None);
        let list = m.list();
        let statuses: Vec<u64> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["Status"].as_u64().unwrap())
            .collect();
        assert_eq!(statuses.len(), 3);
    }
}
