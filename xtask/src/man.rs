//! `cargo xtask man`: the man pages, one per command and subcommand, into target/man.
//!
//! `examples/man.rs` writes them from fleet's clap definitions (clap_mangen, a dev-dependency,
//! so neither fleet nor this xtask carries it) and names the page each command calls for; this
//! checks that each is there and nothing else, and that groff renders each without a warning.
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

pub fn man(ws: &Path) -> Result<()> {
    let dir = ws.join("target/man");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["run", "--quiet", "-p", "fleet", "--example", "man", "--"])
        .arg(&dir)
        .current_dir(ws)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !out.status.success() {
        bail!("examples/man.rs failed ({})", out.status);
    }
    let expected: BTreeSet<String> = String::from_utf8(out.stdout)?
        .lines()
        .map(str::to_string)
        .collect();
    let written: BTreeSet<String> = std::fs::read_dir(&dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    let missing: Vec<&String> = expected.difference(&written).collect();
    let extra: Vec<&String> = written.difference(&expected).collect();
    if !missing.is_empty() || !extra.is_empty() {
        bail!("man pages missing: {missing:?}; not a command: {extra:?}");
    }

    let groff = Command::new("groff").arg("--version").output().is_ok();
    if groff {
        let mut warned = Vec::new();
        for page in &expected {
            let out = Command::new("groff")
                .args(["-man", "-ww", "-z", "-Tutf8"])
                .arg(dir.join(page))
                .output()?;
            if !out.status.success() || !out.stderr.is_empty() {
                warned.push(format!(
                    "{page}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        if !warned.is_empty() {
            bail!("groff warns about:\n{}", warned.join("\n"));
        }
    } else {
        eprintln!("note: no groff here, so the pages were not rendered to check for warnings");
    }
    println!(
        "{} man pages in {}{}: `man -l target/man/fleet.1`; install with `cp target/man/*.1 /usr/local/share/man/man1/`",
        expected.len(),
        dir.display(),
        if groff {
            ", each rendered by groff without a warning"
        } else {
            ""
        }
    );
    Ok(())
}
