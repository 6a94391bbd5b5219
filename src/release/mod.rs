//! What makes a deploy a release, around apply: the deploy lock that lets one deploy at a time
//! change an environment (`lock/`: in Consul, `consul.rs`, or a file on the first host,
//! `host_file.rs`; `lock::Store` opens the lock and ledger of an environment), the ledger that
//! records every release with its versions and config (`ledger`), and the pre/post deploy hooks
//! (`hooks`). `crate::pipeline` wires them around `crate::apply`; the CLI and `operate` use them
//! for rollback, releases, lock and the lifecycle commands. apply never does.

pub mod hooks;
pub mod ledger;
pub mod lock;
