//! Apply: execute a plan on the hosts. Rollout order, health gate, rollback, lock.

pub mod container;
