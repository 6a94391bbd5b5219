//! KV config: the apps' `config` under `<project>/<env>/<app>/`, written with check-and-set.
//!
//! Only what the plan says changes is touched: `Put` keys are written with `cas` = the index
//! the key had when read (0 = must not exist), `Delete` keys are deleted with `cas` too, and
//! unchanged keys are never rewritten. A CAS that loses (someone wrote in between) is read and
//! tried again, a few times, then reported.

use crate::consul::{ConsulClient, ConsulError, KvDelete, KvPut};
use crate::desired::DesiredState;
use crate::plan::{KvAction, KvChange};

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("KV {key}: {source}")]
    Consul {
        key: String,
        #[source]
        source: ConsulError,
    },
    #[error("KV {key}: another writer kept changing it (check-and-set lost {tries} times)")]
    Contended { key: String, tries: u32 },
}

/// Counts of what was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KvOutcome {
    pub put: usize,
    pub deleted: usize,
}

const TRIES: u32 = 5;

/// Apply the plan's KV changes; values come from `desired`.
pub async fn apply(
    consul: &ConsulClient,
    desired: &DesiredState,
    changes: &[KvChange],
) -> Result<KvOutcome, KvError> {
    let mut out = KvOutcome::default();
    let value_of = |key: &str| desired.apps.iter().find_map(|a| a.config.get(key)).cloned();
    for c in changes {
        let err = |source| KvError::Consul {
            key: c.key.clone(),
            source,
        };
        match c.action {
            KvAction::Unchanged => {}
            KvAction::Put => {
                let Some(value) = value_of(&c.key) else {
                    continue;
                };
                let mut tries = 0;
                loop {
                    tries += 1;
                    let current = consul.kv_get(&c.key).await.map_err(err)?;
                    if current.as_ref().and_then(|p| p.value.as_deref()) == Some(value.as_bytes()) {
                        break;
                    }
                    let cas = current.map(|p| p.modify_index).unwrap_or(0);
                    let put = KvPut {
                        cas: Some(cas),
                        ..Default::default()
                    };
                    if consul
                        .kv_put(&c.key, value.as_bytes(), &put)
                        .await
                        .map_err(err)?
                    {
                        out.put += 1;
                        break;
                    }
                    if tries >= TRIES {
                        return Err(KvError::Contended {
                            key: c.key.clone(),
                            tries,
                        });
                    }
                }
            }
            KvAction::Delete => {
                let mut tries = 0;
                loop {
                    tries += 1;
                    let Some(current) = consul.kv_get(&c.key).await.map_err(err)? else {
                        break;
                    };
                    let del = KvDelete {
                        cas: Some(current.modify_index),
                        recurse: false,
                    };
                    if consul.kv_delete(&c.key, &del).await.map_err(err)? {
                        out.deleted += 1;
                        break;
                    }
                    if tries >= TRIES {
                        return Err(KvError::Contended {
                            key: c.key.clone(),
                            tries,
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}
