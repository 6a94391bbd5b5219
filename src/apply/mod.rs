//! Apply: execute a plan on the hosts. Rollout order, health gate, rollback.
//!
//! - `deploy`: the engine (`apply(plan, sessions, opts) -> Report`): the plan is its only
//!   input: KV, the edge, the canary wave, then every host; `rollout`: one host's slots
//!   as each change's `plan::Rollout` says (decided, and table-tested, in `plan::rollout`);
//!   `failure`: recording a failed instance; `rollback`: putting back what was replaced; `instance`: the steps on one instance's containers
//!   (pull, launch, register + health wait, replace, retire); `prune`: old images after a
//!   rollout; `pull_auth`: which registry credentials go with which pull.
//!   `context`: the types they share (`Ctx`, `Host`, `Launch`, `Started`, `Undo`,
//!   `ApplyOptions`, `Step`, `Failure`), so imports point one way: deploy -> rollout,
//!   rollback, failure -> instance -> context, fault -> context (`cargo xtask arch` checks it).
//! - `event`: `ApplyEvent`, what apply reports while it runs (one per progress line: who,
//!   `Display` the text, `is_failure`), to `ApplyOptions::events`.
//! - `fault`: after a failed step, was it the host (SSH lost, engine or agent down)? What the
//!   instance was doing (`Phase`) and what that leaves on the host.
//! - `container`: `InstanceSpec` -> Docker create body.
//! - `error`: why a step failed (`LaunchError`, `LaunchFailure` with the container's last
//!   lines, `EdgeError`, `PruneError`); each renders the line reports show. A host's agent
//!   is its session's client (`HostSession::consul`).
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
mod failure;
mod fault;
pub mod health;
mod instance;
pub mod kv;
mod prune;
mod pull_auth;
mod rollback;
mod rollout;

pub use deploy::{ApplyOptions, Failure, Report, Step, apply};
pub use event::ApplyEvent;
pub use prune::{forget_images, recorded_images};
