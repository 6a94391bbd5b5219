//! `cargo xtask arch`: the import graph of `src/` and `xtask/src/`, and its cycles. Imports must
//! point one way (docs/architecture.md): between the top-level modules of a crate, and between
//! the files of one folder. A child naming its own parent (`super::Item` of the `mod.rs` that
//! declares it) is not counted: that is how Rust modules share their types.
//!
//! The reading is textual: `crate::a::b` and `super::b` paths (with one level of `{...}`
//! groups), outside comments and outside the `#[cfg(test)]` part at the end of a file.
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module path: `["apply", "deploy"]` for `src/apply/deploy.rs`, `[]` for lib.rs / main.rs.
type Module = Vec<String>;

/// Every `.rs` file under `root` as its module path and its code (comments and tests left out),
/// without the modules declared under `#[cfg(test)]` (test fixtures, `mod tests;` files).
fn read_crate(root: &Path) -> Result<BTreeMap<Module, String>> {
    let mut out = BTreeMap::new();
    let mut test_only: Vec<Module> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(root)?;
            let mut module: Module = rel
                .iter()
                .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            let text = std::fs::read_to_string(&path)?;
            for child in test_modules(&text) {
                let mut m = module.clone();
                m.push(child);
                test_only.push(m);
            }
            out.insert(module, code_of(&text));
        }
    }
    out.retain(|m, _| !test_only.iter().any(|t| m.starts_with(t)));
    Ok(out)
}

/// The modules a file declares right after `#[cfg(test)]` (`mod fixtures;`).
fn test_modules(text: &str) -> Vec<String> {
    text.split("#[cfg(test)]")
        .skip(1)
        .filter_map(|rest| {
            let decl = rest.trim_start().lines().next()?.trim();
            let decl = decl
                .strip_prefix("pub(crate) ")
                .or(decl.strip_prefix("pub "))
                .unwrap_or(decl);
            let name = decl.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_string())
        })
        .collect()
}

/// The text without `//` comments and without what follows the first `#[cfg(test)]`.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths named after `prefix` (`crate::` or `super::`): each as its segments, a `{a, b::c}`
/// group giving one path per member (one level deep).
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    for (i, _) in code.match_indices(prefix) {
        if code[..i].chars().next_back().is_some_and(ident) {
            continue; // `fleet::crate::` cannot occur; `xsuper::` is not `super::`
        }
        let rest = &code[i + prefix.len()..];
        let mut segs = Vec::new();
        let mut r = rest;
        loop {
            let end = r.find(|c: char| !ident(c)).unwrap_or(r.len());
            if end == 0 {
                break;
            }
            segs.push(r[..end].to_string());
            r = &r[end..];
            if let Some(next) = r.strip_prefix("::") {
                r = next;
            } else {
                break;
            }
        }
        if let Some(group) = r.strip_prefix('{') {
            let body = &group[..group.find('}').unwrap_or(group.len())];
            for member in body.split(',') {
                let mut p = segs.clone();
                p.extend(
                    member
                        .trim()
                        .split("::")
                        .map(|s| s.trim().trim_start_matches('{').to_string())
                        .filter(|s| !s.is_empty() && s.chars().all(ident)),
                );
                out.push(p);
            }
        } else {
            out.push(segs);
        }
    }
    out
}

/// The edges of the graph: file module -> file module, each the longest known module a path
/// names. Self edges, and a file naming its ancestors, are left out.
fn edges(files: &BTreeMap<Module, String>) -> BTreeSet<(Module, Module)> {
    let resolve = |path: &[String]| -> Module {
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|m| files.contains_key(m))
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for (module, code) in files {
        let mut targets: Vec<Module> = paths_after(code, "crate::")
            .iter()
            .map(|p| resolve(p))
            .collect();
        if let Some((_, parent)) = module.split_last() {
            for p in paths_after(code, "super::") {
                let mut full = parent.to_vec();
                full.extend(p);
                targets.push(resolve(&full));
            }
        }
        for t in targets {
            if t != *module && !module.starts_with(&t) {
                out.insert((module.clone(), t));
            }
        }
    }
    out
}

/// The graphs that must have no cycle: the crate's top-level modules, and per folder its files
/// (`apply::context` -> `apply::fault`). Each as "a -> b" edges between its nodes.
fn graphs(edges: &BTreeSet<(Module, Module)>) -> BTreeMap<String, BTreeSet<(String, String)>> {
    let mut out: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for (from, to) in edges {
        // Top level: the first segments, where they differ.
        if let (Some(a), Some(b)) = (from.first(), to.first())
            && a != b
        {
            out.entry("crate".into())
                .or_default()
                .insert((a.clone(), b.clone()));
        }
        // A folder: the two files' children of their common parent, where both are below it.
        let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
        if common > 0 && from.len() > common && to.len() > common {
            out.entry(from[..common].join("::"))
                .or_default()
                .insert((from[..=common].join("::"), to[..=common].join("::")));
        }
    }
    out
}

/// The cycles of a graph, each as its nodes in order (one per strongly connected set).
fn cycles(edges: &BTreeSet<(String, String)>) -> Vec<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
    }
    let reach = |from: &str| -> BTreeMap<String, Vec<String>> {
        // Breadth first, keeping the path to each node.
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([vec![from.to_string()]]);
        while let Some(path) = queue.pop_front() {
            let last = path.last().unwrap().clone();
            for n in next.get(last.as_str()).into_iter().flatten() {
                if !seen.contains_key(*n) {
                    let mut p = path.clone();
                    p.push(n.to_string());
                    seen.insert(n.to_string(), p.clone());
                    queue.push_back(p);
                }
            }
        }
        seen
    };
    let mut found: Vec<Vec<String>> = Vec::new();
    let mut covered = BTreeSet::new();
    for node in next.keys() {
        if covered.contains(*node) {
            continue;
        }
        if let Some(path) = reach(node).remove(*node) {
            covered.extend(path.iter().cloned());
            found.push(path);
        }
    }
    found
}

/// Every cycle of `src/` and `xtask/src/`, as lines `crate: a -> b -> a`.
pub fn check(workspace: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for root in ["src", "xtask/src"] {
        let files = read_crate(&workspace.join(root))?;
        for (graph, edges) in graphs(&edges(&files)) {
            for c in cycles(&edges) {
                out.push(format!("{root}: {graph}: {}", c.join(" -> ")));
            }
        }
    }
    Ok(out)
}

/// `cargo xtask arch`: prints the cycles; an error when there is one.
pub fn arch(workspace: &Path) -> Result<()> {
    let found = check(workspace)?;
    for line in &found {
        println!("cycle in {line}");
    }
    anyhow::ensure!(found.is_empty(), "{} import cycle(s)", found.len());
    println!(
        "no import cycle between the top-level modules, or the files of a folder, of src/ and xtask/src/"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(s: &str) -> Module {
        s.split("::")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    #[test]
    fn paths_groups_and_comments() {
        let code = code_of(
            "use crate::apply::{deploy::Report, fault};\n// crate::ui::x\nlet x = super::context::Ctx;\n#[cfg(test)]\nuse crate::cli;",
        );
        let c = paths_after(&code, "crate::");
        assert_eq!(
            c,
            vec![vec!["apply", "deploy", "Report"], vec!["apply", "fault"]]
        );
        assert_eq!(paths_after(&code, "super::"), vec![vec!["context", "Ctx"]]);
    }

    #[test]
    fn finds_a_cycle_between_files_and_not_a_parent_child_pair() {
        let files: BTreeMap<Module, String> = [
            ("", "pub mod a; pub mod b;"),
            ("a", "pub use self::x::Thing; fn f() { crate::b::g(); }"),
            ("a::x", "use super::Shared; use super::y::Y;"),
            ("a::y", "use super::x::X;"),
            ("b", "fn g() {}"),
        ]
        .into_iter()
        .map(|(m, c)| (module(m), code_of(c)))
        .collect();
        let g = graphs(&edges(&files));
        assert_eq!(cycles(&g["a"]), vec![vec!["a::x", "a::y", "a::x"]]);
        assert!(cycles(&g["crate"]).is_empty(), "{:?}", g["crate"]);
    }

    /// The acceptance of issue 24: no import cycle in src/ or xtask/src/.
    #[test]
    fn src_and_xtask_have_no_import_cycle() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let found = check(workspace).unwrap();
        assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
    }
}
