//! The one plain-HTTP client of a fleet process, for what is reached over SSH forwards:
//! Consul agents and fleet's own health probes.
//!
//! Built once and shared (a clone is a handle): reqwest with native-tls loads the system's CA
//! bundle for every client it builds, ~0.1 s of CPU each here, although these addresses are
//! plain `http://`. The registry client, which needs TLS settings of its own, builds its own.

use std::sync::OnceLock;
use std::time::Duration;

pub fn plain() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .expect("a client with default TLS settings builds")
        })
        .clone()
}
