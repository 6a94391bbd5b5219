//! Shell completion for bash, zsh and fish. `COMPLETE=bash fleet` prints the script a shell
//! sources; on each <Tab> the script runs fleet again with `COMPLETE` set and the words typed
//! (clap_complete's `CompleteEnv`), and fleet answers with the candidates. Environment, app and
//! host names come from the manifest the command would use (`-f`/`--file` among the words,
//! else `FLEET_FILE`, else the current directory), read without validating it, so a manifest
//! being edited still completes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};

use crate::manifest::{self, Format, node};

/// Answers the shell and exits when fleet runs for completion; returns otherwise.
pub fn answer_if_asked() {
    clap_complete::CompleteEnv::with_factory(<super::Cli as clap::CommandFactory>::command)
        .complete();
}

/// The manifest's environment names.
pub fn environments() -> ArgValueCandidates {
    ArgValueCandidates::new(|| names("environments"))
}

/// The manifest's app names.
pub fn apps() -> ArgValueCandidates {
    ArgValueCandidates::new(|| names("apps"))
}

/// The manifest's host names.
pub fn hosts() -> ArgValueCandidates {
    ArgValueCandidates::new(|| names("hosts"))
}

/// The keys of the top-level table `table` of the manifest, in manifest order.
fn names(table: &str) -> Vec<CompletionCandidate> {
    let file =
        file_in(std::env::args_os()).or_else(|| std::env::var_os("FLEET_FILE").map(PathBuf::from));
    let Ok(path) = manifest::find(file.as_deref()) else {
        return Vec::new();
    };
    let Ok(src) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    let tree = match Format::of(&path) {
        Format::Toml => node::parse_toml(&src),
        Format::Json => node::parse_json(&src),
    };
    let Ok(node::Node {
        value: node::Value::Table(top),
        ..
    }) = tree
    else {
        return Vec::new();
    };
    match top.get(table).map(|n| &n.value) {
        Some(node::Value::Table(t)) => t
            .entries
            .iter()
            .map(|(k, _)| CompletionCandidate::new(&k.name))
            .collect(),
        _ => Vec::new(),
    }
}

/// The manifest named among the words being completed (`fleet -- fleet -f FILE deploy ...`).
fn file_in(args: impl Iterator<Item = OsString>) -> Option<PathBuf> {
    let words: Vec<String> = args
        .skip_while(|a| a != "--")
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut found = None;
    for (i, w) in words.iter().enumerate() {
        if w == "--" {
            break;
        }
        let value = match w.as_str() {
            "-f" | "--file" => words.get(i + 1).cloned(),
            _ => w
                .strip_prefix("--file=")
                .or_else(|| w.strip_prefix("-f").filter(|v| !v.is_empty()))
                .map(str::to_string),
        };
        if let Some(v) = value {
            found = Some(Path::new(&v).to_path_buf());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_is_found_among_the_words() {
        let words = |s: &str| {
            s.split(' ')
                .map(OsString::from)
                .collect::<Vec<_>>()
                .into_iter()
        };
        assert_eq!(file_in(words("fleet -- fleet deploy pro")), None);
        assert_eq!(
            file_in(words("fleet -- fleet -f m/fleet.toml deploy pro")),
            Some(PathBuf::from("m/fleet.toml"))
        );
        assert_eq!(
            file_in(words("fleet -- fleet --file=m deploy")),
            Some(PathBuf::from("m"))
        );
        assert_eq!(
            file_in(words("fleet -- fleet deploy -fm.json x")),
            Some(PathBuf::from("m.json"))
        );
        assert_eq!(
            file_in(words("fleet -- fleet exec prod app -- ls -f x")),
            None
        );
    }
}
