//! Apply: execute a plan on the hosts. Rollout order, health gate, rollback, lock.
//!
//! - `deploy`: the engine (`apply(desired, observed, plan, sessions, opts) -> Report`).
//! - `container`: `InstanceSpec` -> Docker create body.
//! - `health`: the health gate (Consul check of the new registration, or fleet's own probe).
//! - `kv`: KV config with check-and-set.
//! - `services`: the seam to the deploy lock, release ledger and hooks (task G's modules).

pub mod container;
pub mod deploy;
pub mod health;
pub mod kv;
pub mod services;

pub use deploy::{ApplyOptions, Failure, Report, Step, apply};
