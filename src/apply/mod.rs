//! Apply: execute a plan on the hosts. Rollout order, health gate, rollback.
//!
//! - `deploy`: the engine (`apply(desired, observed, plan, sessions, opts) -> Report`): rollout
//!   order per host, failure, rollback; `instance`: the steps on one instance's containers
//!   (pull, launch, register + health wait, replace, retire); `prune`: old images after a
//!   rollout; `pull_auth`: which registry credentials go with which pull.
//!   `context`: the types those three share (`Ctx`, `Host`, `Launch`, `Started`, `Undo`,
//!   `ApplyOptions`, `Step`, `Failure`), so imports point one way: deploy -> instance ->
//!   context, fault -> context (`cargo xtask arch` checks it).
//! - `event`: `ApplyEvent`, what apply reports while it runs (one per progress line: who,
//!   `Display` the text, `is_failure`), to `ApplyOptions::events`.
//! - `fault`: after a failed step, was it the host (SSH lost, engine or agent down)? What the
//!   instance was doing (`Phase`) and what that leaves on the host.
//! - `container`: `InstanceSpec` -> Docker create body.
//! - `error`: why a step failed (`LaunchError`, `LaunchFailure` with the container's last
//!   lines, `AgentError`, `EdgeError`, `PruneError`); each renders the line reports show.
//! - `health`: the health gate (Consul check of the new registration, or fleet's own probe).
//! - `kv`: KV config with check-and-set.
//!
//! The deploy lock, the release ledger and the hooks that run around a deploy are not apply's:
//! they are in `crate::release`, which `crate::pipeline::Deployment` wires around `apply`.

pub mod container;
mod context;
pub mod deploy;
pub mod error;
pub mod event;
mod fault;
pub mod health;
mod instance;
pub mod kv;
mod prune;
mod pull_auth;

pub use deploy::{ApplyOptions, Failure, Report, Step, apply};
pub use event::ApplyEvent;
pub use prune::{forget_images, recorded_images};
