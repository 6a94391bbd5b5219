//! The open sessions of one environment's hosts, for the length of one command: `open`
//! connects to every host (at most `parallel` at once) and reads the Consul ACL token once;
//! `observe` reads them into an `ObservedState`; `consul` is a host's agent (its session's one
//! client); `close` ends them. `plan::live`, the deploy pipeline and the operate commands all
//! go through it. It lives here, not in `host`, because observing the desired state is what it
//! adds to the sessions.

use std::borrow::Borrow;

use super::ObservedState;
use super::read::{ObserveOptions, observe_all};
use crate::consul::ConsulClient;
use crate::desired::{DesiredState, HostTarget, InstanceSpec};
use crate::host::{AgentError, ConnectOptions, HostError, HostSession, close_all, connect_all};
use crate::manifest::secret::SecretError;

/// The hosts of `d`, in its order: one session each.
fn targets(d: &DesiredState) -> Vec<HostTarget> {
    d.hosts.iter().map(|h| h.target.clone()).collect()
}

/// Open sessions to every host of one environment. `D` is its desired state, owned (the
/// operate commands) or borrowed (`plan_live`, the pipeline). Close it on every path.
pub struct Connected<D = DesiredState> {
    pub desired: D,
    /// One per host of the desired state, in its order; a host that failed is its error.
    pub sessions: Vec<Result<HostSession, HostError>>,
    pub options: ConnectOptions,
    /// The Consul ACL token's value, read once from the manifest's reference.
    pub consul_token: Option<String>,
    /// At most this many hosts are connected, and read, at once.
    pub parallel: usize,
}

impl<D: Borrow<DesiredState>> Connected<D> {
    /// Read the Consul ACL token, then connect to every host of `desired` (at most `parallel`
    /// at once). A host that fails is kept as its error: callers report it and go on with the
    /// others (a plan has it as a fault). Only an unreadable token fails the whole.
    pub async fn open(
        desired: D,
        options: ConnectOptions,
        parallel: usize,
    ) -> Result<Self, SecretError> {
        let d = desired.borrow();
        let consul_token = crate::manifest::secret::consul_token(d.consul.as_ref())?;
        let sessions = connect_all(&targets(d), &options, parallel).await;
        Ok(Connected {
            desired,
            sessions,
            options,
            consul_token,
            parallel,
        })
    }

    /// The same sessions for `desired`, another resolution of the same environment (`setup`
    /// resolves it again, with its apps' versions, for the accessories): kept when it names the
    /// same hosts in the same order, else closed and opened anew for it.
    pub async fn retarget<E: Borrow<DesiredState>>(
        self,
        desired: E,
    ) -> Result<Connected<E>, SecretError> {
        let (was, now) = (self.desired(), desired.borrow());
        let same = targets(was) == targets(now) && was.consul == now.consul;
        if !same {
            let (options, parallel) = (self.options.clone(), self.parallel);
            self.close().await;
            return Connected::open(desired, options, parallel).await;
        }
        Ok(Connected {
            desired,
            sessions: self.sessions,
            options: self.options,
            consul_token: self.consul_token,
            parallel: self.parallel,
        })
    }

    pub fn desired(&self) -> &DesiredState {
        self.desired.borrow()
    }

    /// Read every host (a host without a session is a fault), then the KV once.
    pub async fn observe(&self) -> ObservedState {
        let d = self.desired();
        let o = ObserveOptions::new(d, self.consul_token.clone(), self.parallel);
        observe_all(&targets(d), &self.sessions, &o).await
    }

    /// Close every session and remove the runtime directory.
    pub async fn close(self) {
        close_all(self.sessions, &self.options).await;
    }

    /// Each host's target with its session (or why there is none), in manifest order.
    pub fn hosts(&self) -> impl Iterator<Item = (&HostTarget, &Result<HostSession, HostError>)> {
        self.desired()
            .hosts
            .iter()
            .map(|h| &h.target)
            .zip(self.sessions.iter())
    }

    /// The sessions that opened, in manifest order.
    pub fn open_sessions(&self) -> Vec<&HostSession> {
        self.sessions
            .iter()
            .filter_map(|s| s.as_ref().ok())
            .collect()
    }

    /// The session of the host called `name`.
    pub fn session(&self, name: &str) -> Option<&Result<HostSession, HostError>> {
        self.hosts().find(|(t, _)| t.name == name).map(|(_, s)| s)
    }

    /// The desired instance `app#n` on host `host`, if the manifest wants one.
    pub fn desired_instance(&self, host: &str, app: &str, n: u32) -> Option<&InstanceSpec> {
        self.desired()
            .hosts
            .iter()
            .find(|h| h.target.name == host)?
            .instances
            .iter()
            .find(|i| i.app == app && i.instance == n)
    }

    /// The client of the Consul agent of the host behind `session` (the session's one client,
    /// [`HostSession::consul`]); `None` when the project does not use Consul.
    pub async fn consul(&self, session: &HostSession) -> Option<Result<ConsulClient, AgentError>> {
        let c = self.desired().consul.as_ref()?;
        Some(
            session
                .consul(c, self.consul_token.as_deref())
                .await
                .cloned(),
        )
    }
}
