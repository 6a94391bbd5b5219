//! KV config: each app's `config` under `<project>/<env>/<app>/`, written in **one Consul
//! transaction per app** (`PUT /v1/txn`), so an app sees all of its new config or none of it,
//! even when the deploy is killed half-way.
//!
//! Only what the plan says changes is touched. Each write is a check-and-set against the index
//! the plan read (`cas` with index 0 = must not exist; `delete-cas`); unchanged keys are never
//! rewritten. When someone wrote in between, Consul rolls the whole transaction back; the app's
//! keys are read again and the transaction tried again, a few times, then reported.
//!
//! A committed write remembers what each key held before ([`Written`]), so a failed deploy
//! writes the old config back, again in one transaction per app and with check-and-set against
//! what this deploy wrote: a key someone changed since is left alone and reported.
//!
//! Limits are Consul's (see [`crate::consul::TXN_MAX_OPS`]): an app whose changes do not fit
//! in one transaction is refused before anything is written.

use std::collections::BTreeMap;

use crate::consul::{
    ConsulClient, ConsulError, KvPair, QueryOptions, TXN_MAX_BYTES, TXN_MAX_OPS, TxnOp, TxnOutcome,
};
use crate::desired::ConfigOrder;
use crate::plan::{KvAction, Plan};

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("KV config of {app}: {source}")]
    Consul {
        app: String,
        #[source]
        source: ConsulError,
    },
    #[error(
        "KV config of {app}: another writer kept changing {keys} (check-and-set lost {tries} times)"
    )]
    Contended {
        app: String,
        keys: String,
        tries: u32,
    },
    #[error(
        "KV config of {app} needs {ops} operations and {bytes} bytes of values in one Consul \
         transaction, which holds at most {TXN_MAX_OPS} operations and {TXN_MAX_BYTES} bytes; \
         nothing was written: split the config over fewer, smaller keys"
    )]
    TooLarge {
        app: String,
        ops: usize,
        bytes: usize,
    },
    #[error("KV config of {app}: Consul refused the transaction: {what}")]
    Refused { app: String, what: String },
    #[error(
        "KV config of {app} was not written back: {keys} changed since this deploy wrote it; \
         it keeps the newer value"
    )]
    NotRestored { app: String, keys: String },
}

impl KvError {
    /// The app whose config it is.
    pub fn app(&self) -> &str {
        match self {
            KvError::Consul { app, .. }
            | KvError::Contended { app, .. }
            | KvError::TooLarge { app, .. }
            | KvError::Refused { app, .. }
            | KvError::NotRestored { app, .. } => app,
        }
    }
}

/// Counts of what was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KvOutcome {
    pub put: usize,
    pub deleted: usize,
    /// Keys written back to their old value after a failed deploy.
    #[serde(skip_serializing_if = "is_zero")]
    pub restored: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl KvOutcome {
    fn add(&mut self, w: &Written) {
        for k in &w.keys {
            match k.after {
                Some(_) => self.put += 1,
                None => self.deleted += 1,
            }
        }
    }
}

const TRIES: u32 = 5;

/// One key an app's transaction changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    key: String,
    /// The new value; `None` deletes the key.
    value: Option<String>,
    /// The ModifyIndex to check-and-set against (0: the key must be absent).
    index: u64,
    /// What the key held when read (`None`: absent).
    before: Option<Vec<u8>>,
}

/// One app's KV changes, to write in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppWrite {
    pub app: String,
    pub order: ConfigOrder,
    changes: Vec<Change>,
}

impl AppWrite {
    fn ops(&self) -> Vec<TxnOp> {
        self.changes
            .iter()
            .map(|c| match &c.value {
                Some(v) => TxnOp::cas(&c.key, v.as_bytes(), c.index),
                None => TxnOp::delete_cas(&c.key, c.index),
            })
            .collect()
    }

    fn keys(&self) -> String {
        let keys: Vec<&str> = self.changes.iter().map(|c| c.key.as_str()).collect();
        keys.join(", ")
    }
}

/// What a committed transaction changed: each key with its value before and the ModifyIndex
/// of what was written (`None`: deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub app: String,
    keys: Vec<WrittenKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct WrittenKey {
    key: String,
    before: Option<Vec<u8>>,
    after: Option<u64>,
}

impl Written {
    /// The transaction that writes the old values back, with check-and-set against what was
    /// written (a deleted key must still be absent).
    fn undo_ops(&self) -> Vec<TxnOp> {
        self.keys
            .iter()
            .map(|k| match (&k.before, k.after) {
                (Some(v), Some(index)) => TxnOp::cas(&k.key, v, index),
                (Some(v), None) => TxnOp::cas(&k.key, v, 0),
                (None, Some(index)) => TxnOp::delete_cas(&k.key, index),
                (None, None) => TxnOp::delete_cas(&k.key, 0),
            })
            .collect()
    }
}

/// The plan's KV changes as one write per app (manifest order, then any app no longer in the
/// manifest), each checked against Consul's transaction limits. Pure: values, old values and
/// indexes are the plan's (`KvChange::value`, `before`, `index`).
pub fn writes(plan: &Plan) -> Result<Vec<AppWrite>, KvError> {
    let apps = &plan.context.apps;
    let mut by_app: BTreeMap<String, Vec<Change>> = BTreeMap::new();
    for c in &plan.kv {
        let value = match c.action {
            KvAction::Unchanged => continue,
            KvAction::Put => match &c.value {
                Some(v) => Some(v.clone()),
                None => continue,
            },
            KvAction::Delete => None,
        };
        let app = c
            .app(&plan.project, &plan.environment)
            .unwrap_or(&c.key)
            .to_string();
        by_app.entry(app).or_default().push(Change {
            key: c.key.clone(),
            value,
            index: c.index,
            before: c.before.clone(),
        });
    }
    let order_of = |app: &str| {
        apps.iter()
            .position(|a| a.name == app)
            .unwrap_or(usize::MAX)
    };
    let mut out: Vec<AppWrite> = by_app
        .into_iter()
        .map(|(app, changes)| AppWrite {
            order: apps
                .iter()
                .find(|a| a.name == app)
                .map(|a| a.config_order)
                .unwrap_or_default(),
            app,
            changes,
        })
        .collect();
    out.sort_by_key(|w| order_of(&w.app));
    for w in &out {
        let ops = w.ops();
        let bytes: usize = ops.iter().map(TxnOp::value_len).sum();
        if ops.len() > TXN_MAX_OPS || bytes > TXN_MAX_BYTES {
            return Err(KvError::TooLarge {
                app: w.app.clone(),
                ops: ops.len(),
                bytes,
            });
        }
    }
    Ok(out)
}

/// Writes one app's changes in one transaction. When Consul rolls it back because a key
/// changed since it was read, the app's keys are read again and it is tried again.
pub async fn write(consul: &ConsulClient, w: &AppWrite) -> Result<Written, KvError> {
    let err = |source| KvError::Consul {
        app: w.app.clone(),
        source,
    };
    let mut w = w.clone();
    for _ in 0..TRIES {
        if w.changes.is_empty() {
            break;
        }
        match consul.txn(&w.ops()).await.map_err(err)? {
            TxnOutcome::Committed(results) => {
                let index_of: BTreeMap<String, u64> = results
                    .into_iter()
                    .filter_map(|r| r.kv)
                    .map(|kv| (kv.key, kv.modify_index))
                    .collect();
                let keys = w
                    .changes
                    .into_iter()
                    .map(|c| WrittenKey {
                        after: c.value.as_ref().and(index_of.get(&c.key).copied()),
                        key: c.key,
                        before: c.before,
                    })
                    .collect();
                return Ok(Written { app: w.app, keys });
            }
            TxnOutcome::RolledBack(errors) => {
                if let Some(e) = errors.iter().find(|e| !e.what.contains("index is stale")) {
                    return Err(KvError::Refused {
                        app: w.app.clone(),
                        what: e.what.clone(),
                    });
                }
                let prefix = common_prefix(&w);
                let now = consul
                    .kv_list(&prefix, QueryOptions::default())
                    .await
                    .map_err(err)?
                    .value;
                w.changes = reread(w.changes, &now);
            }
        }
    }
    if w.changes.is_empty() {
        return Ok(Written {
            app: w.app,
            keys: Vec::new(),
        });
    }
    Err(KvError::Contended {
        keys: w.keys(),
        app: w.app,
        tries: TRIES,
    })
}

/// Writes an app's old config back (one transaction). Returns how many keys it restored.
pub async fn restore(consul: &ConsulClient, w: &Written) -> Result<usize, KvError> {
    if w.keys.is_empty() {
        return Ok(0);
    }
    let outcome = consul
        .txn(&w.undo_ops())
        .await
        .map_err(|source| KvError::Consul {
            app: w.app.clone(),
            source,
        })?;
    match outcome {
        TxnOutcome::Committed(_) => Ok(w.keys.len()),
        TxnOutcome::RolledBack(errors) => {
            let keys: Vec<&str> = errors
                .iter()
                .filter_map(|e| w.keys.get(e.op_index).map(|k| k.key.as_str()))
                .collect();
            Err(KvError::NotRestored {
                app: w.app.clone(),
                keys: keys.join(", "),
            })
        }
    }
}

/// Writes `writes` in order; when one fails, writes back those already written (their errors
/// are returned beside the first) and fails.
pub async fn write_all(
    consul: &ConsulClient,
    writes: &[&AppWrite],
    out: &mut KvOutcome,
) -> Result<Vec<Written>, (KvError, Vec<KvError>)> {
    let mut done = Vec::new();
    for w in writes {
        match write(consul, w).await {
            Ok(written) => {
                out.add(&written);
                done.push(written);
            }
            Err(e) => {
                let (restored, errors) = restore_all(consul, &done).await;
                out.restored += restored;
                return Err((e, errors));
            }
        }
    }
    Ok(done)
}

/// Writes back every app of `written`, newest first; the keys restored and what could not be.
pub async fn restore_all(consul: &ConsulClient, written: &[Written]) -> (usize, Vec<KvError>) {
    let mut restored = 0;
    let mut errors = Vec::new();
    for w in written.iter().rev() {
        match restore(consul, w).await {
            Ok(n) => restored += n,
            Err(e) => errors.push(e),
        }
    }
    (restored, errors)
}

/// The longest common prefix of an app's keys, cut after a `/` (one read covers them all).
fn common_prefix(w: &AppWrite) -> String {
    let mut keys = w.changes.iter().map(|c| c.key.as_str());
    let first = keys.next().unwrap_or_default();
    let mut len = first.len();
    for k in keys {
        len = first
            .bytes()
            .zip(k.bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
    }
    match first[..len].rfind('/') {
        Some(i) => first[..=i].to_string(),
        None => String::new(),
    }
}

/// The changes still to make after a fresh read: a key that already holds its new value (or
/// is already gone) is dropped; the others take the index and value just read.
fn reread(changes: Vec<Change>, now: &[KvPair]) -> Vec<Change> {
    changes
        .into_iter()
        .filter_map(|mut c| {
            let current = now.iter().find(|p| p.key == c.key);
            let value = current.map(|p| p.value.clone().unwrap_or_default());
            let done = match &c.value {
                Some(v) => value.as_deref() == Some(v.as_bytes()),
                None => current.is_none(),
            };
            if done {
                return None;
            }
            c.index = current.map_or(0, |p| p.modify_index);
            c.before = value;
            Some(c)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::{KvVerb, TxnKvOp};
    use crate::desired::DesiredState;
    use crate::observe::ObservedKv;
    use crate::plan::{KvChange, fixtures};

    fn change(key: &str, action: KvAction, index: u64) -> KvChange {
        KvChange {
            key: key.into(),
            action,
            reason: String::new(),
            index,
            value: None,
            before: None,
        }
    }

    /// The plan of `d` with these KV changes, their values from `d` and what `observed` held
    /// (as `plan::diff` fills them in).
    fn plan_with(d: &DesiredState, observed: Option<&ObservedKv>, changes: &[KvChange]) -> Plan {
        let mut plan = crate::plan::diff(d, &fixtures::deployed(d));
        plan.kv = changes
            .iter()
            .map(|c| KvChange {
                value: (c.action == KvAction::Put)
                    .then(|| d.apps.iter().find_map(|a| a.config.get(&c.key).cloned()))
                    .flatten(),
                before: observed.and_then(|o| o.values.get(&c.key).cloned()),
                ..c.clone()
            })
            .collect();
        plan
    }

    fn pair(key: &str, value: &str, index: u64) -> KvPair {
        KvPair {
            key: key.into(),
            value: Some(value.as_bytes().to_vec()),
            flags: 0,
            create_index: index,
            modify_index: index,
            lock_index: 0,
            session: None,
        }
    }

    fn verbs(ops: &[TxnOp]) -> Vec<(KvVerb, &str, Option<u64>)> {
        ops.iter()
            .map(
                |TxnOp {
                     kv:
                         TxnKvOp {
                             verb, key, index, ..
                         },
                 }| (*verb, key.as_str(), *index),
            )
            .collect()
    }

    #[test]
    fn one_transaction_per_app_with_the_plans_indexes_in_manifest_order() {
        let mut d = fixtures::desired();
        d.apps[1].config_order = ConfigOrder::Last;
        let api = &d.apps[0].name.clone();
        let web = &d.apps[1].name.clone();
        let key = |app: &str, k: &str| format!("shop/prod/{app}/{k}");
        for (app, k) in [(api, "a"), (api, "b"), (web, "c")] {
            d.apps
                .iter_mut()
                .find(|a| &a.name == app)
                .unwrap()
                .config
                .insert(key(app, k), format!("new {k}"));
        }
        let observed = ObservedKv::read(
            "h1",
            vec![
                pair(&key(api, "a"), "old a", 7),
                pair(&key(web, "c"), "old c", 9),
                pair(&key("gone", "x"), "old x", 3),
            ],
        );
        let changes = vec![
            change(&key("gone", "x"), KvAction::Delete, 3),
            change(&key(web, "c"), KvAction::Put, 9),
            change(&key(api, "b"), KvAction::Put, 0),
            change(&key(api, "a"), KvAction::Put, 7),
            change(&key(api, "z"), KvAction::Unchanged, 4),
        ];
        let w = writes(&plan_with(&d, Some(&observed), &changes)).unwrap();
        let apps: Vec<(&str, ConfigOrder)> = w.iter().map(|w| (w.app.as_str(), w.order)).collect();
        assert_eq!(
            apps,
            [
                (api.as_str(), ConfigOrder::First),
                (web.as_str(), ConfigOrder::Last),
                ("gone", ConfigOrder::First)
            ]
        );
        assert_eq!(
            verbs(&w[0].ops()),
            [
                (KvVerb::Cas, key(api, "b").as_str(), Some(0)),
                (KvVerb::Cas, key(api, "a").as_str(), Some(7)),
            ]
        );
        assert_eq!(w[0].ops()[1].kv.value.as_deref(), Some(&b"new a"[..]));
        assert_eq!(
            verbs(&w[2].ops()),
            [(KvVerb::DeleteCas, key("gone", "x").as_str(), Some(3))]
        );
        assert_eq!(w[1].changes[0].before.as_deref(), Some(&b"old c"[..]));
    }

    #[test]
    fn an_app_over_consuls_limits_is_refused_before_anything_is_written() {
        let mut d = fixtures::desired();
        let app = d.apps[0].name.clone();
        let mut changes = Vec::new();
        for i in 0..=TXN_MAX_OPS {
            let k = format!("shop/prod/{app}/k{i}");
            d.apps[0].config.insert(k.clone(), "v".into());
            changes.push(change(&k, KvAction::Put, 0));
        }
        let e = writes(&plan_with(&d, None, &changes)).unwrap_err();
        assert!(
            matches!(e, KvError::TooLarge { ops, .. } if ops == TXN_MAX_OPS + 1),
            "{e}"
        );
        // Size counts too.
        let big = "x".repeat(TXN_MAX_BYTES + 1);
        let k = format!("shop/prod/{app}/big");
        d.apps[0].config = [(k.clone(), big)].into();
        let e = writes(&plan_with(&d, None, &[change(&k, KvAction::Put, 0)])).unwrap_err();
        assert!(e.to_string().contains("nothing was written"), "{e}");
    }

    #[test]
    fn the_undo_writes_back_what_each_key_held_against_what_was_written() {
        let w = Written {
            app: "api".into(),
            keys: vec![
                WrittenKey {
                    key: "p/e/api/changed".into(),
                    before: Some(b"old".to_vec()),
                    after: Some(20),
                },
                WrittenKey {
                    key: "p/e/api/new".into(),
                    before: None,
                    after: Some(20),
                },
                WrittenKey {
                    key: "p/e/api/deleted".into(),
                    before: Some(b"kept".to_vec()),
                    after: None,
                },
            ],
        };
        let ops = w.undo_ops();
        assert_eq!(
            verbs(&ops),
            [
                (KvVerb::Cas, "p/e/api/changed", Some(20)),
                (KvVerb::DeleteCas, "p/e/api/new", Some(20)),
                (KvVerb::Cas, "p/e/api/deleted", Some(0)),
            ]
        );
        assert_eq!(ops[0].kv.value.as_deref(), Some(&b"old"[..]));
        assert_eq!(ops[2].kv.value.as_deref(), Some(&b"kept"[..]));
    }

    #[test]
    fn a_reread_keeps_only_what_still_differs_with_the_new_index() {
        let changes = vec![
            Change {
                key: "p/e/a/x".into(),
                value: Some("new".into()),
                index: 1,
                before: None,
            },
            Change {
                key: "p/e/a/y".into(),
                value: Some("new".into()),
                index: 1,
                before: None,
            },
            Change {
                key: "p/e/a/z".into(),
                value: None,
                index: 1,
                before: None,
            },
        ];
        let now = [pair("p/e/a/x", "new", 5), pair("p/e/a/y", "other", 6)];
        let left = reread(changes, &now);
        assert_eq!(
            left.len(),
            1,
            "x holds its value already, z is gone: {left:?}"
        );
        assert_eq!(left[0].key, "p/e/a/y");
        assert_eq!(left[0].index, 6);
        assert_eq!(left[0].before.as_deref(), Some(&b"other"[..]));
    }

    #[test]
    fn one_read_covers_an_apps_keys() {
        let w = AppWrite {
            app: "a".into(),
            order: ConfigOrder::First,
            changes: ["p/e/a/db/pool", "p/e/a/db/port", "p/e/a/greeting"]
                .iter()
                .map(|k| Change {
                    key: k.to_string(),
                    value: None,
                    index: 0,
                    before: None,
                })
                .collect(),
        };
        assert_eq!(common_prefix(&w), "p/e/a/");
    }
}
