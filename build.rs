//! `fleet --version`: the package version and the commit it was built from, e.g.
//! `fleet 0.1.0 (abc1234 2026-12-05)`; just the version where there is no git checkout of fleet
//! (a packaged source, no `git`).
use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let version = env!("CARGO_PKG_VERSION");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    // Only fleet's own checkout: not a repository the source happens to be unpacked in.
    let ours = git(&["rev-parse", "--show-toplevel"]).is_some_and(|top| {
        Path::new(&top).canonicalize().ok() == Path::new(&manifest_dir).canonicalize().ok()
    });
    let commit = ours
        .then(|| git(&["log", "-1", "--format=%h %cs"]))
        .flatten();
    let full = match &commit {
        Some(c) => format!("{version} ({c})"),
        None => version.to_string(),
    };
    println!("cargo:rustc-env=FLEET_VERSION={full}");
    if commit.is_none() {
        return;
    }
    // Run again when HEAD moves, and only then: HEAD itself (another branch checked out), the
    // branch's ref (a commit; its directory while the ref is only packed), packed-refs. Each
    // path is one that exists: cargo reruns every time for a missing one. `--git-path` finds
    // them in a worktree too, whose `.git` is a file.
    let existing =
        |name: &str| git(&["rev-parse", "--git-path", name]).filter(|p| Path::new(p).exists());
    let mut watch: Vec<String> = ["HEAD", "packed-refs"]
        .into_iter()
        .filter_map(existing)
        .collect();
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        let dir = branch.rsplit_once('/').map(|(d, _)| d.to_string());
        watch.extend(existing(&branch).or_else(|| dir.as_deref().and_then(existing)));
    }
    for path in watch {
        println!("cargo:rerun-if-changed={path}");
    }
}
