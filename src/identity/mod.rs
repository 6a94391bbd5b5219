//! How fleet names and marks what it makes, so it finds its own work again on the hosts and in
//! Consul (and nothing else): pure functions and constants, used by resolve, observe, plan,
//! apply, release and operate alike.
//!
//! - `labels`: the container labels and Consul Meta keys (`fleet.project`, `fleet.env`, ...).
//! - `fields`: the `fleet.fields` label, a digest per spec field, so a plan can say which
//!   fields changed.
//! - `names`: container names, registration IDs, the lock's and ledger's keys and files, the
//!   image records, fleet's directory on each host.
//! - `checks`: the Consul check definition of an instance and its ID.

pub mod checks;
pub mod fields;
pub mod labels;
pub mod names;
