//! Apply: execute a plan on the hosts. Rollout order, health gate, rollback, lock.
//!
//! - `deploy`: the engine (`apply(desired, observed, plan, sessions, opts) -> Report`): rollout
//!   order per host, failure, rollback; `instance`: the steps on one instance's containers
//!   (pull, launch, register + health wait, replace, retire); `prune`: old images after a
//!   rollout; `pull_auth`: which registry credentials go with which pull.
//!   `context`: the types those three share (`Ctx`, `Host`, `Launch`, `Started`, `Undo`,
//!   `ApplyOptions`, `Step`, `Failure`), so they import it and never each other.
//! - `fault`: after a failed step, was it the host (SSH lost, engine or agent down)? What the
//!   instance was doing (`Phase`) and what that leaves on the host.
//! - `container`: `InstanceSpec` -> Docker create body.
//! - `health`: the health gate (Consul check of the new registration, or fleet's own probe).
//! - `kv`: KV config with check-and-set.
//! - `lock`, `ledger`, `hooks`: the deploy lock (in Consul, `lock/consul.rs`, or a file on the
//!   first host, `lock/host_file.rs`), the release records, pre/post deploy hooks (`lock::Store`
//!   opens the lock and ledger of an environment; `crate::pipeline::Deployment` wires them
//!   around `apply`).

pub mod container;
mod context;
pub mod deploy;
mod fault;
pub mod health;
pub mod hooks;
mod instance;
pub mod kv;
pub mod ledger;
pub mod lock;
mod prune;
mod pull_auth;

pub use deploy::{ApplyOptions, Failure, Report, Step, apply};
pub use prune::{forget_images, recorded_images};
