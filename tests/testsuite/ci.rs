//! fleet as a CI step (docs/ci.md), run as a CI runner runs it: no TTY, a fresh HOME, the
//! environment cleared down to what a workflow sets (the runner's variables, the deploy key and
//! registry password from the CI's secrets), host keys pinned by a committed known_hosts that
//! `deploy/ssh_config` names, never `accept-new`. The steps are docs/ci.md's: validate, plan as
//! Markdown into the step summary with `--detailed-exitcode`, deploy `--yes --json` into an
//! artifact, then a plan that must find nothing to do.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::Testbed;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A checkout of a repository that deploys with fleet, and the runner around it.
struct Runner {
    _tmp: tempfile::TempDir,
    /// `$GITHUB_WORKSPACE`: the checkout.
    workspace: PathBuf,
    /// `$HOME`, empty at the start.
    home: PathBuf,
    /// `$GITHUB_STEP_SUMMARY`.
    summary: PathBuf,
    /// The deploy key, written from a secret by the workflow (mode 600).
    key: PathBuf,
    project: String,
    tb: Testbed,
}

impl Runner {
    fn new(tb: Testbed) -> Runner {
        let tmp = tempfile::tempdir().unwrap();
        let workspace = tmp.path().join("work/shop");
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/hello"),
            &workspace,
        );
        std::fs::copy("/bin/busybox", workspace.join("app/busybox")).unwrap();
        let project = format!("fci{}", std::process::id());
        let toml = std::fs::read_to_string(workspace.join("fleet.toml"))
            .unwrap()
            .replacen("name = \"hello\"", &format!("name = \"{project}\""), 1)
            .replace("hosts = [\"h1\", \"h2\", \"h3\"]", "hosts = [\"h1\"]")
            .replace("interval = \"2s\"", "interval = \"1s\"");
        std::fs::write(workspace.join("fleet.toml"), toml).unwrap();
        // Committed next to the manifest: the hosts' keys and the ssh settings for CI.
        std::fs::create_dir_all(workspace.join("deploy")).unwrap();
        std::fs::copy(tb.known_hosts(), workspace.join("deploy/known_hosts")).unwrap();
        std::fs::write(
            workspace.join("deploy/ssh_config"),
            "Host 10.200.*\n  User root\n  IdentityFile ${FLEET_DEPLOY_KEY_FILE}\n  IdentitiesOnly yes\n  \
             UserKnownHostsFile ${GITHUB_WORKSPACE}/deploy/known_hosts\n  GlobalKnownHostsFile /dev/null\n  \
             StrictHostKeyChecking yes\n  BatchMode yes\n",
        )
        .unwrap();
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let runner_temp = tmp.path().join("_temp");
        std::fs::create_dir_all(&runner_temp).unwrap();
        let key = runner_temp.join("deploy_key");
        std::fs::copy(tb.identity_file(), &key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let summary = runner_temp.join("step_summary.md");
        std::fs::write(&summary, "").unwrap();
        Runner {
            _tmp: tmp,
            workspace,
            home,
            summary,
            key,
            project,
            tb,
        }
    }

    /// One workflow step: `bash -c SCRIPT` in the checkout, with nothing on stdin and only the
    /// environment a runner and the workflow give it.
    fn step(&self, script: &str) -> Output {
        let fleet_dir = Path::new(env!("CARGO_BIN_EXE_fleet")).parent().unwrap();
        let path = format!("{}:/usr/local/bin:/usr/bin:/bin", fleet_dir.display());
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", script])
            .current_dir(&self.workspace)
            .env_clear()
            .env("PATH", path)
            .env("HOME", &self.home)
            .env("CI", "true")
            .env("GITHUB_ACTIONS", "true")
            .env("GITHUB_WORKSPACE", &self.workspace)
            .env("GITHUB_SERVER_URL", "https://github.example")
            .env("GITHUB_REPOSITORY", "acme/shop")
            .env("GITHUB_RUN_ID", "4242")
            .env("GITHUB_STEP_SUMMARY", &self.summary)
            // The workflow's `env:` from secrets and repository settings.
            .env("FLEET_DEPLOY_KEY_FILE", &self.key)
            .env("FLEET_SSH_CONFIG", "deploy/ssh_config")
            .env("FLEET_REGISTRY_USER", &self.tb.registry_user)
            .env("FLEET_REGISTRY_PASSWORD", &self.tb.registry_password)
            // A job's processes end with it: no SSH master is kept for a next command.
            .env("FLEET_SSH_PERSIST", "0")
            .stdin(Stdio::null())
            .output()
            .expect("bash runs")
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.step("fleet destroy production --yes");
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn e2e_plan_on_a_pull_request_and_deploy_on_main_as_a_ci_runner_does() {
    let Some(tb) =
        Testbed::get("e2e_plan_on_a_pull_request_and_deploy_on_main_as_a_ci_runner_does")
    else {
        return;
    };
    let password = tb.registry_password.clone();
    let r = Runner::new(tb);

    // Pull request: validate, then plan with --detailed-exitcode; the Markdown goes into the
    // step summary and the exit code is kept (2: changes), as docs/ci.md's step does.
    let o = r.step("fleet validate production");
    assert!(o.status.success(), "{}", text(&o));
    let o = r.step(
        "set +e; fleet plan production --detailed-exitcode --format markdown > plan.md; code=$?; set -e\n\
         cat plan.md >> \"$GITHUB_STEP_SUMMARY\"\n\
         exit $code",
    );
    assert_eq!(o.status.code(), Some(2), "changes to make: {}", text(&o));
    let md = std::fs::read_to_string(&r.summary).unwrap();
    assert!(
        md.contains(&format!("### fleet plan: `{}` / `production`", r.project)),
        "{md}"
    );
    assert!(md.contains("**Plan: 1 to create, 0 to replace"), "{md}");
    assert!(md.contains("```diff\n+ hello#1"), "{md}");
    assert!(
        !md.contains(&password),
        "the registry password leaked into the summary"
    );

    // Main branch: deploy with --yes, the JSON report kept as an artifact.
    let o = r.step("fleet deploy production --yes --json > deploy-report.json");
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.workspace.join("deploy-report.json")).unwrap())
            .expect("the artifact is JSON");
    assert_eq!(report["ok"], true, "{report:#}");

    // Nothing on the terminal side: no colour codes, no progress bar frames in a CI log.
    for s in [&o.stdout, &o.stderr] {
        assert!(
            !s.contains(&0x1b),
            "an escape sequence in CI output: {}",
            text(&o)
        );
    }

    // The release names the job that made it; a second plan finds nothing to do (exit 0).
    let o = r.step("fleet releases production --json");
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("https://github.example/acme/shop/actions/runs/4242"),
        "{}",
        text(&o)
    );
    let o = r.step("fleet plan production --detailed-exitcode");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Nothing was written to the runner's HOME (no state file, no known_hosts entry added).
    let left: Vec<_> = walk(&r.home);
    assert!(left.is_empty(), "fleet left files in HOME: {left:?}");
}

#[test]
fn e2e_an_unknown_host_key_fails_the_ci_step_and_trusts_nothing() {
    let Some(tb) = Testbed::get("e2e_an_unknown_host_key_fails_the_ci_step_and_trusts_nothing")
    else {
        return;
    };
    let r = Runner::new(tb);
    // The committed known_hosts lacks h1's key: strict checking must refuse, never add it.
    std::fs::write(r.workspace.join("deploy/known_hosts"), "").unwrap();
    let o = r.step("fleet plan production --detailed-exitcode --format markdown");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("unknown-host-key"), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(r.workspace.join("deploy/known_hosts")).unwrap(),
        "",
        "a host key was added to the pinned file"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
