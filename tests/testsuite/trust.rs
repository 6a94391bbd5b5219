//! Local trust: what fleet hands to ssh and which SSH master it reuses.
//!
//! - a host `address` (or `user`) that ssh would read as an option is a manifest error at its
//!   line, and no ssh runs;
//! - a kept SSH master is reused only for the machine ssh resolves the destination to: the same
//!   alias with a changed `HostName` gets a master of its own.

use crate::support;

use std::process::Command;
use std::time::Duration;

use fleet::desired::HostTarget;
use fleet::host::{ConnectOptions, HostSession};
use support::Testbed;

fn fleet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fleet"));
    c.env_remove("FLEET_FILE")
        .env("NO_COLOR", "1")
        .env("FLEET_SSH_PERSIST", "0");
    c
}

/// `address = "-oProxyCommand=..."` (and the same in `user`): `fleet validate` and `fleet plan`
/// refuse the manifest with a diagnostic at the value, and the ProxyCommand never runs.
#[test]
fn an_option_for_an_address_or_user_is_a_manifest_error() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("proxy-command-ran");
    let manifest = dir.path().join("fleet.toml");
    let cases = [
        (
            format!("address = \"-oProxyCommand=touch {}\"", marker.display()),
            "the address starts with `-`",
        ),
        (
            format!(
                "address = \"10.0.0.9\"\nuser = \"-oProxyCommand=touch {}\"",
                marker.display()
            ),
            "the user starts with `-`",
        ),
        (
            "address = \"10.0.0.9 -p 2222\"".to_string(),
            "the address contains ' '",
        ),
    ];
    for (host, message) in cases {
        std::fs::write(
            &manifest,
            format!(
                "[project]\nname = \"trust\"\n\n[hosts.web1]\n{host}\n\n[apps.api]\nimage = \"nginx:1.27\"\n\n[environments.production]\nhosts = [\"web1\"]\n"
            ),
        )
        .unwrap();
        for args in [&["validate"][..], &["plan", "production"][..]] {
            let out = fleet()
                .arg("-f")
                .arg(&manifest)
                .args(args)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} accepted {host}: {err}");
            assert!(err.contains(message), "{args:?} {host}: {err}");
            // The diagnostic points at the value, on line 5 or 6 of the manifest.
            let line = if host.contains("user") { 6 } else { 5 };
            assert!(
                err.contains(&format!("fleet.toml:{line}:")),
                "{args:?} {host}: no diagnostic at line {line}: {err}"
            );
            assert!(!marker.exists(), "ssh ran the ProxyCommand");
        }
    }
}

/// The testbed host (`hN`) whose sshd answered: each host's /run is its own.
async fn which_host(s: &HostSession, tb: &Testbed) -> String {
    let pid = s.run_sh("cat /run/sshd.pid").await.expect("run_sh");
    tb.hosts
        .iter()
        .find(|h| {
            std::fs::read_to_string(tb.dir.join(&h.name).join("run/sshd.pid"))
                .is_ok_and(|p| p.trim() == pid.stdout.trim())
        })
        .map(|h| h.name.clone())
        .unwrap_or_else(|| format!("no testbed host has sshd pid {}", pid.stdout.trim()))
}

/// An ssh_config alias `box` whose `HostName` is `ip`, with the testbed's key and known hosts.
fn alias_config(tb: &Testbed, ip: &str) -> String {
    format!(
        "Host box\n  HostName {ip}\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
         UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  LogLevel ERROR\n",
        tb.identity_file().display(),
        tb.known_hosts().display()
    )
}

/// A kept master follows where the alias leads: after `HostName` changes from h1 to h2 in the
/// same config file, the next connection reaches h2 (before, it reused h1's master).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_host_name_does_not_reuse_the_old_master() {
    let Some(tb) = Testbed::get("a_changed_host_name_does_not_reuse_the_old_master") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ssh_config");
    let target = HostTarget {
        name: "box".into(),
        address: "box".into(),
        user: None,
        port: None,
        identity_file: None,
        docker_socket: "/run/docker.sock".into(),
        roles: vec![],
    };
    let opts = ConnectOptions {
        ssh_config: Some(config.clone()),
        connect_timeout: Duration::from_secs(5),
        // Kept masters, gone soon after the test.
        persist: Some(Duration::from_secs(3)),
        ..ConnectOptions::default()
    };
    let h1 = &tb.host("h1").address;
    let h2 = &tb.host("h2").address;
    std::fs::write(&config, alias_config(&tb, h1)).unwrap();
    let s = HostSession::connect(&target, &opts).await.expect("connect");
    assert_eq!(which_host(&s, &tb).await, "h1");
    s.close().await;
    // The same master again while nothing changed.
    let s = HostSession::connect(&target, &opts).await.expect("connect");
    assert_eq!(which_host(&s, &tb).await, "h1");
    s.close().await;
    std::fs::write(&config, alias_config(&tb, h2)).unwrap();
    let s = HostSession::connect(&target, &opts).await.expect("connect");
    assert_eq!(
        which_host(&s, &tb).await,
        "h2",
        "the master kept for the old HostName was reused"
    );
    s.close().await;
}
