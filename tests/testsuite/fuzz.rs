//! No input panics or hangs fleet: the manifest loader (TOML and JSON) and the pm2 importer
//! under mutated, generated and junk input, each case bounded in time, and every import that
//! succeeds prints a manifest that validates. Plus the specific inputs that once crashed the
//! real binary.
//!
//! The property tests share one time budget, `FLEET_FUZZ_SECS` (default 60 seconds in all),
//! so `cargo test` (and CI) runs them for a bounded time; set it higher for a longer hunt.

use std::process::Command;

fn fleet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fleet"));
    c.env_remove("FLEET_FILE").env("NO_COLOR", "1");
    c
}

/// A problem on a line past column 65535 (TOML and JSON) is a diagnostic, not a panic
/// (miette's snippet layout panics there; exit 101).
#[test]
fn a_problem_past_column_65535_is_a_diagnostic_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let long = "a".repeat(70_000);
    let tabs = "\t".repeat(20_000);
    let cases = [
        (
            "long.toml",
            format!("[project]\nname = \"p\"\nfoo = \"{long}\" ; bad = 3\n"),
        ),
        (
            "tabs.toml",
            format!("[project]\nname = \"p\"\n{tabs}bogus = 1\n"),
        ),
        (
            "long.json",
            format!(
                "{{\"project\": {{\"name\": \"p\", \"pre_deploy\": \"{long}\", \"bogus\": 1}}}}"
            ),
        ),
    ];
    for (name, text) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let out = fleet()
            .arg("-f")
            .arg(&file)
            .arg("validate")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr:.2000}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr:.2000}");
        assert!(
            stderr.contains(" found") && stderr.contains("column"),
            "{name}: {stderr:.2000}"
        );
        // The long line itself is not printed as a snippet.
        assert!(stderr.len() < 20_000, "{name}: {} bytes", stderr.len());
    }
}

mod hunt {
    //! The property tests. Each runs batches of generated cases until its share of the time
    //! budget is spent; a watchdog aborts the whole run (printing the input) when one case
    //! takes longer than `FLEET_FUZZ_CASE_SECS` (default 60), so a hang fails CI instead of
    //! stalling it. The limit is wall time, and this binary runs the testbed tests beside these
    //! (deploys, builds, engines on the same 2 cores): a case takes milliseconds alone, and the
    //! default leaves room for a loaded machine. The message goes straight to stderr, since an
    //! abort loses what libtest captured.

    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use fleet::manifest::{self, Format, ManifestError, pm2, render_plain};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    /// The property tests below; they share the budget.
    const TARGETS: u64 = 4;

    fn env_secs(name: &str, default: u64) -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// Runs `check` on cases of `strategy` until this target's share of `FLEET_FUZZ_SECS` is
    /// spent, each case under the watchdog. Panics (with the shrunk input) on a failure.
    fn hunt<S: Strategy>(
        name: &str,
        strategy: S,
        check: impl Fn(&S::Value) -> Result<(), TestCaseError>,
    ) where
        S::Value: std::fmt::Debug,
    {
        let budget = Duration::from_secs(env_secs("FLEET_FUZZ_SECS", 60)) / TARGETS as u32;
        let case_limit = env_secs("FLEET_FUZZ_CASE_SECS", 60);
        let epoch = Instant::now();
        // Millis since `epoch` when the running case started, plus one; 0 when none runs.
        let started = Arc::new(AtomicU64::new(0));
        let input = Arc::new(Mutex::new(String::new()));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watchdog = {
            let (started, input, done, name) = (
                started.clone(),
                input.clone(),
                done.clone(),
                name.to_string(),
            );
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let s = started.load(Ordering::Relaxed);
                    let now = epoch.elapsed().as_millis() as u64 + 1;
                    if s != 0 && now.saturating_sub(s) > case_limit * 1000 {
                        let input = input.lock().map(|i| i.clone()).unwrap_or_default();
                        use std::io::Write;
                        let _ = writeln!(
                            std::io::stderr(),
                            "fuzz {name}: one case ran over {case_limit} s (a hang); its input:\n{input:.20000}"
                        );
                        std::process::abort();
                    }
                }
            })
        };
        let config = Config {
            cases: 32,
            failure_persistence: None,
            ..Config::default()
        };
        // Each batch a fresh runner (a runner stops after `cases` successes), seeded from this
        // one (PROPTEST_RNG_SEED makes a run repeatable).
        let mut seeder = TestRunner::new(config.clone());
        let cases = std::cell::Cell::new(0u64);
        let deadline = Instant::now() + budget;
        let mut result = Ok(());
        while Instant::now() < deadline && result.is_ok() {
            let mut runner = TestRunner::new_with_rng(config.clone(), seeder.new_rng());
            result = runner.run(&strategy, |v| {
                *input.lock().unwrap() = format!("{v:?}");
                started.store(epoch.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
                let r = check(&v);
                started.store(0, Ordering::Relaxed);
                cases.set(cases.get() + 1);
                r
            });
        }
        let cases = cases.get();
        done.store(true, Ordering::Relaxed);
        let _ = watchdog.join();
        if let Err(e) = result {
            panic!("fuzz {name}: {e}");
        }
        eprintln!("fuzz {name}: {cases} cases in {:?}, no failure", budget);
    }

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    /// Manifests to start from: the examples, the fixtures (valid and broken), the templates.
    fn seeds() -> Vec<(String, Format)> {
        let mut files = vec![
            root().join("manifests/hello/fleet.toml"),
            root().join("manifests/shop/fleet.toml"),
            root().join("templates/node/fleet.toml"),
            root().join("templates/static/fleet.toml"),
            root().join("tests/fixtures/manifests/shop.toml"),
            root().join("tests/fixtures/manifests/shop.json"),
        ];
        let broken = root().join("tests/fixtures/manifests/broken");
        let mut b: Vec<_> = std::fs::read_dir(broken)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        b.sort();
        files.extend(b);
        files
            .into_iter()
            .filter_map(|f| {
                let text = std::fs::read_to_string(&f).ok()?;
                Some((text, Format::of(&f)))
            })
            .collect()
    }

    /// Pieces a mutation inserts: syntax, manifest keys, edge values, long and odd text.
    fn tokens() -> Vec<String> {
        let mut t: Vec<String> = [
            "\"",
            "{",
            "}",
            "[",
            "]",
            ",",
            "=",
            ":",
            ".",
            "\n",
            "#",
            "\\",
            "\t",
            "null",
            "true",
            "[apps.x]",
            "[hosts.h9]",
            "[environments.e]",
            "instances = ",
            "\"instances\": ",
            "published = ",
            "port = ",
            "env = ",
            "{ env = \"X\" }",
            "{ file = \"s\" }",
            "limits = { memory = \"1B\" }",
            "roles = [\"web\"]",
            "hosts = []",
            "build = ",
            "-1",
            "0",
            "4294967295",
            "4294967296",
            "9223372036854775807",
            "-9223372036854775808",
            "99999999999999999999",
            "1e999",
            "nan",
            "inf",
            "0x10",
            "1_000",
            "\"\"",
            "\" \"",
            "\"-oProxyCommand=x\"",
            "\"a=b\"",
            "1979-05-27T07:32:00Z",
            "\u{0}",
            "\u{feff}",
            "é",
            "😀",
            "\u{202e}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        t.push("x".repeat(70_000));
        t.push("\t".repeat(20_000));
        t.push(format!("\"{}\"", "a".repeat(66_000)));
        t.push("[".repeat(300));
        t
    }

    #[derive(Debug, Clone)]
    enum Edit {
        Insert(usize, usize),
        Delete(usize, usize),
        Duplicate(usize, usize),
    }

    fn edits() -> impl Strategy<Value = Vec<Edit>> {
        let n = tokens().len();
        prop::collection::vec(
            prop_oneof![
                (any::<usize>(), 0..n).prop_map(|(p, t)| Edit::Insert(p, t)),
                (any::<usize>(), 0usize..64).prop_map(|(p, l)| Edit::Delete(p, l)),
                (any::<usize>(), 0usize..200).prop_map(|(p, l)| Edit::Duplicate(p, l)),
            ],
            1..6,
        )
    }

    fn boundary(s: &str, p: usize) -> usize {
        let mut p = p % (s.len() + 1);
        while !s.is_char_boundary(p) {
            p -= 1;
        }
        p
    }

    fn apply(src: &str, edits: &[Edit], tokens: &[String]) -> String {
        let mut s = src.to_string();
        for e in edits {
            match *e {
                Edit::Insert(p, t) => {
                    let p = boundary(&s, p);
                    s.insert_str(p, &tokens[t]);
                }
                Edit::Delete(p, l) => {
                    let a = boundary(&s, p);
                    let b = boundary(&s, (a + l).min(s.len()));
                    if b >= a {
                        s.replace_range(a..b, "");
                    }
                }
                Edit::Duplicate(p, l) => {
                    let a = boundary(&s, p);
                    let b = boundary(&s, (a + l).min(s.len()));
                    if b >= a {
                        let piece = s[a..b].to_string();
                        s.insert_str(b, &piece);
                    }
                }
            }
        }
        s
    }

    /// A manifest either loads (and every environment resolves without a panic) or is a list
    /// of problems inside the file that renders.
    fn check_manifest(src: &str, format: Format) -> Result<(), TestCaseError> {
        match manifest::load_str(src, format, "fuzz", Path::new("/p")) {
            Ok(m) => {
                let versions = m.placeholder_versions();
                for env in m.environments() {
                    let _ = m.resolve(&env, &versions);
                }
            }
            Err(e) => {
                let ManifestError::Invalid { problems, .. } = &e else {
                    return Err(TestCaseError::fail(format!("unexpected error {e:?}")));
                };
                prop_assert!(!problems.is_empty());
                for p in problems {
                    prop_assert!(p.span.offset() + p.span.len() <= src.len());
                }
                let _ = render_plain(&e);
            }
        }
        Ok(())
    }

    /// An import either prints a manifest that validates, or is refused with problems inside
    /// the ecosystem file that render.
    fn check_import(json: &str, registry: bool) -> Result<(), TestCaseError> {
        let opts = pm2::Options {
            registry: registry.then(|| "10.0.0.5:5000".to_string()),
        };
        match pm2::import(json, "ecosystem.json", &opts) {
            Ok(i) => {
                if let Err(e) = pm2::check(&i, "imported", Path::new("/p")) {
                    return Err(TestCaseError::fail(format!(
                        "the import does not validate:\n{}\n{}",
                        i.manifest,
                        render_plain(&e)
                    )));
                }
            }
            Err(e) => {
                prop_assert!(!e.problems.is_empty());
                for p in &e.problems {
                    prop_assert!(p.span.offset() + p.span.len() <= json.len());
                }
                let _ = render_plain(&e);
            }
        }
        Ok(())
    }

    /// A pm2-ish JSON value: what ecosystem files hold, and what they should not.
    fn pm2_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::{Value, json};
        let leaf = prop_oneof![
            1 => Just(Value::Null),
            1 => any::<bool>().prop_map(Value::from),
            4 => prop_oneof![
                Just(i64::MIN),
                Just(-1i64),
                Just(0),
                Just(1),
                Just(2),
                Just(1000),
                Just(1001),
                Just(u32::MAX as i64),
                Just(u32::MAX as i64 + 1),
                Just(i64::MAX),
                any::<i64>(),
                0i64..100,
            ]
            .prop_map(Value::from),
            1 => prop_oneof![Just(1.5f64), Just(1e300), Just(-0.0)].prop_map(|f| json!(f)),
            1 => Just(json!(u64::MAX)),
            4 => prop_oneof![
                Just(String::new()),
                Just(" ".to_string()),
                Just("max".to_string()),
                Just("-1".to_string()),
                Just("300M".to_string()),
                Just("1K".to_string()),
                Just("5M".to_string()),
                Just("6M".to_string()),
                Just("99999999999999999999G".to_string()),
                Just("18446744073709551615G".to_string()),
                Just("app.js".to_string()),
                Just("none".to_string()),
                Just("local".to_string()),
                Just("10.0.0.1".to_string()),
                Just("-oProxyCommand=x".to_string()),
                Just("a b".to_string()),
                Just("A=B".to_string()),
                Just("n".repeat(64)),
                Just("é😀".to_string()),
                "\\PC{0,12}",
                "[a-zA-Z0-9_ .=-]{0,20}",
            ]
            .prop_map(Value::from),
        ];
        let nested = leaf.clone().prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::vec((pm2_key(), inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        });
        prop_oneof![3 => leaf, 1 => nested]
    }

    fn pm2_key() -> impl Strategy<Value = String> {
        prop_oneof![
            9 => prop::sample::select(vec![
                "name", "script", "cwd", "args", "interpreter", "exec_interpreter", "instances",
                "exec_mode", "env", "env_production", "env_Prod", "env_prod", "env_", "env_=",
                "max_memory_restart", "autorestart", "max_restarts", "kill_timeout", "user",
                "uid", "watch",
            ])
            .prop_map(str::to_string),
            1 => "[a-zA-Z_=]{0,8}",
        ]
    }

    /// An ecosystem file: apps that would import, each with a few keys set to values good
    /// and bad, and a deploy section.
    fn ecosystem() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let name = prop_oneof![
            Just("api".to_string()),
            Just("My App".to_string()),
            "[a-z]{1,8}",
            pm2_value().prop_map(|v| v.to_string()),
        ];
        let app =
            (name, prop::collection::vec((pm2_key(), pm2_value()), 0..4)).prop_map(|(name, kv)| {
                let mut o = serde_json::Map::new();
                o.insert("name".into(), Value::from(name));
                o.insert("script".into(), Value::from("app.js"));
                for (k, v) in kv {
                    o.insert(k, v);
                }
                Value::Object(o)
            });
        let host = prop_oneof![
            Just(Value::from("local")),
            Just(Value::from("10.0.0.1")),
            pm2_value()
        ];
        let target = (
            prop::option::of(prop_oneof![Just(Value::from("deploy")), pm2_value()]),
            prop_oneof![
                host.clone(),
                prop::collection::vec(host, 0..3).prop_map(Value::from)
            ],
        )
            .prop_map(|(user, host)| {
                let mut o = serde_json::Map::new();
                if let Some(u) = user {
                    o.insert("user".into(), u);
                }
                o.insert("host".into(), host);
                o.insert("repo".into(), Value::from("git@x:y.git"));
                Value::Object(o)
            });
        (
            prop::collection::vec(app, 0..4),
            prop::option::weighted(
                0.3,
                prop::collection::vec(
                    (
                        prop_oneof![Just("production".to_string()), "[a-zA-Z_-]{0,10}"],
                        target,
                    ),
                    0..3,
                ),
            ),
        )
            .prop_map(|(apps, deploy)| {
                let mut o = serde_json::Map::new();
                o.insert("apps".into(), Value::from(apps));
                if let Some(d) = deploy {
                    o.insert("deploy".into(), Value::Object(d.into_iter().collect()));
                }
                Value::Object(o)
            })
    }

    /// Mutated manifests (TOML and JSON, from every example and fixture).
    #[test]
    fn mutated_manifests_never_panic_or_hang() {
        let seeds = seeds();
        let tokens = tokens();
        hunt("manifests", (0..seeds.len(), edits()), |(seed, edits)| {
            let (src, format) = &seeds[*seed];
            check_manifest(&apply(src, edits, &tokens), *format)
        });
    }

    /// For generated ecosystem files, the import is refused with a diagnostic or prints a
    /// manifest that validates (with and without a registry given).
    #[test]
    fn pm2_import_validates_or_refuses() {
        hunt("pm2", (ecosystem(), any::<bool>()), |(eco, registry)| {
            check_import(&eco.to_string(), *registry)
        });
    }

    /// Ecosystem files mutated as text (junk JSON, broken UTF-8 boundaries excluded).
    #[test]
    fn mutated_ecosystem_files_never_panic_or_hang() {
        let tokens = tokens();
        hunt(
            "pm2 text",
            (ecosystem(), edits(), any::<bool>()),
            |(eco, edits, registry)| {
                check_import(&apply(&eco.to_string(), edits, &tokens), *registry)
            },
        );
    }

    /// Junk: any text, into both loaders and the importer.
    #[test]
    fn junk_never_panics_or_hangs() {
        hunt(
            "junk",
            prop_oneof!["\\PC{0,300}", "[\\[\\]{}\":,=a-z0-9 .\\n-]{0,300}"],
            |src| {
                check_manifest(src, Format::Toml)?;
                check_manifest(src, Format::Json)?;
                check_import(src, false)
            },
        );
    }
}
