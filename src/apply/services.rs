//! The seam between the deploy engine and the modules written beside it (task G): the deploy
//! lock (`apply::lock`), the release ledger (`apply::ledger`) and hooks (`apply::hooks`).
//!
//! Every call site of those modules goes through here, so wiring them in is a few lines, each
//! marked `TODO(merge)`. Until then:
//! - the lock is not taken (a second deploy is not refused);
//! - releases are kept in a small stand-in record under `<project>/<env>/_deploy/releases`
//!   (a reserved `_` key: plans never touch it), enough for `fleet rollback` to find the
//!   previous good release;
//! - hooks are not run (the manifest has no hook keys yet).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::consul::{ConsulClient, KvPut};
use crate::desired::Versions;

/// The outcome of a deploy, as the ledger records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Success,
    Failed,
    RolledBack,
}

/// One release (stand-in for `apply::ledger::Release`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub id: String,
    pub versions: BTreeMap<String, String>,
    pub user: String,
    /// Unix seconds.
    pub started: u64,
    pub finished: u64,
    pub outcome: Outcome,
    pub summary: String,
}

/// A held deploy lock (stand-in for `apply::lock::DeployLock`).
pub struct LockGuard {
    // TODO(merge): hold `apply::lock::DeployLock` here.
    _private: (),
}

impl LockGuard {
    pub async fn release(self) {
        // TODO(merge): `self.lock.release().await`.
    }
}

/// What the engine needs from lock, ledger and hooks.
pub struct Services {
    pub consul: Option<ConsulClient>,
    pub project: String,
    pub environment: String,
}

const KEEP: usize = 50;

impl Services {
    fn releases_key(&self) -> String {
        format!("{}/{}/_deploy/releases", self.project, self.environment)
    }

    /// Take the deploy lock for project + environment, or say who holds it.
    pub async fn lock(&self, _summary: &str) -> Result<LockGuard, String> {
        // TODO(merge): DeployLock::acquire(consul, project, env, Holder::current(), summary)
        //   .map_err(|e| match e { LockError::Held { holder, since } => ..., .. })
        Ok(LockGuard { _private: () })
    }

    /// Run a `pre_deploy` / `post_deploy` command.
    pub async fn hook(
        &self,
        _kind: &str,
        _cmd: &str,
        _env: &[(String, String)],
    ) -> Result<(), String> {
        // TODO(merge): apply::hooks::run(HookKind::.., cmd, env).await.map_err(|e| e.to_string())
        Ok(())
    }

    /// Every recorded release, oldest first.
    pub async fn releases(&self) -> Vec<ReleaseRecord> {
        // TODO(merge): apply::ledger::list(consul, project, env)
        let Some(c) = &self.consul else {
            return Vec::new();
        };
        match c.kv_get(&self.releases_key()).await {
            Ok(Some(p)) => p
                .value
                .and_then(|v| serde_json::from_slice(&v).ok())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Append a release record (best effort: a deploy that worked is not failed by its ledger).
    pub async fn record(&self, r: ReleaseRecord) -> Result<(), String> {
        // TODO(merge): apply::ledger::append(consul, project, env, &Release { .. })
        let Some(c) = &self.consul else {
            return Ok(());
        };
        for _ in 0..5 {
            let current = c
                .kv_get(&self.releases_key())
                .await
                .map_err(|e| e.to_string())?;
            let cas = current.as_ref().map(|p| p.modify_index).unwrap_or(0);
            let mut list: Vec<ReleaseRecord> = current
                .and_then(|p| p.value)
                .and_then(|v| serde_json::from_slice(&v).ok())
                .unwrap_or_default();
            list.push(r.clone());
            if list.len() > KEEP {
                list.drain(..list.len() - KEEP);
            }
            let body = serde_json::to_vec(&list).expect("plain data");
            let put = KvPut {
                cas: Some(cas),
                ..Default::default()
            };
            if c.kv_put(&self.releases_key(), &body, &put)
                .await
                .map_err(|e| e.to_string())?
            {
                return Ok(());
            }
        }
        Err("the release ledger kept changing under us".into())
    }

    /// The versions of the last successful release whose versions differ from `current`
    /// (what `fleet rollback` returns to).
    pub async fn previous_good(&self, current: &Versions) -> Option<ReleaseRecord> {
        // TODO(merge): ledger::list + the same rule (ledger::last_good is the newest good one,
        // which right after a good deploy is the current one).
        previous_good(&self.releases().await, current)
    }
}

/// The newest successful release with versions other than `current`.
pub fn previous_good(list: &[ReleaseRecord], current: &Versions) -> Option<ReleaseRecord> {
    list.iter()
        .rev()
        .filter(|r| r.outcome == Outcome::Success)
        .find(|r| {
            r.versions
                .iter()
                .any(|(app, v)| current.get(app).is_some_and(|c| c != v))
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: &str, outcome: Outcome) -> ReleaseRecord {
        ReleaseRecord {
            id: v.into(),
            versions: [("api".to_string(), v.to_string())].into(),
            user: "u".into(),
            started: 0,
            finished: 0,
            outcome,
            summary: String::new(),
        }
    }

    #[test]
    fn previous_good_skips_the_current_and_failed_releases() {
        let list = vec![
            rec("v1", Outcome::Success),
            rec("v2", Outcome::Success),
            rec("v3", Outcome::Failed),
        ];
        let cur: Versions = [("api".to_string(), "v2".to_string())].into();
        assert_eq!(previous_good(&list, &cur).unwrap().id, "v1");
        let cur: Versions = [("api".to_string(), "v3".to_string())].into();
        assert_eq!(previous_good(&list, &cur).unwrap().id, "v2");
        assert!(
            previous_good(&list[..1], &[("api".to_string(), "v1".to_string())].into()).is_none()
        );
    }
}
