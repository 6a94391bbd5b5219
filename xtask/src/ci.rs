//! `cargo xtask ci` (the test command README gives) and `cargo xtask demo`.
use crate::testbed::{self, image, layout::Layout};
use anyhow::{Result, bail};
use std::process::Command;

/// Testbed up + images, `cargo test --workspace` pointed at it, testbed down even when the tests
/// fail, then the "down leaves nothing behind" check (which cannot run inside `cargo test` while
/// the testbed is up). Returns the exit code: the tests', or 1 if down left something.
pub fn ci(l: &Layout, hosts: u32) -> Result<i32> {
    let started = std::time::Instant::now();
    let code = match testbed::up(l, hosts).and_then(|()| image::image(l)) {
        Ok(()) => run_tests(l)?,
        Err(e) => {
            eprintln!("ci: testbed up failed: {e:#}");
            1
        }
    };
    eprintln!("ci: tests exited with {code}; stopping the testbed");
    let down = testbed::down(l);
    let left = testbed::leftovers(l);
    let mut code = code;
    if let Err(e) = down {
        eprintln!("ci: FAILED: testbed down: {e:#}");
        code = code.max(1);
    }
    if left.is_empty() {
        println!("ci: after testbed down: no testbed process, namespace, veth or mount left");
    } else {
        eprintln!(
            "ci: FAILED: after testbed down these are left:\n  {}",
            left.join("\n  ")
        );
        code = code.max(1);
    }
    println!(
        "ci: {} in {:.0?}",
        if code == 0 { "passed" } else { "FAILED" },
        started.elapsed()
    );
    Ok(code)
}

fn run_tests(l: &Layout) -> Result<i32> {
    let env = std::fs::read_to_string(l.path("registry.env"))?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["test", "--workspace"])
        .current_dir(&l.workspace)
        .env("FLEET_TESTBED", &l.dir)
        .env("FLEET_SSH_CONFIG", l.path("ssh_config"));
    for line in env.lines() {
        if let Some((k, v)) = line.split_once('=') {
            cmd.env(k, v);
        }
    }
    crate::sh::interactive(&mut cmd)
}

/// For now (deploy does not exist yet): testbed up, the hello images pushed, and how to reach
/// everything by hand.
pub fn demo(l: &Layout) -> Result<()> {
    // Keep the size of a testbed that is already up (3 hosts otherwise).
    let hosts = std::fs::read_to_string(l.path("hosts"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(3);
    testbed::up(l, hosts)?;
    image::image(l)?;
    let d = l.d();
    let demo_name = "fleet-demo-hello";
    // Show a host running the image from the registry, the way fleet will do it over SSH.
    let env = std::fs::read_to_string(l.path("registry.env"))?;
    let get = |k: &str| {
        env.lines()
            .find_map(|x| x.strip_prefix(&format!("{k}=")))
            .unwrap_or_default()
            .to_string()
    };
    let script = format!(
        "c=$(mktemp -d) && printf %s {pw} | DOCKER_CONFIG=$c docker login -u {user} --password-stdin {reg} >/dev/null && \
         DOCKER_CONFIG=$c docker pull -q {reg}/{repo}:v1 >/dev/null; r=$?; rm -rf $c; [ $r = 0 ] || exit $r; \
         docker rm -f {demo_name} >/dev/null 2>&1; docker run -d --name {demo_name} -p 8080:8080 {reg}/{repo}:v1 >/dev/null",
        pw = crate::sh::q(get("FLEET_REGISTRY_PASSWORD")),
        user = crate::sh::q(get("FLEET_REGISTRY_USER")),
        reg = testbed::layout::REGISTRY,
        repo = image::REPO,
    );
    testbed::ssh_out(l, 1, &script)?;
    let url = "10.200.1.2:8080";
    if !crate::sh::wait_until(std::time::Duration::from_secs(10), || {
        testbed::probe::http_status(url, "/health") == Some(200)
    }) {
        bail!("the hello container on h1 does not answer at http://{url}/health");
    }
    println!(
        r#"
The testbed is up in {d}: hosts h1..h{hosts}, each its own sshd + Docker engine, one registry.
hello:v1 was built locally, pushed to {reg} and is running on h1 (container {demo_name}):

  curl http://{url}/                  # the page says "version: v1"
  ssh -F {d}/ssh_config h2 docker info
  set -a; . {d}/registry.env; set +a  # FLEET_REGISTRY, FLEET_REGISTRY_USER, FLEET_REGISTRY_PASSWORD
  cat {d}/README                      # everything the testbed wrote, and how to point fleet at it

`fleet deploy` is not implemented yet; once it is, this demo deploys manifests/hello with it.
Stop everything with: cargo xtask testbed down --dir {d}
"#,
        reg = testbed::layout::REGISTRY,
    );
    Ok(())
}
