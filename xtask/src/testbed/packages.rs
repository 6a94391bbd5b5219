//! What the testbed needs on this machine: root, and the Debian packages it runs.

use super::*;

/// Debian packages the testbed needs, each with a binary that proves it is installed.
pub(super) const PACKAGES: &[(&str, &str)] = &[
    ("docker.io", "/usr/sbin/dockerd"),
    ("docker-registry", "/usr/bin/docker-registry"),
    ("openssh-server", "/usr/sbin/sshd"),
    ("busybox-static", "/bin/busybox"),
    ("iproute2", "/usr/sbin/ip"),
    // tests/testsuite/faults.rs cuts a host's link with a DROP chain (docker.io depends on it anyway).
    ("iptables", "/usr/sbin/iptables"),
    ("apache2-utils", "/usr/bin/htpasswd"),
    // Building fleet itself: TLS to registries through the system's OpenSSL.
    ("libssl-dev", "/usr/include/openssl/ssl.h"),
    ("pkg-config", "/usr/bin/pkg-config"),
    // The edge's and the accessory's test images are made from Debian's binaries.
    ("caddy", "/usr/bin/caddy"),
    ("redis-server", "/usr/bin/redis-server"),
];

pub fn ensure_root() -> Result<()> {
    if sh::output("id -u")? != "0" {
        bail!(
            "the testbed needs root (network namespaces, mounts, dockerd); run it as root, e.g. `sudo -E cargo xtask testbed up`"
        );
    }
    Ok(())
}

/// Installs missing Debian packages with apt when possible, else says exactly what is missing.
pub(super) fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, bin)| !Path::new(bin).exists())
        .map(|(p, _)| *p)
        .collect();
    // `docker` (the client) also comes with docker.io.
    let mut missing = missing;
    if !sh::ok("command -v docker") && !missing.contains(&"docker.io") {
        missing.push("docker.io");
    }
    // manifests/koa's packages are installed with npm (the node base image is this machine's
    // node): Debian's where the machine has none.
    if !sh::ok("command -v npm") {
        missing.extend(["nodejs", "npm"]);
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !sh::ok("command -v apt-get") {
        bail!("missing Debian packages: {list}; no apt-get here, install them by other means");
    }
    eprintln!("testbed: installing missing packages: {list}");
    let install =
        format!("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {list}");
    if !sh::ok(&install) {
        sh::run("apt-get update -q")?;
        sh::run(&install).with_context(|| format!("apt-get install {list} failed"))?;
    }
    Ok(())
}
