//! The manifest end to end: diagnostics snapshots of broken manifests, TOML = JSON, the
//! examples, pm2 import through the real binary, and a property test of hostile input.

use std::path::{Path, PathBuf};
use std::process::Command;

use fleet::desired::{EnvValue, Versions};
use fleet::manifest::{self, Format, ManifestError, render_plain};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manifests")
}

fn fleet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fleet"));
    c.env_remove("FLEET_FILE").env("NO_COLOR", "1");
    c
}

fn versions(pairs: &[(&str, &str)]) -> Versions {
    pairs
        .iter()
        .map(|(a, v)| (a.to_string(), v.to_string()))
        .collect()
}

/// Every broken fixture fails to load, with problems at the right places; the rendered
/// diagnostics are snapshots (file:line:column, label, help).
#[test]
fn broken_manifests_snapshots() {
    let dir = fixtures().join("broken");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 15, "need at least 15 broken manifests");
    let (mut toml, mut json) = (0, 0);
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let src = std::fs::read_to_string(&path).unwrap();
        let format = Format::of(&path);
        match format {
            Format::Toml => toml += 1,
            Format::Json => json += 1,
        }
        let err = manifest::load_str(&src, format, &name, Path::new("/p"))
            .err()
            .unwrap_or_else(|| panic!("{name} should not load"));
        let ManifestError::Invalid { problems, .. } = &err else {
            panic!("{name}: expected problems, got {err:?}")
        };
        assert!(!problems.is_empty());
        for p in problems {
            assert!(
                p.span.offset() + p.span.len() <= src.len(),
                "{name}: span out of the file"
            );
        }
        insta::assert_snapshot!(name.clone(), render_plain(&err));
    }
    assert!(toml >= 5 && json >= 5, "both formats covered");
}

#[test]
fn problems_are_all_reported_at_once() {
    let src = std::fs::read_to_string(fixtures().join("broken/14-many-problems.toml")).unwrap();
    let Err(ManifestError::Invalid { problems, .. }) =
        manifest::load_str(&src, Format::Toml, "m.toml", Path::new("/p"))
    else {
        panic!()
    };
    assert!(problems.len() >= 8, "{problems:#?}");
}

#[test]
fn unknown_key_points_at_the_key_with_a_suggestion() {
    let src = std::fs::read_to_string(fixtures().join("broken/20-unknown-key.json")).unwrap();
    let Err(ManifestError::Invalid { problems, .. }) =
        manifest::load_str(&src, Format::Json, "m.json", Path::new("/p"))
    else {
        panic!()
    };
    let p = &problems[0];
    assert_eq!(
        &src[p.span.offset()..p.span.offset() + p.span.len()],
        "\"instance\""
    );
    assert_eq!(
        p.help.as_deref(),
        Some("did you mean `instances`?\nsee docs/manifest.md, \"[apps.NAME]\"")
    );
}

#[test]
fn toml_and_json_resolve_to_the_identical_desired_state() {
    let t = manifest::load(Some(&fixtures().join("shop.toml"))).unwrap();
    let j = manifest::load(Some(&fixtures().join("shop.json"))).unwrap();
    let v = versions(&[("api", "a1"), ("web", "w1"), ("worker", "k1")]);
    assert_eq!(t.environments(), j.environments());
    for env in t.environments() {
        assert_eq!(
            t.resolve(&env, &v).unwrap(),
            j.resolve(&env, &v).unwrap(),
            "{env}"
        );
    }
    assert_eq!(t.build_targets(), j.build_targets());
}

#[test]
fn shop_resolves_with_overlays_ports_services_and_kv() {
    let m = manifest::load(Some(&fixtures().join("shop.toml"))).unwrap();
    let v = versions(&[("api", "a1"), ("web", "w1"), ("worker", "k1")]);
    let prod = m.resolve("production", &v).unwrap();
    let h1 = &prod.hosts[0];
    let api: Vec<_> = h1.instances.iter().filter(|i| i.app == "api").collect();
    assert_eq!(
        api.len(),
        3,
        "production overlay: 3 api instances per web host"
    );
    let ports: Vec<u16> = api.iter().map(|i| i.container.ports[0].host).collect();
    assert_eq!(
        ports,
        [0, 0, 0],
        "auto: Docker picks a free port per container"
    );
    assert_eq!(api[0].container.image, "10.200.1.1:5000/shop/api:a1");
    assert_eq!(
        api[0].container.env["LOG_LEVEL"],
        EnvValue::Plain("info".into())
    );
    let svc = api[1].service.as_ref().unwrap();
    assert_eq!(svc.id, "shop-production-api-h1-2");
    assert_eq!(
        (svc.address.as_str(), svc.port),
        ("10.200.1.2", 0),
        "auto port"
    );
    assert_eq!(svc.meta["team"], "core");
    assert_eq!(svc.meta["fleet-spec"], api[1].spec_hash);
    assert_eq!(api[1].container.labels["fleet.instance"], "2");
    let app = prod.apps.iter().find(|a| a.name == "api").unwrap();
    assert_eq!(app.config["shop/production/api/db/pool"], "20");
    assert_eq!(app.config["shop/production/api/feature/checkout"], "on");
    // worker only on the worker host; staging has two hosts.
    assert!(prod.hosts[2].instances.iter().all(|i| i.app == "worker"));
    let staging = m.resolve("staging", &v).unwrap();
    assert_eq!(staging.hosts.len(), 2);
    let sapi = staging.hosts[0]
        .instances
        .iter()
        .find(|i| i.app == "api")
        .unwrap();
    assert!(matches!(
        &sapi.container.env["DB_PASSWORD"],
        EnvValue::Secret(_)
    ));
    assert_eq!(
        sapi.service.as_ref().unwrap().tags,
        ["v1", "http", "staging"]
    );
    assert_eq!(
        staging.consul.as_ref().unwrap().datacenter.as_deref(),
        Some("staging")
    );
}

#[test]
fn spec_hash_changes_exactly_when_a_new_container_is_needed() {
    let base = std::fs::read_to_string(fixtures().join("shop.toml")).unwrap();
    let hash_of = |src: &str, v: &str| {
        let m = manifest::load_str(src, Format::Toml, "m.toml", Path::new("/p")).unwrap();
        let s = m
            .resolve(
                "production",
                &versions(&[("api", v), ("web", "w"), ("worker", "k")]),
            )
            .unwrap();
        s.hosts[0]
            .instances
            .iter()
            .find(|i| i.app == "api")
            .unwrap()
            .spec_hash
            .clone()
    };
    let h = hash_of(&base, "a1");
    assert_eq!(h.len(), 12);
    assert_eq!(h, hash_of(&base, "a1"), "deterministic");
    // New container: version, env, limits, restart.
    assert_ne!(h, hash_of(&base, "a2"));
    for (from, to) in [
        ("APP_ROLE = \"api\"", "APP_ROLE = \"api2\""),
        ("memory = \"64MiB\"", "memory = \"65MiB\""),
        ("restart = \"always\"", "restart = \"no\""),
        ("stop_timeout = \"10s\"", "stop_timeout = \"11s\""),
    ] {
        assert_ne!(h, hash_of(&base.replacen(from, to, 1), "a1"), "{from}");
    }
    // In place: Consul tags/meta, KV config, health, batch, env order.
    for (from, to) in [
        ("tags = [\"v1\", \"http\"]", "tags = [\"v2\"]"),
        ("meta = { team = \"core\" }", "meta = { team = \"edge\" }"),
        (
            "\"feature/checkout\" = \"on\"",
            "\"feature/checkout\" = \"off\"",
        ),
        ("interval = \"5s\"", "interval = \"9s\""),
        ("batch = 1", "batch = 2"),
        (
            "env = { APP_ROLE = \"api\", DB_PASSWORD = { env = \"SHOP_DB_PASSWORD\" } }",
            "env = { DB_PASSWORD = { env = \"SHOP_DB_PASSWORD\" }, APP_ROLE = \"api\" }",
        ),
    ] {
        let changed = base.replacen(from, to, 1);
        assert_ne!(changed, base, "{from} not found");
        assert_eq!(h, hash_of(&changed, "a1"), "{from}");
    }
}

#[test]
fn unknown_environment_lists_the_real_ones() {
    let m = manifest::load(Some(&fixtures().join("shop.toml"))).unwrap();
    let err = m.resolve("prod", &Versions::new()).unwrap_err();
    let text = render_plain(&err);
    assert!(text.contains("there is no environment `prod`"), "{text}");
    assert!(text.contains("production, staging"), "{text}");
}

/// A build context that is not there points at the app's `build.context` in the manifest, in
/// every command that hashes contexts (`show` here; build, plan, deploy, status...).
#[test]
fn a_missing_build_context_points_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("api")).unwrap();
    std::fs::write(dir.path().join("api/Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::create_dir_all(dir.path().join("web")).unwrap();
    let src = "[project]\nname = \"p\"\n[registry]\nserver = \"r:5000\"\n[hosts.a]\naddress = \"10.0.0.1\"\n\n\
               [apps.api]\nbuild = { context = \"api\" }\n\n\
               [apps.gone]\nbuild = { context = \"nope\" }\n\n\
               [apps.web]\nbuild = \"web\"\n\n\
               [environments.production]\nhosts = [\"a\"]\n";
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, src).unwrap();

    let m = manifest::load(Some(&path)).unwrap();
    let Err(ManifestError::Invalid { problems, .. }) = m.check_build_contexts() else {
        panic!("missing contexts were accepted")
    };
    let at: Vec<&str> = problems
        .iter()
        .map(|p| &src[p.span.offset()..p.span.offset() + p.span.len()])
        .collect();
    assert_eq!(at, ["\"nope\"", "\"web\""]);
    assert!(
        problems[0].message.contains("`gone`") && problems[0].message.contains("does not exist")
    );
    assert!(
        problems[1].message.contains("`web`") && problems[1].message.contains("has no Dockerfile")
    );

    let out = fleet()
        .arg("-f")
        .arg(&path)
        .args(["show", "production"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fleet.toml:12:21"), "{err}");
    assert!(err.contains("no such directory"), "{err}");
}

/// `[builder] host` names one of [hosts]; another name points at itself with a suggestion.
#[test]
fn the_builder_is_one_of_the_hosts() {
    let base = "[project]\nname = \"p\"\n[hosts.web1]\naddress = \"10.0.0.1\"\n\
                [apps.a]\nimage = \"busybox:1\"\n[environments.production]\nhosts = [\"web1\"]\n";
    let good = format!("{base}[builder]\nhost = \"web1\"\n");
    let m = manifest::load_str(&good, Format::Toml, "m.toml", Path::new("/p")).unwrap();
    assert_eq!(m.builder().map(|t| t.address.as_str()), Some("10.0.0.1"));
    let none = manifest::load_str(base, Format::Toml, "m.toml", Path::new("/p")).unwrap();
    assert!(none.builder().is_none());

    let bad = format!("{base}[builder]\nhost = \"web2\"\n");
    let Err(ManifestError::Invalid { problems, .. }) =
        manifest::load_str(&bad, Format::Toml, "m.toml", Path::new("/p"))
    else {
        panic!("an unknown builder host was accepted")
    };
    let p = &problems[0];
    assert_eq!(
        &bad[p.span.offset()..p.span.offset() + p.span.len()],
        "\"web2\""
    );
    assert_eq!(p.message, "there is no host `web2`");
    assert_eq!(p.help.as_deref(), Some("did you mean `web1`?"));
}

#[test]
fn missing_secrets_are_reported_only_when_checked() {
    let src = std::fs::read_to_string(fixtures().join("shop.toml"))
        .unwrap()
        .replace("SHOP_STAGING_DB_PASSWORD", "FLEET_TEST_SURELY_UNSET_VAR");
    let m = manifest::load_str(&src, Format::Toml, "m.toml", Path::new("/p")).unwrap();
    let err = m.check_secrets("staging").unwrap_err();
    let text = render_plain(&err);
    assert!(
        text.contains("FLEET_TEST_SURELY_UNSET_VAR` is not set"),
        "{text}"
    );
}

#[test]
fn examples_validate_and_show_masks_secrets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for ex in ["manifests/hello/fleet.toml", "manifests/shop/fleet.toml"] {
        let out = fleet()
            .arg("-f")
            .arg(root.join(ex))
            .arg("validate")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{ex}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = fleet()
        .arg("-f")
        .arg(root.join("manifests/shop/fleet.toml"))
        .args(["show", "staging"])
        .env("SHOP_STAGING_DB_PASSWORD", "s3cret-value")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("DB_PASSWORD=(secret from env SHOP_STAGING_DB_PASSWORD)"),
        "{text}"
    );
    assert!(!text.contains("s3cret-value"));
    let out = fleet()
        .arg("-f")
        .arg(root.join("manifests/hello/fleet.toml"))
        .args(["show", "production", "--json"])
        .output()
        .unwrap();
    let state: fleet::desired::DesiredState = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state.hosts.len(), 3);
    let i = &state.hosts[1].instances[0];
    // `show` resolves the version fleet would deploy: the content tag of the app's context.
    let loaded = fleet::manifest::load(Some(&root.join("manifests/hello/fleet.toml"))).unwrap();
    let tag = &fleet::build::versions(&loaded.build_targets().0).unwrap()["hello"];
    assert_eq!(tag.len(), 12);
    assert_eq!(
        i.container.image,
        format!("10.200.1.1:5000/hello/hello:{tag}")
    );
    assert_eq!(i.container.ports[0].host, 0, "published = auto");
    assert_eq!(
        i.service.as_ref().unwrap().id,
        "hello-production-hello-h2-1"
    );
}

#[test]
fn manifest_lookup_prefers_toml_then_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = fleet()
        .current_dir(dir.path())
        .arg("validate")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no manifest found"));
    std::fs::copy(fixtures().join("shop.json"), dir.path().join("fleet.json")).unwrap();
    let out = fleet()
        .current_dir(dir.path())
        .arg("validate")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("fleet.json: ok"));
    std::fs::write(dir.path().join("fleet.toml"), "[project]\n").unwrap();
    let out = fleet()
        .current_dir(dir.path())
        .arg("validate")
        .output()
        .unwrap();
    assert!(!out.status.success(), "fleet.toml wins, and it is broken");
}

/// The acceptance example: validates; production runs two instances with NODE_ENV=production.
#[test]
fn pm2_import_acceptance() {
    let dir = tempfile::tempdir().unwrap();
    let eco = dir.path().join("ecosystem.json");
    std::fs::write(
        &eco,
        r#"{"apps":[{"name":"app","script":"app.js","env":{"NODE_ENV":"production"},"instances":"2"}]}"#,
    )
    .unwrap();
    let out_file = dir.path().join("fleet.toml");
    let out = fleet()
        .args(["import", "pm2"])
        .arg(&eco)
        .arg("-o")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: hosts:"));
    let out = fleet()
        .arg("-f")
        .arg(&out_file)
        .arg("validate")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = manifest::load(Some(&out_file)).unwrap();
    let state = m.resolve("production", &m.placeholder_versions()).unwrap();
    let instances: Vec<_> = state.hosts.iter().flat_map(|h| &h.instances).collect();
    assert_eq!(instances.len(), 2);
    for i in instances {
        assert_eq!(
            i.container.env["NODE_ENV"],
            EnvValue::Plain("production".into())
        );
        assert_eq!(
            i.container.command.as_deref(),
            Some(&["node".to_string(), "app.js".into()][..])
        );
    }
}

#[test]
fn init_writes_a_project_that_validates_and_refuses_to_overwrite() {
    for t in ["node", "static"] {
        let dir = tempfile::tempdir().unwrap();
        let out = fleet()
            .current_dir(dir.path())
            .args(["init", "--template", t, "--name", "demo"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(dir.path().join("Dockerfile").is_file());
        let out = fleet()
            .current_dir(dir.path())
            .arg("validate")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{t}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = fleet()
            .current_dir(dir.path())
            .args(["init", "--template", t])
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn check(src: &str, format: Format) {
        // Never a panic; an error is always at least one diagnostic with a span inside the file.
        if let Err(e) = manifest::load_str(src, format, "fuzz", Path::new("/p")) {
            let ManifestError::Invalid { problems, .. } = &e else {
                panic!("unexpected error kind {e:?}")
            };
            assert!(!problems.is_empty());
            for p in problems {
                assert!(p.span.offset() + p.span.len() <= src.len());
            }
            let _ = render_plain(&e);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn truncated_manifests(cut in 0usize..4000, json in any::<bool>()) {
            let (file, format) = if json { ("shop.json", Format::Json) } else { ("shop.toml", Format::Toml) };
            let src = std::fs::read_to_string(fixtures().join(file)).unwrap();
            let mut cut = cut.min(src.len());
            while !src.is_char_boundary(cut) { cut -= 1; }
            check(&src[..cut], format);
        }

        #[test]
        fn random_text(src in "\\PC{0,200}", json in any::<bool>()) {
            check(&src, if json { Format::Json } else { Format::Toml });
        }

        #[test]
        fn random_structure(src in "[\\[\\]{}\":,=a-z0-9 .\\n]{0,200}", json in any::<bool>()) {
            check(&src, if json { Format::Json } else { Format::Toml });
        }

        #[test]
        fn mutated_manifests(pos in 0usize..4000, byte in prop::sample::select(vec!["\"", "{", "}", "[", "]", ",", "=", "x", "1", "\n", ""]), json in any::<bool>()) {
            let (file, format) = if json { ("shop.json", Format::Json) } else { ("shop.toml", Format::Toml) };
            let mut src = std::fs::read_to_string(fixtures().join(file)).unwrap();
            let mut pos = pos.min(src.len());
            while !src.is_char_boundary(pos) { pos -= 1; }
            src.insert_str(pos, byte);
            check(&src, format);
        }
    }
}
