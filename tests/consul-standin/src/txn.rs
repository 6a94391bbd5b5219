//! `PUT /v1/txn`, KV operations: every operation runs against the same store under one index,
//! and any failure applies none of them, as Consul's `TxnRW` does (hashicorp/consul
//! agent/consul/state/txn.go, `txnKVS` / `txnDispatch`; the CAS rules of `kvsSetCASTxn` and
//! `kvsDeleteCASTxn` in agent/consul/state/kvs.go). The HTTP limits (128 operations, 512 KiB)
//! are agent/txn_endpoint.go's `maxTxnOps` and `txn_max_req_len`; see `http::txn`.
//!
//! Node, Service, Check and Session operations, and the `lock` / `unlock` verbs, are not
//! modelled: fleet sends none of them, and the stand-in says so instead of guessing.

use std::collections::BTreeMap;

use crate::state::{KvEntry, State};

/// One KV operation as the request body gives it (its `Value` already decoded).
#[derive(Debug, Clone, Default)]
pub struct KvOp {
    pub verb: String,
    pub key: String,
    pub value: Vec<u8>,
    pub flags: u64,
    pub index: u64,
    pub session: String,
}

/// A failed operation: its position in the request and Consul's words for why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub op_index: usize,
    pub what: String,
}

/// What a committed transaction answers: an entry per operation that leaves one, in order
/// (values only for `get` verbs), and whether anything changed.
#[derive(Debug, Default)]
pub struct Committed {
    pub results: Vec<KvEntry>,
    pub changed: bool,
}

/// The store a transaction works on: a copy of the KV table, committed only when every
/// operation succeeded.
struct Draft {
    kv: BTreeMap<String, KvEntry>,
    tombstones: BTreeMap<String, u64>,
    index: u64,
    changed: bool,
}

impl Draft {
    /// `kvsSetTxn`: an identical write changes nothing (and keeps its ModifyIndex).
    fn set(&mut self, key: &str, value: &[u8], flags: u64) -> KvEntry {
        if let Some(e) = self.kv.get(key)
            && e.value == value
            && e.flags == flags
        {
            return e.clone();
        }
        let index = self.index;
        let e = self.kv.entry(key.to_string()).or_insert_with(|| KvEntry {
            key: key.to_string(),
            value: Vec::new(),
            flags: 0,
            create_index: index,
            modify_index: index,
            lock_index: 0,
            session: None,
        });
        e.value = value.to_vec();
        e.flags = flags;
        e.modify_index = index;
        self.tombstones.remove(key);
        self.changed = true;
        e.clone()
    }

    fn delete(&mut self, key: &str) {
        if self.kv.remove(key).is_some() {
            self.tombstones.insert(key.to_string(), self.index);
            self.changed = true;
        }
    }

    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KvEntry> + 'a {
        self.kv
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e)
    }

    /// One operation: its result entries, or Consul's error text.
    fn run(&mut self, op: &KvOp) -> Result<Vec<KvEntry>, String> {
        let key = op.key.as_str();
        let existing = self.kv.get(key).cloned();
        let blank = |mut e: KvEntry| {
            e.value = Vec::new();
            vec![e]
        };
        match op.verb.as_str() {
            "set" => Ok(blank(self.set(key, &op.value, op.flags))),
            "cas" => {
                let ok = match &existing {
                    None => op.index == 0,
                    Some(e) => op.index != 0 && e.modify_index == op.index,
                };
                if !ok {
                    return Err(format!("failed to set key {key:?}, index is stale"));
                }
                Ok(blank(self.set(key, &op.value, op.flags)))
            }
            "get" => existing
                .map(|e| vec![e])
                .ok_or_else(|| format!("key {key:?} doesn't exist")),
            "get-or-empty" => Ok(vec![existing.unwrap_or_else(|| KvEntry {
                key: key.to_string(),
                value: Vec::new(),
                flags: 0,
                create_index: 0,
                modify_index: 0,
                lock_index: 0,
                session: None,
            })]),
            "get-tree" => Ok(self.under(key).cloned().collect()),
            "check-index" => match existing {
                None => Err(format!("failed to check index, key {key:?} doesn't exist")),
                Some(e) if e.modify_index != op.index => Err(format!(
                    "failed index check for key {key:?}, current modify index {} != {}",
                    e.modify_index, op.index
                )),
                Some(e) => Ok(blank(e)),
            },
            "check-not-exists" => match existing {
                Some(_) => Err(format!("key {key:?} exists")),
                None => Ok(Vec::new()),
            },
            "check-session" => match existing {
                None => Err(format!(
                    "failed to check session, key {key:?} doesn't exist"
                )),
                Some(e) if e.session.as_deref().unwrap_or("") != op.session => Err(format!(
                    "failed session check for key {key:?}, current session {:?} != {:?}",
                    e.session.as_deref().unwrap_or(""),
                    op.session
                )),
                Some(e) => Ok(blank(e)),
            },
            "delete" => {
                self.delete(key);
                Ok(Vec::new())
            }
            "delete-tree" => {
                let keys: Vec<String> = self.under(key).map(|e| e.key.clone()).collect();
                for k in keys {
                    self.delete(&k);
                }
                Ok(Vec::new())
            }
            // A key that is not there counts as deleted (`kvsDeleteCASTxn`).
            "delete-cas" => match existing {
                Some(e) if e.modify_index != op.index => {
                    Err(format!("failed to delete key {key:?}, index is stale"))
                }
                Some(_) => {
                    self.delete(key);
                    Ok(Vec::new())
                }
                None => Ok(Vec::new()),
            },
            "lock" | "unlock" => Err(format!(
                "the Consul stand-in does not implement KV verb {:?} in transactions",
                op.verb
            )),
            other => Err(format!("unknown KV verb {other:?}")),
        }
    }
}

impl State {
    /// Runs `ops` atomically: all of them under the next index, or none (every failed
    /// operation is reported, as `txnDispatch` collects them all).
    pub fn kv_txn(&mut self, ops: &[KvOp]) -> Result<Committed, Vec<OpError>> {
        let mut draft = Draft {
            kv: self.kv.clone(),
            tombstones: self.tombstones.clone(),
            index: self.index + 1,
            changed: false,
        };
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (op_index, op) in ops.iter().enumerate() {
            match draft.run(op) {
                Ok(r) => results.extend(r),
                Err(what) => errors.push(OpError { op_index, what }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if draft.changed {
            self.kv = draft.kv;
            self.tombstones = draft.tombstones;
            self.index = draft.index;
            self.kv_index = draft.index;
        }
        Ok(Committed {
            results,
            changed: draft.changed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(verb: &str, key: &str, value: &str, index: u64) -> KvOp {
        KvOp {
            verb: verb.into(),
            key: key.into(),
            value: value.as_bytes().to_vec(),
            index,
            ..Default::default()
        }
    }

    #[test]
    fn a_failing_operation_applies_none_and_every_failure_is_named() {
        let mut s = State::default();
        s.kv_txn(&[op("set", "a", "1", 0)]).unwrap();
        let before = s.index;
        let e = s
            .kv_txn(&[
                op("set", "b", "2", 0),
                op("cas", "a", "x", 999),
                op("check-not-exists", "a", "", 0),
            ])
            .unwrap_err();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].op_index, 1);
        assert_eq!(e[0].what, "failed to set key \"a\", index is stale");
        assert_eq!(e[1].what, "key \"a\" exists");
        assert!(
            !s.kv.contains_key("b"),
            "nothing of a failed transaction is applied"
        );
        assert_eq!(s.index, before, "and no index moves");
    }

    #[test]
    fn every_write_of_a_transaction_shares_one_index() {
        let mut s = State::default();
        let a = s.kv_txn(&[op("set", "a", "1", 0)]).unwrap().results[0].clone();
        let r = s
            .kv_txn(&[
                op("cas", "a", "2", a.modify_index),
                op("cas", "b", "3", 0),
                op("get", "a", "", 0),
            ])
            .unwrap();
        assert!(r.changed);
        assert_eq!(r.results.len(), 3);
        assert_eq!(r.results[0].modify_index, r.results[1].modify_index);
        assert!(
            r.results[0].value.is_empty(),
            "only get verbs answer values"
        );
        assert_eq!(r.results[2].value, b"2");
        assert_eq!(s.kv_index, r.results[0].modify_index);
    }

    #[test]
    fn cas_and_delete_cas_follow_consul() {
        let mut s = State::default();
        // cas 0 creates only; delete-cas of a missing key succeeds.
        let a = s.kv_txn(&[op("cas", "a", "1", 0)]).unwrap().results[0].clone();
        assert!(s.kv_txn(&[op("cas", "a", "1", 0)]).is_err());
        assert!(s.kv_txn(&[op("delete-cas", "missing", "", 7)]).is_ok());
        let e = s
            .kv_txn(&[op("delete-cas", "a", "", a.modify_index + 1)])
            .unwrap_err();
        assert_eq!(e[0].what, "failed to delete key \"a\", index is stale");
        s.kv_txn(&[op("delete-cas", "a", "", a.modify_index)])
            .unwrap();
        assert!(!s.kv.contains_key("a"));
        assert!(s.tombstones.contains_key("a"));
    }

    #[test]
    fn an_identical_write_changes_nothing() {
        let mut s = State::default();
        let a = s.kv_txn(&[op("set", "a", "1", 0)]).unwrap().results[0].clone();
        let r = s.kv_txn(&[op("set", "a", "1", 0)]).unwrap();
        assert!(!r.changed);
        assert_eq!(r.results[0].modify_index, a.modify_index);
    }
}
