//! Where everything of one testbed lives. All state is under DIR, except the network namespaces
//! `hN` and the outer veth ends `fleet-hN` (global by nature) and the marker file below.
use std::path::{Path, PathBuf};

/// Marks which DIR owns the (global) namespaces `h1..hN`, so a second testbed in another DIR is
/// refused instead of fighting over them.
pub const MARKER: &str = "/run/fleet-testbed.dir";

/// The registry address every party uses: pushes from the outer namespace, pulls on every host
/// (host N reaches 10.200.1.1 through its default route into the outer namespace) and the image
/// references in manifests.
pub const REGISTRY: &str = "10.200.1.1:5000";

/// What every engine (hosts and local) trusts over plain HTTP.
pub const INSECURE: &str = "10.200.0.0/16";

#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    pub workspace: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path, workspace: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.canonicalize()?,
            workspace: workspace.to_path_buf(),
        })
    }

    /// Like `new`, but does not create DIR (for `status`/`down` of a missing testbed).
    pub fn existing(dir: &Path, workspace: &Path) -> Self {
        Self {
            dir: dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()),
            workspace: workspace.to_path_buf(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Point a command (fleet, cargo test, a bench) at this testbed: `FLEET_TESTBED`,
    /// `FLEET_SSH_CONFIG` and the registry credentials of `registry.env`.
    pub fn point_at(&self, cmd: &mut std::process::Command) -> anyhow::Result<()> {
        let env = std::fs::read_to_string(self.path("registry.env"))?;
        cmd.env("FLEET_TESTBED", &self.dir)
            .env("FLEET_SSH_CONFIG", self.path("ssh_config"));
        for line in env.lines() {
            if let Some((k, v)) = line.split_once('=') {
                cmd.env(k, v);
            }
        }
        Ok(())
    }
    pub fn d(&self) -> String {
        self.dir.display().to_string()
    }
    pub fn host_dir(&self, n: u32) -> PathBuf {
        self.dir.join(format!("h{n}"))
    }
    /// Bind-mounted over `/run` inside host N: the host's sockets and pid files, also readable
    /// from outside at this path.
    pub fn run_dir(&self, n: u32) -> PathBuf {
        self.host_dir(n).join("run")
    }
    pub fn host_file(&self, n: u32, name: &str) -> PathBuf {
        self.host_dir(n).join(name)
    }

    /// Host numbers that have a directory under DIR (what an earlier `up` created).
    pub fn known_hosts_numbers(&self) -> Vec<u32> {
        let mut v: Vec<u32> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(|e| {
                    let name = e.ok()?.file_name().into_string().ok()?;
                    name.strip_prefix('h')?.parse().ok()
                })
                .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

pub fn address(n: u32) -> String {
    format!("10.200.{n}.2")
}
pub fn gateway(n: u32) -> String {
    format!("10.200.{n}.1")
}
/// Host N's Docker bridge gateway (dockerd runs with `--bip 10.210.N.1/24`): where containers
/// reach the host's Consul agent (HTTP :8500, DNS :53).
pub fn bridge_gateway(n: u32) -> String {
    format!("10.210.{n}.1")
}
pub fn netns(n: u32) -> String {
    format!("h{n}")
}
pub fn veth(n: u32) -> String {
    format!("fleet-h{n}")
}

/// Network namespaces named `h<number>` that exist now.
pub fn existing_netns() -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix('h')?.parse().ok()
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
