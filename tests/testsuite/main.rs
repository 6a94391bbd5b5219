//! fleet's end-to-end tests: one test binary (as cargo's own `tests/testsuite`), a module per
//! concern, and one `support` they share. Most run the real `fleet` binary against the testbed
//! (`cargo xtask testbed up`; `cargo xtask ci` starts it); a test that finds none skips with a
//! message unless FLEET_TESTBED is set. Files run side by side: a test shares the testbed's
//! hosts with the others (`support::Testbed::get`) or, when it cuts a link or kills a daemon,
//! has them alone (`support::Testbed::exclusive`; `support/claim.rs`).
//!
//! One file: `cargo test --test testsuite plan::` (a module path is a test name filter).

mod support;

mod accessories;
mod build;
mod ci;
mod cluster;
mod consul;
mod deploy;
mod edge;
mod editors;
mod faults;
mod fuzz;
mod koa;
mod lock;
mod manifest;
mod operate;
mod ownership;
mod plan;
mod pm2;
mod release;
mod setup;
mod testbed;
mod trust;
