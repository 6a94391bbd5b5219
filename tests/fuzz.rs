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
