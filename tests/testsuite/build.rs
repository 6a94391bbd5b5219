//! `fleet build` against the testbed: the local engine at /run/docker.sock and the registry at
//! 10.200.1.1:5000 (credentials in $FLEET_TESTBED/registry.env).
//!
//! These drive the core (`fleet::build::run`) with `BuildTarget`s made here, since the
//! manifest's `build_targets()` is another part's work; the CLI end to end comes with it.
//! Every test uses its own repository namespace, so they run in parallel and the registry's
//! own log can be read per test.
//!
//! Without a testbed (no `$FLEET_TESTBED/READY`) the tests say so and pass; with
//! `FLEET_REQUIRE_TESTBED=1` they fail instead.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use fleet::build::{self, BuildError, Options};
use fleet::desired::{BuildSpec, BuildTarget, RegistryTarget, SecretRef};
use fleet::registry::RegistryError;

use crate::support;

struct Testbed {
    dir: PathBuf,
    registry: String,
    user: String,
    password: String,
    /// The test's share of the testbed (the registry must not be stopped under it).
    _claim: support::Claim,
}

fn testbed() -> Option<Testbed> {
    let tb = support::Testbed::get("build")?;
    Some(Testbed {
        registry: tb.registry,
        user: tb.registry_user,
        password: tb.registry_password,
        dir: tb.dir,
        _claim: tb.claim,
    })
}

impl Testbed {
    /// The registry target with the password as a file secret reference.
    fn target(&self, tmp: &Path, password: &str) -> RegistryTarget {
        let pw = tmp.join("registry-password");
        fs::write(&pw, format!("{password}\n")).unwrap();
        RegistryTarget {
            server: self.registry.clone(),
            username: Some(self.user.clone()),
            password: Some(SecretRef::File(pw.display().to_string().into())),
            // The testbed registry speaks plain HTTP.
            insecure: true,
        }
    }

    /// How many manifest PUTs the registry logged for repositories under `ns`.
    fn manifest_puts(&self, ns: &str) -> usize {
        let log = fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default();
        let needle = format!("\"PUT /v2/{ns}/");
        log.lines()
            .filter(|l| l.contains(&needle) && l.contains("/manifests/"))
            .count()
    }
}

/// A unique namespace per test run and test.
fn namespace(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("fleet-build-test/{test}-{:x}-{}", nanos, std::process::id())
}

/// A small busybox-httpd app, `FROM scratch`.
fn app_context(root: &Path, app: &str, page: &str) -> PathBuf {
    let ctx = root.join(app);
    fs::create_dir_all(ctx.join("www")).unwrap();
    fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n\
         CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    )
    .unwrap();
    fs::write(ctx.join(".dockerignore"), "*.tmp\n").unwrap();
    fs::write(ctx.join("www/index.html"), page).unwrap();
    ctx
}

fn target(tb: &Testbed, ns: &str, app: &str, ctx: PathBuf) -> BuildTarget {
    BuildTarget {
        app: app.into(),
        repository: format!("{}/{ns}/{app}", tb.registry),
        build: BuildSpec {
            context: ctx,
            dockerfile: "Dockerfile".into(),
            args: BTreeMap::new(),
            target: None,
        },
    }
}

fn push() -> Options {
    Options {
        push: true,
        jobs: 2,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn first_push_builds_all_second_pushes_nothing() {
    let Some(tb) = testbed() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ns = namespace("twice");
    let targets: Vec<_> = ["web", "api", "worker"]
        .iter()
        .map(|a| {
            target(
                &tb,
                &ns,
                a,
                app_context(tmp.path(), a, &format!("{a} v1\n")),
            )
        })
        .collect();
    let reg = tb.target(tmp.path(), &tb.password);

    let first = build::run(&targets, Some(&reg), &push()).await.unwrap();
    assert_eq!(first.len(), 3);
    for o in &first {
        assert!(o.built && o.pushed && !o.present, "{o:?}");
        assert!(
            o.digest
                .as_deref()
                .is_some_and(|d| d.starts_with("sha256:")),
            "{o:?}"
        );
        assert_eq!(o.image, format!("{}/{ns}/{}:{}", tb.registry, o.app, o.tag));
    }
    let puts = tb.manifest_puts(&ns);
    assert_eq!(puts, 3, "one manifest PUT per app");

    let second = build::run(&targets, Some(&reg), &push()).await.unwrap();
    for (a, b) in first.iter().zip(&second) {
        assert!(!b.built && !b.pushed && b.present, "{b:?}");
        assert_eq!(a.tag, b.tag);
        assert_eq!(a.digest, b.digest);
    }
    assert_eq!(
        tb.manifest_puts(&ns),
        puts,
        "the second run PUT no manifest"
    );
    let json = serde_json::to_value(&second).unwrap();
    assert_eq!(json[0]["built"], false);
    assert_eq!(json[0]["pushed"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_changed_file_changes_only_that_apps_tag() {
    let Some(tb) = testbed() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ns = namespace("change");
    let targets: Vec<_> = ["a", "b"]
        .iter()
        .map(|a| target(&tb, &ns, a, app_context(tmp.path(), a, "v1\n")))
        .collect();
    let reg = tb.target(tmp.path(), &tb.password);
    let first = build::run(&targets, Some(&reg), &push()).await.unwrap();
    let v1 = build::versions(&targets).unwrap();

    // mtime only, and a file .dockerignore leaves out: no tag changes.
    let page = tmp.path().join("a/www/index.html");
    fs::File::options()
        .write(true)
        .open(&page)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(7200))
        .unwrap();
    fs::write(tmp.path().join("a/scratch.tmp"), "noise").unwrap();
    assert_eq!(build::versions(&targets).unwrap(), v1);

    fs::write(&page, "v2\n").unwrap();
    let v2 = build::versions(&targets).unwrap();
    assert_ne!(v1["a"], v2["a"]);
    assert_eq!(v1["b"], v2["b"]);

    let second = build::run(&targets, Some(&reg), &push()).await.unwrap();
    assert!(second[0].built && second[0].pushed, "{:?}", second[0]);
    assert!(second[1].present && !second[1].built, "{:?}", second[1]);
    assert_ne!(first[0].digest, second[0].digest);
    assert_eq!(tb.manifest_puts(&ns), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_a_clear_error_without_the_password() {
    let Some(tb) = testbed() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ns = namespace("badpw");
    let targets = vec![target(&tb, &ns, "x", app_context(tmp.path(), "x", "x\n"))];
    let bad = "not-the-password-31337";
    let reg = tb.target(tmp.path(), bad);
    let err = build::run(&targets, Some(&reg), &push()).await.unwrap_err();
    match &err {
        BuildError::Registry(RegistryError::Unauthorized { registry, user }) => {
            assert_eq!(registry, &tb.registry);
            assert_eq!(user.as_deref(), Some(tb.user.as_str()));
        }
        e => panic!("expected Unauthorized, got {e:?}"),
    }
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(bad), "{shown}");
    assert!(
        shown.contains(&tb.user) && shown.contains(&tb.registry),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_step_names_the_app_and_the_step() {
    let Some(tb) = testbed() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ns = namespace("fail");
    let ctx = app_context(tmp.path(), "broken", "x\n");
    fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY does-not-exist /x\n",
    )
    .unwrap();
    let targets = vec![target(&tb, &ns, "broken", ctx)];
    let reg = tb.target(tmp.path(), &tb.password);
    let err = build::run(&targets, Some(&reg), &push()).await.unwrap_err();
    match &err {
        BuildError::StepFailed {
            app, step, message, ..
        } => {
            assert_eq!(app, "broken");
            assert!(step.contains("COPY does-not-exist"), "{step}");
            assert!(message.contains("does-not-exist"), "{message}");
        }
        e => panic!("expected StepFailed, got {e:?}"),
    }
    assert_eq!(tb.manifest_puts(&ns), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_context_is_typed_with_the_app() {
    let Some(tb) = testbed() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let targets = vec![target(&tb, "unused", "ghost", tmp.path().join("nope"))];
    let err = build::run(&targets, None, &Options::default())
        .await
        .unwrap_err();
    match err {
        BuildError::Context { app, source } => {
            assert_eq!(app, "ghost");
            assert!(matches!(
                source,
                build::context::ContextError::Missing { .. }
            ));
        }
        e => panic!("expected Context, got {e:?}"),
    }
}

/// Issue 6's acceptance through the real binary on the multi-app example: a first
/// `fleet build --push` builds and pushes every app, a second builds and pushes nothing (by
/// `--json` and by the registry's own log), and a wrong password is a clear error, exit 1,
/// that never shows the password.
#[test]
fn cli_builds_the_shop_example_once_then_nothing() {
    let Some(tb) = support::Testbed::get("cli_builds_the_shop_example_once_then_nothing") else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let project = format!("shopcli{}", std::process::id());
    // The shop example, under a project name of its own so its images are new to the registry.
    let manifest = fs::read_to_string(root.join("manifests/shop/fleet.toml"))
        .unwrap()
        .replace("name = \"shop\"", &format!("name = \"{project}\""));
    fs::write(tmp.path().join("fleet.toml"), manifest).unwrap();
    let services = tmp.path().join("services");
    fs::create_dir_all(services.join("www")).unwrap();
    for entry in fs::read_dir(root.join("manifests/shop/services")).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            fs::copy(&p, services.join(p.file_name().unwrap())).unwrap();
        }
    }
    for entry in fs::read_dir(root.join("manifests/shop/services/www")).unwrap() {
        let p = entry.unwrap().path();
        fs::copy(&p, services.join("www").join(p.file_name().unwrap())).unwrap();
    }
    fs::copy("/bin/busybox", services.join("busybox")).unwrap();
    let file = tmp.path().join("fleet.toml");
    let build = |password: &str| {
        let out = tb
            .fleet()
            .env("FLEET_REGISTRY_PASSWORD", password)
            .arg("-f")
            .arg(&file)
            .args(["build", "--push", "--json"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stdout, stderr)
    };
    let rows = |stdout: &str| -> Vec<serde_json::Value> {
        serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    };
    let log = Testbed {
        dir: tb.dir.clone(),
        registry: tb.registry.clone(),
        user: tb.registry_user.clone(),
        password: tb.registry_password.clone(),
        _claim: tb.claim.clone(),
    };
    let manifest_puts = || log.manifest_puts(&project);

    let (code, out, err) = build(&tb.registry_password);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let first = rows(&out);
    let apps: Vec<&str> = first.iter().map(|r| r["app"].as_str().unwrap()).collect();
    assert_eq!(apps, ["api", "web", "worker"]);
    for r in &first {
        assert_eq!(r["built"], true, "{r}");
        assert_eq!(r["pushed"], true, "{r}");
        assert!(r["digest"].as_str().unwrap().starts_with("sha256:"), "{r}");
    }
    let puts = manifest_puts();
    assert_eq!(puts, 3, "one manifest PUT per app under {project}/");

    let (code, out, err) = build(&tb.registry_password);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let second = rows(&out);
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(b["built"], false, "{b}");
        assert_eq!(b["pushed"], false, "{b}");
        assert_eq!(b["present"], true, "{b}");
        assert_eq!(a["digest"], b["digest"]);
    }
    assert_eq!(manifest_puts(), puts, "the second run pushed something");

    let wrong = "not-the-password-4711";
    let (code, out, err) = build(wrong);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(err.contains(&tb.registry_user), "names the user: {err}");
    assert!(err.contains(&tb.registry), "names the registry: {err}");
    assert!(!out.contains(wrong) && !err.contains(wrong), "{out}\n{err}");
    assert!(!err.contains(&tb.registry_password), "{err}");
}

/// `docker login` through a credential helper: a manifest with no registry credentials pushes
/// with what the Docker config's `credsStore` helper gives for the registry (the testbed's
/// real registry checks them); a helper with nothing for it is a refused login.
#[test]
fn cli_pushes_with_the_credentials_of_a_docker_credential_helper() {
    let Some(tb) = support::Testbed::get("cli_pushes_with_a_credential_helper") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let project = format!("credhelper{}", std::process::id());
    let file = hello_project(tmp.path(), &project, &tb.registry, false, "");
    // The helper: the testbed's registry user for its registry, nothing for anything else.
    let bin = tmp.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-fleettest");
    support::write_script(
        &helper,
        &format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\n\
             if [ \"$server\" = \"$FLEETTEST_KNOWS\" ]; then\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{}\",\"Secret\":\"{}\"}}\\n' \"$server\"\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
            tb.registry_user, tb.registry_password
        ),
    );
    let docker_config = tmp.path().join("docker");
    fs::create_dir_all(&docker_config).unwrap();
    fs::write(
        docker_config.join("config.json"),
        r#"{"credsStore":"fleettest"}"#,
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let build = |knows: &str| {
        let out = tb
            .fleet()
            .env_remove("FLEET_REGISTRY_USER")
            .env_remove("FLEET_REGISTRY_PASSWORD")
            .env("DOCKER_CONFIG", &docker_config)
            .env("PATH", &path)
            .env("FLEETTEST_KNOWS", knows)
            .arg("-f")
            .arg(&file)
            .args(["build", "--push", "--json"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, out, err) = build("some-other-registry:5000");
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(err.contains("refused the login"), "{err}");

    let (code, out, err) = build(&tb.registry);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["pushed"], true, "{out}");
    assert!(!err.contains(&tb.registry_password) && !out.contains(&tb.registry_password));
}

/// A copy of the hello app (a VERSION of its own, so its tag is new to the registry) under
/// `dir`, and `dir/fleet.toml` building it for `project`, with the testbed's registry
/// credentials (from the environment) or none, plus `extra` (more TOML).
fn hello_project(
    dir: &Path,
    project: &str,
    registry: &str,
    credentials: bool,
    extra: &str,
) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let app = dir.join("app");
    fs::create_dir_all(&app).unwrap();
    for f in ["Dockerfile", "start.sh", "index.html", "health"] {
        fs::copy(root.join("manifests/hello/app").join(f), app.join(f)).unwrap();
    }
    fs::copy("/bin/busybox", app.join("busybox")).unwrap();
    fs::write(app.join("VERSION"), format!("{}\n", support::unique())).unwrap();
    let file = dir.join("fleet.toml");
    let credentials = if credentials {
        "username = { env = \"FLEET_REGISTRY_USER\" }\npassword = { env = \"FLEET_REGISTRY_PASSWORD\" }\n"
    } else {
        ""
    };
    fs::write(
        &file,
        format!(
            "[project]\nname = \"{project}\"\n\n[registry]\nserver = \"{registry}\"\ninsecure = true\n{credentials}\n\
             [hosts.h1]\naddress = \"10.200.1.2\"\n\n\
             [hosts.h2]\naddress = \"10.200.2.2\"\nuser = \"root\"\n\n\
             [apps.hello]\nbuild = {{ context = \"app\" }}\n\n\
             [environments.production]\nhosts = [\"h1\"]\n{extra}"
        ),
    )
    .unwrap();
    file
}

/// `[builder] host`: the image is built and pushed by that host's engine, over SSH; the
/// local engine never sees it.
#[test]
fn cli_builds_on_the_builder_host() {
    let Some(tb) = support::Testbed::get("cli_builds_on_the_builder_host") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let project = format!("builder{}", std::process::id());
    let file = hello_project(
        tmp.path(),
        &project,
        &tb.registry,
        true,
        "\n[builder]\nhost = \"h2\"\n",
    );
    let out = tb
        .fleet()
        .arg("-f")
        .arg(&file)
        .args(["build", "--push", "--json"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (&rows[0]["built"], &rows[0]["pushed"]),
        (&true.into(), &true.into())
    );
    let image = rows[0]["image"].as_str().unwrap();
    // Built on h2 ...
    tb.ssh_ok("h2", &format!("docker image inspect {image} >/dev/null"));
    // ... not here.
    let local = Command::new("docker")
        .args(["-H", "unix:///run/docker.sock", "image", "inspect", image])
        .output()
        .unwrap();
    assert!(!local.status.success(), "{image} was built locally");
    tb.ssh_ok("h2", &format!("docker image rm {image} >/dev/null"));
}
