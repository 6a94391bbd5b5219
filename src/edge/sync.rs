//! Keeping the edges' upstreams in step while a deploy, a rollback or a restart changes
//! instances: `retire` takes instances out of every edge and waits for the evidence that no
//! request goes to them any more; `push` sets every route's upstreams to the passing
//! instances Consul lists. One push at a time (a lock), so two hosts' steps never write an
//! older list over a newer one.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use super::{Admin, passing, wait_drained};
use crate::consul::ConsulClient;
use crate::desired::DesiredEdge;

/// How long a retire waits for the edges to let go of an instance.
pub const DRAIN_EVIDENCE: Duration = Duration::from_secs(15);

pub struct EdgeSync {
    pub project: String,
    pub env: String,
    pub edge: DesiredEdge,
    pub admins: Vec<Admin>,
    consul: ConsulClient,
    /// Dials taken out by this command: never pushed again, whatever the catalog still says.
    excluded: Mutex<Vec<String>>,
    /// `(app, dial)` of instances this command saw pass their health check: pushed even before
    /// the catalog lists them (an agent syncs its checks to the servers with a lag), so taking
    /// an old instance out right after its replacement passed never leaves a route only the
    /// instances not yet replaced (on a host just lost, perhaps: then none that answers).
    admitted: Mutex<Vec<(String, String)>>,
    /// Edges that stopped answering (their host is lost): skipped from then on.
    lost: Mutex<HashSet<String>>,
    lock: tokio::sync::Mutex<()>,
    /// Time spent waiting for drain evidence, for the report and the bench.
    pub drained: Mutex<Duration>,
}

impl EdgeSync {
    pub fn new(
        project: &str,
        env: &str,
        edge: DesiredEdge,
        admins: Vec<Admin>,
        consul: ConsulClient,
    ) -> EdgeSync {
        EdgeSync {
            project: project.into(),
            env: env.into(),
            edge,
            admins,
            consul,
            excluded: Mutex::new(Vec::new()),
            admitted: Mutex::new(Vec::new()),
            lost: Mutex::new(HashSet::new()),
            lock: tokio::sync::Mutex::new(()),
            drained: Mutex::new(Duration::ZERO),
        }
    }

    /// Whether `app` has a route.
    pub fn routes(&self, app: &str) -> bool {
        self.edge.routes.iter().any(|r| r.app == app)
    }

    fn live(&self) -> Vec<Admin> {
        let lost = self.lost.lock().unwrap();
        self.admins
            .iter()
            .filter(|a| !lost.contains(&a.host))
            .cloned()
            .collect()
    }

    /// The upstreams of every route now (passing in Consul, minus what was retired).
    pub async fn upstreams(&self) -> Result<HashMap<String, Vec<String>>, String> {
        let excluded = self.excluded.lock().unwrap().clone();
        let mut out = HashMap::new();
        for r in &self.edge.routes {
            let mut list = passing(
                &self.consul,
                &self.project,
                &self.env,
                &r.service,
                &excluded,
            )
            .await?;
            for (app, d) in self.admitted.lock().unwrap().iter() {
                if *app == r.app && !excluded.contains(d) && !list.contains(d) {
                    list.push(d.clone());
                }
            }
            list.sort();
            out.insert(r.app.clone(), list);
        }
        Ok(out)
    }

    /// Set the upstreams of `app`'s route (every route with `None`) on every live edge.
    /// Returns problems (an edge that did not answer is marked lost and named).
    pub async fn push(&self, app: Option<&str>) -> Vec<String> {
        let _g = self.lock.lock().await;
        let ups = match self.upstreams().await {
            Ok(u) => u,
            Err(e) => return vec![e],
        };
        let mut problems = Vec::new();
        for a in self.live() {
            // Each change is a reload of the edge's config: none when nothing changes.
            let current = a.config().await.ok();
            for r in self
                .edge
                .routes
                .iter()
                .filter(|r| app.is_none_or(|x| x == r.app))
            {
                let list = ups.get(&r.app).cloned().unwrap_or_default();
                let id = super::caddy::route_id(&self.project, &self.env, &r.app);
                if current
                    .as_ref()
                    .and_then(|c| super::find_id(c, &id))
                    .is_some_and(|have| super::caddy::upstreams_of(&have) == list)
                {
                    continue;
                }
                // The whole route: both its proxies' upstreams in one PATCH (one reload).
                let want = super::caddy::route(&self.project, &self.env, r, &list);
                if let Err(e) = a.patch_id(&id, "", &want).await {
                    self.lost.lock().unwrap().insert(a.host.clone());
                    problems.push(format!("{e} (left out from now on)"));
                    break;
                }
            }
        }
        problems
    }

    /// Take `dials` of `app` out of every edge, then wait for the evidence that none of them
    /// gets requests: `Ok(waited)`, or `Err(what was still seen)` after `DRAIN_EVIDENCE`.
    pub async fn retire(&self, app: &str, dials: &[String]) -> Result<Duration, String> {
        if dials.is_empty() || !self.routes(app) {
            return Ok(Duration::ZERO);
        }
        self.excluded.lock().unwrap().extend(dials.iter().cloned());
        let problems = self.push(Some(app)).await;
        let live = self.live();
        let r = wait_drained(&live, dials, DRAIN_EVIDENCE).await;
        if let Ok(d) = &r {
            *self.drained.lock().unwrap() += *d;
        }
        match (r, problems.is_empty()) {
            (Ok(d), true) => Ok(d),
            (Ok(_), false) => Err(problems.join("; ")),
            (Err(e), _) => Err(problems
                .into_iter()
                .chain([e])
                .collect::<Vec<_>>()
                .join("; ")),
        }
    }

    /// `dials` of `app` passed their health check: routed to from the next push on (again, if
    /// retired earlier in this command: a rollback's instance on a freed port).
    pub fn include(&self, app: &str, dials: &[String]) {
        self.excluded.lock().unwrap().retain(|d| !dials.contains(d));
        let mut admitted = self.admitted.lock().unwrap();
        for d in dials {
            if !admitted.iter().any(|(a, x)| a == app && x == d) {
                admitted.push((app.to_string(), d.clone()));
            }
        }
    }

    /// Let `dials` be routed to again (a restarted instance keeps its address), then push.
    pub async fn admit(&self, app: &str, dials: &[String]) -> Vec<String> {
        self.include(app, dials);
        if !self.routes(app) {
            return Vec::new();
        }
        self.push(Some(app)).await
    }
}
