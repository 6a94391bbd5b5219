//! `fleet plan --out FILE`: the plan saved with fingerprints of what it was computed from,
//! so `fleet deploy --plan FILE` can refuse to act on hosts (or a manifest) that changed since.
//!
//! The deploy calls `SavedPlan::load(path)?` then, after resolving and observing again,
//! `saved.check(&desired, &observed)?`, and applies `saved.plan` only when that is `Ok`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Plan;
use crate::desired::DesiredState;
use crate::observe::ObservedState;

pub const SAVED_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedPlan {
    pub format_version: u32,
    /// `fleet <version>` that wrote it.
    pub written_by: String,
    /// `ObservedState::fingerprint()` of the observation the plan was computed from.
    pub observed_fingerprint: String,
    /// `desired_fingerprint()` of the desired state it was computed from.
    pub desired_fingerprint: String,
    pub plan: Plan,
}

#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    #[error("cannot write the plan to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the plan file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a fleet plan file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} was written in plan format {found}; this fleet reads format {expected}")]
    Format {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("the saved plan is for {saved}, not {asked}")]
    OtherEnvironment { saved: String, asked: String },
    #[error(
        "the hosts changed since the plan was made (observed {now}, plan made on {then}); plan again"
    )]
    HostsChanged { then: String, now: String },
    #[error("the manifest (or the versions built) changed since the plan was made; plan again")]
    ManifestChanged,
}

/// A digest of the desired state (secrets are references in it, never values).
pub fn desired_fingerprint(d: &DesiredState) -> String {
    let json = serde_json::to_vec(d).expect("desired state serializes");
    format!("sha256:{}", hex::encode(Sha256::digest(json)))
}

impl SavedPlan {
    pub fn new(plan: Plan, desired: &DesiredState, observed: &ObservedState) -> Self {
        SavedPlan {
            format_version: SAVED_FORMAT_VERSION,
            written_by: format!("fleet {}", env!("CARGO_PKG_VERSION")),
            observed_fingerprint: observed.fingerprint(),
            desired_fingerprint: desired_fingerprint(desired),
            plan,
        }
    }

    /// Write as pretty JSON, atomically (temp file + rename), so a reader never sees half.
    pub fn save(&self, path: &Path) -> Result<(), SavedPlanError> {
        let err = |source| SavedPlanError::Write {
            path: path.to_path_buf(),
            source,
        };
        let json = serde_json::to_vec_pretty(self).expect("saved plan serializes");
        let tmp = path.with_extension("tmp-fleet");
        std::fs::write(&tmp, json).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    pub fn load(path: &Path) -> Result<Self, SavedPlanError> {
        let bytes = std::fs::read(path).map_err(|source| SavedPlanError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let v: Version =
            serde_json::from_slice(&bytes).map_err(|source| SavedPlanError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        if v.format_version != SAVED_FORMAT_VERSION {
            return Err(SavedPlanError::Format {
                path: path.to_path_buf(),
                found: v.format_version,
                expected: SAVED_FORMAT_VERSION,
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| SavedPlanError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Ok when `desired` and `observed` (taken again now) are what the plan was made from.
    pub fn check(
        &self,
        desired: &DesiredState,
        observed: &ObservedState,
    ) -> Result<(), SavedPlanError> {
        let saved = format!("{}/{}", self.plan.project, self.plan.environment);
        let asked = format!("{}/{}", desired.project, desired.environment);
        if saved != asked {
            return Err(SavedPlanError::OtherEnvironment { saved, asked });
        }
        if desired_fingerprint(desired) != self.desired_fingerprint {
            return Err(SavedPlanError::ManifestChanged);
        }
        let now = observed.fingerprint();
        if now != self.observed_fingerprint {
            return Err(SavedPlanError::HostsChanged {
                then: short(&self.observed_fingerprint),
                now: short(&now),
            });
        }
        Ok(())
    }
}

fn short(f: &str) -> String {
    f.chars().take(19).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::diff;
    use crate::plan::fixtures::*;

    #[test]
    fn round_trip_and_check() {
        let d = desired();
        let o = empty(&d);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.json");
        SavedPlan::new(diff(&d, &o), &d, &o).save(&path).unwrap();
        let saved = SavedPlan::load(&path).unwrap();
        // What is shown and saved comes back; how apply carries it out is computed again.
        let mut shown = diff(&d, &o);
        shown.context = Default::default();
        for h in &mut shown.hosts {
            h.images_in_use.clear();
            for i in &mut h.instances {
                i.rollout = Default::default();
            }
        }
        for k in &mut shown.kv {
            (k.value, k.before) = (None, None);
        }
        assert_eq!(saved.plan, shown);
        saved.check(&d, &o).unwrap();

        // Someone deployed in between.
        let after = deployed(&d);
        assert!(matches!(
            saved.check(&d, &after),
            Err(SavedPlanError::HostsChanged { .. })
        ));
        // The manifest changed.
        let mut d2 = d.clone();
        d2.hosts[0].instances.pop();
        assert!(matches!(
            saved.check(&d2, &o),
            Err(SavedPlanError::ManifestChanged)
        ));
        // Another environment.
        let mut d3 = d.clone();
        d3.environment = "staging".into();
        assert!(matches!(
            saved.check(&d3, &o),
            Err(SavedPlanError::OtherEnvironment { .. })
        ));
    }

    #[test]
    fn unknown_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.json");
        std::fs::write(&path, r#"{"format_version": 99}"#).unwrap();
        assert!(matches!(
            SavedPlan::load(&path),
            Err(SavedPlanError::Format { found: 99, .. })
        ));
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(
            SavedPlan::load(&path),
            Err(SavedPlanError::Parse { .. })
        ));
    }
}
