//! The testbed itself (issue 2): hosts are isolated from each other, reachable over SSH with
//! host-key checking, and share one registry that insists on credentials.
//! Needs `cargo xtask testbed up` (skips with a message otherwise; `cargo xtask ci` sets it up).
//! That `testbed down` leaves nothing behind is checked by `cargo xtask ci` after down, since it
//! cannot run while the testbed is up for the other tests.
use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use support::{Testbed, run_ok, unique};

#[test]
fn ssh_h2_docker_info_answers_from_h2s_own_engine() {
    let Some(tb) = Testbed::get("ssh_h2_docker_info_answers_from_h2s_own_engine") else {
        return;
    };
    let info = tb.ssh_ok(
        "h2",
        "docker info --format '{{.Name}}|{{.DockerRootDir}}|{{.ID}}'",
    );
    let parts: Vec<&str> = info.split('|').collect();
    assert_eq!(parts[0], "h2", "engine name: {info}");
    assert_eq!(parts[1], tb.dir.join("h2/docker").display().to_string());
    // A different engine from h1's.
    let h1 = tb.ssh_ok("h1", "docker info --format '{{.ID}}'");
    assert_ne!(parts[2], h1, "h1 and h2 share an engine");
    // Host-key checking is on: the same connection without the testbed's known_hosts fails.
    let cfg = run_ok(
        std::process::Command::new("ssh")
            .arg("-G")
            .arg("-F")
            .arg(tb.ssh_config())
            .arg("h2"),
    );
    assert!(cfg.contains("stricthostkeychecking true"), "{cfg}");
    let out = std::process::Command::new("ssh")
        .arg("-F")
        .arg(tb.ssh_config())
        .args(["-o", "UserKnownHostsFile=/dev/null", "h2", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "ssh accepted an unknown host key");
}

#[test]
fn container_on_h1_is_not_visible_on_h2() {
    let Some(tb) = Testbed::get("container_on_h1_is_not_visible_on_h2") else {
        return;
    };
    let image = tb.push_unique_image("isolation");
    let name = format!("tb-isolation-{}", unique());
    tb.ssh_ok("h1", &tb.with_login(&format!("pull -q {image}")));
    let id = tb.ssh_ok("h1", &format!("docker run -d --name {name} {image}"));
    let guard = Cleanup(|| {
        tb.ssh(
            "h1",
            &format!("docker rm -f {name}; docker image rm {image}"),
        );
    });
    let on_h1 = tb.ssh_ok(
        "h1",
        &format!("docker ps -q --no-trunc --filter name={name}"),
    );
    assert_eq!(on_h1, id, "not running on h1");
    let on_h2 = tb.ssh_ok(
        "h2",
        &format!("docker ps -aq --no-trunc --filter name={name}"),
    );
    assert_eq!(on_h2, "", "the h1 container is visible on h2");
    assert!(
        !tb.ssh("h2", &format!("docker inspect {id}"))
            .status
            .success()
    );
    drop(guard);
}

#[test]
fn image_pushed_with_credentials_is_pulled_by_h3() {
    let Some(tb) = Testbed::get("image_pushed_with_credentials_is_pulled_by_h3") else {
        return;
    };
    let image = tb.push_unique_image("pull");
    let guard = Cleanup(|| {
        tb.ssh("h3", &format!("docker image rm {image}"));
    });
    assert!(
        !tb.ssh("h3", &format!("docker image inspect {image}"))
            .status
            .success(),
        "h3 already has the fresh image"
    );
    // Without credentials the registry refuses the pull...
    let anon = tb.ssh(
        "h3",
        &format!(
            "c=$(mktemp -d); DOCKER_CONFIG=$c docker pull -q {image}; r=$?; rm -rf $c; exit $r"
        ),
    );
    assert!(!anon.status.success(), "anonymous pull worked");
    // ...with them, h3 gets exactly what was pushed.
    tb.ssh_ok("h3", &tb.with_login(&format!("pull -q {image}")));
    let cfg = tempfile::tempdir().unwrap();
    let local = run_ok(
        tb.local_docker(cfg.path())
            .args(["image", "inspect", "-f", "{{.Id}}", &image]),
    );
    let remote = tb.ssh_ok(
        "h3",
        &format!("docker image inspect -f '{{{{.Id}}}}' {image}"),
    );
    assert_eq!(local, remote);
    drop(guard);
}

#[test]
fn unauthenticated_push_is_refused() {
    let Some(tb) = Testbed::get("unauthenticated_push_is_refused") else {
        return;
    };
    // The registry API itself: starting a blob upload without credentials is a 401 challenge.
    let mut s = TcpStream::connect(tb.registry.as_str()).unwrap();
    write!(
        s,
        "POST /v2/fleet-test/anon/blobs/uploads/ HTTP/1.0\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
        tb.registry
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.0 401") || reply.starts_with("HTTP/1.1 401"),
        "{reply}"
    );
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{reply}"
    );

    // And a real `docker push` from a client that never logged in.
    let cfg = tempfile::tempdir().unwrap();
    let logged_in = tempfile::tempdir().unwrap();
    let image = tb.push_unique_image("anon-src");
    let target = format!("{}/fleet-test/anon:{}", tb.registry, unique());
    tb.local_login(logged_in.path());
    run_ok(tb.local_docker(cfg.path()).args(["tag", &image, &target]));
    let out = tb
        .local_docker(cfg.path())
        .args(["push", &target])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(!out.status.success(), "unauthenticated push succeeded");
    assert!(
        err.contains("no basic auth credentials") || err.contains("unauthorized"),
        "unexpected refusal: {err}"
    );
    // Nothing arrived: the tag is unknown to the registry even for an authenticated client.
    let pull = tb
        .local_docker(logged_in.path())
        .args(["manifest", "inspect", "--insecure", &target])
        .output()
        .unwrap();
    assert!(
        !pull.status.success(),
        "the refused push left a manifest behind"
    );
    let _ = tb
        .local_docker(cfg.path())
        .args(["image", "rm", &target])
        .output();
}

/// Runs a closure on drop, so a failing assertion still cleans the hosts up.
struct Cleanup<F: FnMut()>(F);
impl<F: FnMut()> Drop for Cleanup<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}
