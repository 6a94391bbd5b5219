//! Apply: execute a plan on the hosts. Rollout order, health gate, rollback, lock.

pub mod container;
pub mod hooks;
pub mod ledger;
pub mod lock;
