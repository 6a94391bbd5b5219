//! fleet: declarative deploys of containers to hosts over SSH, with Consul registration.
//!
//! The data flows one way (see `docs/architecture.md`):
//!
//! ```text
//! manifest file --parse/validate--> Manifest --resolve(env)--> DesiredState --+
//!                                                                             +-- diff --> Plan --> apply --> Report
//! hosts (SSH > Docker, Consul) ----------------observe------> ObservedState --+
//! ```
//!
//! `manifest`, `desired`, `plan` are plain data and pure functions. Only `observe`, `apply`
//! and `build` touch the outside world, through `host`, `consul` and `registry`.

pub mod apply;
pub mod build;
pub mod cli;
pub mod consul;
pub mod desired;
pub mod edge;
pub mod errors;
pub mod host;
pub mod http;
pub mod identity;
pub mod manifest;
pub mod observe;
pub mod operate;
pub mod pipeline;
pub mod plan;
pub mod registry;
pub mod release;
pub mod setup;
pub mod ui;
