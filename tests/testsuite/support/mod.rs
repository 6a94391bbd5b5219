//! Shared helpers for end-to-end tests against the testbed (`cargo xtask testbed up`).
//!
//! Start each test with `let Some(tb) = support::Testbed::get("my_test") else { return };`
//! (it shares the hosts with the other tests), or with `Testbed::exclusive` when the test cuts a
//! link, kills a daemon or stops an sshd (see `claim`).
//!
//! The testbed dir is `$FLEET_TESTBED`, else `<workspace>/target/testbed`. When FLEET_TESTBED is
//! set (as `cargo xtask ci` does), a missing testbed FAILS the test; when it is not set and the
//! default dir holds no running testbed, the test prints why it is skipped and passes.
#![allow(dead_code)]

pub mod claim;
pub mod koa;
pub mod operate;
pub mod project;

pub use claim::Claim;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The registry address everyone uses (push from outside, pull on hosts, image references).
pub const REGISTRY: &str = "10.200.1.1:5000";

#[derive(Debug, Clone)]
pub struct Host {
    /// `h1`, ... (also the ssh_config alias and the host's hostname / engine name).
    pub name: String,
    /// `10.200.N.2`.
    pub address: String,
}

#[derive(Debug, Clone)]
pub struct Testbed {
    pub dir: PathBuf,
    pub hosts: Vec<Host>,
    pub registry: String,
    pub registry_user: String,
    pub registry_password: String,
    /// This test's claim on the hosts, held while any clone of this lives.
    pub claim: Claim,
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Testbed {
    /// The running testbed, or `None` (after printing a skip message naming `test`) when none is
    /// set up and FLEET_TESTBED is unset. Panics when FLEET_TESTBED is set but not usable.
    pub fn get(test: &str) -> Option<Testbed> {
        Self::claimed(test, Claim::shared)
    }

    /// As `get`, with the hosts to this test alone (for tests that disrupt what others use).
    pub fn exclusive(test: &str) -> Option<Testbed> {
        Self::claimed(test, Claim::exclusive)
    }

    fn claimed(test: &str, claim: fn() -> Claim) -> Option<Testbed> {
        let explicit = std::env::var_os("FLEET_TESTBED").map(PathBuf::from);
        let dir = explicit
            .clone()
            .unwrap_or_else(|| workspace().join("target/testbed"));
        match Self::load(&dir, claim) {
            Ok(tb) => Some(tb),
            Err(why) if explicit.is_some() => {
                panic!(
                    "FLEET_TESTBED={} is not a running testbed: {why}",
                    dir.display()
                )
            }
            Err(why) => {
                // Straight to the stderr handle: libtest captures eprintln! of passing tests, and
                // a skip must be visible.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {test}: no testbed ({why}); run `cargo xtask testbed up` or set FLEET_TESTBED"
                );
                None
            }
        }
    }

    /// Reads a testbed dir written by `cargo xtask testbed up`, then takes `claim`.
    fn load(dir: &Path, claim: fn() -> Claim) -> Result<Testbed, String> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| format!("{}: {e}", dir.join(name).display()))
        };
        let count: u32 = read("hosts")?
            .trim()
            .parse()
            .map_err(|_| "bad hosts file".to_string())?;
        let env = read("registry.env")?;
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
                .ok_or_else(|| format!("registry.env lacks {k}"))
        };
        Ok(Testbed {
            dir: dir.canonicalize().map_err(|e| e.to_string())?,
            hosts: (1..=count)
                .map(|n| Host {
                    name: format!("h{n}"),
                    address: format!("10.200.{n}.2"),
                })
                .collect(),
            registry: get("FLEET_REGISTRY")?,
            registry_user: get("FLEET_REGISTRY_USER")?,
            registry_password: get("FLEET_REGISTRY_PASSWORD")?,
            // Last: a testbed that is not there is not waited for.
            claim: claim(),
        })
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("the testbed has no host {name}"))
    }
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }
    pub fn identity_file(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }
    /// Manifest fragment `[hosts.hN] address/user/port/identity_file`.
    pub fn hosts_toml(&self) -> PathBuf {
        self.dir.join("hosts.toml")
    }
    /// Host N's Docker socket, reachable from outside the namespace too.
    pub fn docker_socket(&self, host: &str) -> PathBuf {
        self.dir.join(host).join("run/docker.sock")
    }

    /// `ssh -F <ssh_config> HOST CMD` (CMD runs under the remote user's shell).
    pub fn ssh(&self, host: &str, cmd: &str) -> Output {
        Command::new("ssh")
            .arg("-F")
            .arg(self.ssh_config())
            .arg(host)
            .arg(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run ssh")
    }

    /// Like `ssh`, but panics unless the command succeeds; returns trimmed stdout.
    pub fn ssh_ok(&self, host: &str, cmd: &str) -> String {
        let out = self.ssh(host, cmd);
        assert!(
            out.status.success(),
            "ssh {host} {cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A `docker` command against the local engine (/run/docker.sock, what `fleet build` uses)
    /// with a client config dir of the caller's choice (so tests never touch ~/.docker).
    pub fn local_docker(&self, docker_config: &Path) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_CONFIG", docker_config)
            .env("DOCKER_BUILDKIT", "0")
            .args(["-H", "unix:///run/docker.sock"]);
        c
    }

    /// Logs `docker_config` in to the registry (local client).
    pub fn local_login(&self, docker_config: &Path) {
        let mut child = self
            .local_docker(docker_config)
            .args([
                "login",
                "-u",
                &self.registry_user,
                "--password-stdin",
                &self.registry,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("docker login");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(self.registry_password.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "docker login failed");
    }

    /// Shell snippet for a host: run `docker ARGS` logged in with the registry credentials through
    /// a throwaway client config (hosts keep no credentials around).
    pub fn with_login(&self, docker_args: &str) -> String {
        format!(
            "c=$(mktemp -d); printf %s '{}' | DOCKER_CONFIG=$c docker login -u '{}' --password-stdin {} >/dev/null 2>&1 && DOCKER_CONFIG=$c docker {docker_args}; r=$?; rm -rf $c; exit $r",
            self.registry_password, self.registry_user, self.registry
        )
    }

    /// Builds (on the local engine) and pushes a tiny unique image `REGISTRY/fleet-test/NAME:TAG`
    /// (busybox + a random stamp; entrypoint `busybox sleep 3600`) and returns its reference.
    pub fn push_unique_image(&self, name: &str) -> String {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::copy("/bin/busybox", ctx.path().join("busybox")).unwrap();
        std::fs::write(ctx.path().join("stamp"), unique()).unwrap();
        std::fs::write(
            ctx.path().join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY stamp /stamp\nENTRYPOINT [\"/bin/busybox\", \"sleep\", \"3600\"]\n",
        )
        .unwrap();
        let image = format!("{}/fleet-test/{name}:{}", self.registry, unique());
        let cfg = tempfile::tempdir().unwrap();
        run_ok(
            self.local_docker(cfg.path())
                .args(["build", "-q", "-t", &image])
                .arg(ctx.path()),
        );
        self.local_login(cfg.path());
        run_ok(self.local_docker(cfg.path()).args(["push", "-q", &image]));
        image
    }

    /// The real `fleet` binary, with the environment that points it at this testbed:
    /// FLEET_SSH_CONFIG (known_hosts, key), FLEET_REGISTRY*, FLEET_TESTBED.
    /// Pull `image` on a host's engine with the registry credentials.
    pub async fn pull(&self, docker: &bollard::Docker, image: &str) {
        use bollard::query_parameters::CreateImageOptions;
        use futures_util::TryStreamExt;
        let creds = bollard::auth::DockerCredentials {
            username: Some(self.registry_user.clone()),
            password: Some(self.registry_password.clone()),
            serveraddress: Some(self.registry.clone()),
            ..Default::default()
        };
        docker
            .create_image(
                Some(CreateImageOptions {
                    from_image: Some(image.to_string()),
                    ..Default::default()
                }),
                None,
                Some(creds),
            )
            .try_collect::<Vec<_>>()
            .await
            .unwrap_or_else(|e| panic!("pull {image}: {e}"));
    }

    /// Removes everything of `project` from every host: its containers, Consul registrations
    /// and KV, its host files under /var/lib/fleet, and its images (`<registry>/<project>/*`).
    /// For cleanup guards: errors are ignored.
    pub fn forget_project(&self, project: &str) {
        for h in &self.hosts {
            let _ = self.ssh(
                &h.name,
                &format!(
                    "ids=$(docker ps -aq --filter label=fleet.project={p}); [ -z \"$ids\" ] || docker rm -f $ids >/dev/null; \
                     for s in $(curl -s http://127.0.0.1:8500/v1/agent/services | grep -o '\"{p}-[^\"]*\"' | tr -d '\"' | sort -u); do \
                       curl -s -X PUT http://127.0.0.1:8500/v1/agent/service/deregister/$s >/dev/null; done; \
                     curl -s -X DELETE 'http://127.0.0.1:8500/v1/kv/{p}/?recurse' >/dev/null; \
                     rm -f /var/lib/fleet/{p}.*; \
                     imgs=$(docker images --format '{{{{.Repository}}}}:{{{{.Tag}}}}' | grep '^{r}/{p}/'); [ -z \"$imgs\" ] || docker rmi $imgs >/dev/null 2>&1; true",
                    p = project,
                    r = self.registry,
                ),
            );
        }
    }

    pub fn fleet(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fleet"));
        c.env("FLEET_SSH_CONFIG", self.ssh_config())
            .env("FLEET_TESTBED", &self.dir)
            .env("FLEET_REGISTRY", &self.registry)
            .env("FLEET_REGISTRY_USER", &self.registry_user)
            .env("FLEET_REGISTRY_PASSWORD", &self.registry_password)
            .env("NO_COLOR", "1")
            // Each command makes its own SSH connections: a master kept from an earlier test
            // would hide a host whose sshd a test stopped. tests/testsuite/plan.rs tests keeping them.
            .env("FLEET_SSH_PERSIST", "0");
        c
    }
}

/// Runs a command and panics with its output unless it succeeds; returns trimmed stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A short string unique to this call (pid + time + counter), for names and tags.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t{}-{:x}-{}",
        std::process::id(),
        t & 0xffff_ffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes an executable script to `path` and waits until it can be run: another test's thread
/// that forks while the file is open for writing gives its child a copy of the descriptor, and
/// until that child execs, running the file fails with ETXTBSY ("Text file busy").
pub fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    for _ in 0..200 {
        match Command::new(path).stdin(Stdio::null()).output() {
            Err(e) if e.raw_os_error() == Some(26) => std::thread::sleep(Duration::from_millis(10)),
            _ => return,
        }
    }
    panic!("{} stayed busy (ETXTBSY) for 2 s", path.display());
}

/// A test host's link, cut as a cable is: every packet in or out of its veth dropped silently
/// (iptables), routes untouched. Restored when dropped.
pub struct LinkCut {
    veth: String,
    chain: String,
}

impl LinkCut {
    pub fn cut(host: &str) -> LinkCut {
        let veth = format!("fleet-{host}");
        let chain = format!("FLEET-CUT-{host}");
        let script = format!(
            "iptables -N {chain} && iptables -A {chain} -j DROP && \
             iptables -I INPUT -i {veth} -j {chain} && iptables -I OUTPUT -o {veth} -j {chain} && \
             iptables -I FORWARD -i {veth} -j {chain} && iptables -I FORWARD -o {veth} -j {chain}"
        );
        let o = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(
            o.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        LinkCut { veth, chain }
    }
}

impl Drop for LinkCut {
    fn drop(&mut self) {
        let (v, c) = (&self.veth, &self.chain);
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "iptables -D INPUT -i {v} -j {c}; iptables -D OUTPUT -o {v} -j {c}; \
                 iptables -D FORWARD -i {v} -j {c}; iptables -D FORWARD -o {v} -j {c}; \
                 iptables -F {c}; iptables -X {c}"
            ))
            .status();
    }
}

/// A `fleet` command running in the background, its progress lines (stderr) read as they come.
pub struct Run {
    pub child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<()>,
}

impl Run {
    pub fn start(mut cmd: Command) -> Run {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let sink = lines.clone();
        let stderr = std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push((Instant::now(), l));
            }
        });
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        Run {
            child,
            lines,
            stdout,
            stderr,
        }
    }

    /// When the first line matching `pred` came; waits for it (panics after `within`).
    pub fn wait_line(&mut self, within: Duration, pred: impl Fn(&str) -> bool) -> Instant {
        let t0 = Instant::now();
        loop {
            if let Some((t, _)) = self.lines.lock().unwrap().iter().find(|(_, l)| pred(l)) {
                return *t;
            }
            let exited = self.child.try_wait().unwrap().is_some();
            assert!(
                !exited && t0.elapsed() < within,
                "no such progress line (exited: {exited}):\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn text(&self) -> String {
        let l = self.lines.lock().unwrap();
        l.iter()
            .map(|(_, s)| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for the exit (killing it after `within`): status, stdout, stderr lines.
    pub fn finish(mut self, within: Duration) -> (ExitStatus, String, Vec<(Instant, String)>) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed() > within {
                let _ = self.child.kill();
                panic!("fleet still ran after {within:?}:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = self.stdout.join().unwrap();
        self.stderr.join().unwrap();
        let lines = std::mem::take(&mut *self.lines.lock().unwrap());
        (status, out, lines)
    }
}
