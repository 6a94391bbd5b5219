//! What goes into a build context: the files under the context directory that
//! `.dockerignore` leaves in, plus the Dockerfile and `.dockerignore` themselves (Docker
//! always sends those two, even when they are ignored).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use super::ignore::{DockerIgnore, PatternError};

/// One entry of a build context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextFile {
    /// Slash separated path relative to the context root (`src/main.rs`).
    pub path: String,
    /// Where it is on disk.
    pub abs: PathBuf,
    pub kind: FileKind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Size in bytes (regular files; 0 otherwise).
    pub size: u64,
    /// Last modification, seconds since the epoch: for the tar header only, never hashed.
    pub mtime: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    /// A symbolic link and its target, kept as a link (Docker does not follow them).
    Symlink(String),
}

/// Why a context could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("build context {path} does not exist")]
    Missing { path: PathBuf },
    #[error("build context {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("Dockerfile {dockerfile} not found in build context {context}")]
    DockerfileMissing {
        context: PathBuf,
        dockerfile: String,
    },
    #[error("{path}: {source}")]
    Ignore {
        path: PathBuf,
        #[source]
        source: PatternError,
    },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ContextError + '_ {
    move |source| ContextError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The `.dockerignore` of a context (empty when there is none).
pub fn dockerignore(ctx: &Path) -> Result<DockerIgnore, ContextError> {
    let path = ctx.join(".dockerignore");
    match fs::read_to_string(&path) {
        Ok(text) => {
            DockerIgnore::parse(&text).map_err(|source| ContextError::Ignore { path, source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerIgnore::default()),
        Err(e) => Err(io(&path)(e)),
    }
}

/// The context of `ctx` with the default `Dockerfile`.
pub fn files(ctx: &Path) -> Result<Vec<ContextFile>, ContextError> {
    files_with(ctx, "Dockerfile")
}

/// Everything sent to the engine for a build of `ctx` with `dockerfile` (a path relative to
/// the context), sorted by path. The Dockerfile must be inside the context.
pub fn files_with(ctx: &Path, dockerfile: &str) -> Result<Vec<ContextFile>, ContextError> {
    let meta = fs::metadata(ctx).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ContextError::Missing { path: ctx.into() },
        _ => io(ctx)(e),
    })?;
    if !meta.is_dir() {
        return Err(ContextError::NotADirectory { path: ctx.into() });
    }
    let ignore = dockerignore(ctx)?;
    let mut out = Vec::new();
    let no_hits = vec![false; ignore.patterns().len()];
    walk(ctx, "", &ignore, &no_hits, &mut out)?;

    // Docker sends these two whatever `.dockerignore` says.
    let dockerfile = dockerfile.trim_start_matches("./");
    for always in [dockerfile, ".dockerignore"] {
        if out.iter().any(|f| f.path == always) {
            continue;
        }
        let abs = ctx.join(always);
        match fs::symlink_metadata(&abs) {
            Ok(m) if m.is_file() => out.push(entry(always.into(), abs, &m, FileKind::File)),
            _ if always == dockerfile => {
                return Err(ContextError::DockerfileMissing {
                    context: ctx.into(),
                    dockerfile: dockerfile.into(),
                });
            }
            _ => {}
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn entry(path: String, abs: PathBuf, m: &fs::Metadata, kind: FileKind) -> ContextFile {
    ContextFile {
        path,
        abs,
        size: if kind == FileKind::File { m.len() } else { 0 },
        kind,
        mode: m.permissions().mode() & 0o7777,
        mtime: m.mtime(),
    }
}

/// Depth-first walk. `parent_hits` says which patterns matched an ancestor directory, so a
/// pattern that matches a directory applies to everything below it (Docker's rule) without
/// testing every ancestor again for every file.
fn walk(
    dir: &Path,
    rel: &str,
    ignore: &DockerIgnore,
    parent_hits: &[bool],
    out: &mut Vec<ContextFile>,
) -> Result<(), ContextError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io(dir))?
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            // Docker handles any bytes; fleet needs UTF-8 names to hash and match them.
            return Err(io(&e.path())(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "file name is not UTF-8",
            )));
        };
        let path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let abs = e.path();
        let mut hits = ignore.hits(&path);
        for (h, p) in hits.iter_mut().zip(parent_hits) {
            *h |= p;
        }
        let excluded = ignore.decide(&hits);
        let m = fs::symlink_metadata(&abs).map_err(io(&abs))?;
        let ft = m.file_type();
        if ft.is_dir() {
            if excluded && !ignore.has_exceptions() {
                continue; // nothing below can come back
            }
            if !excluded {
                out.push(entry(path.clone(), abs.clone(), &m, FileKind::Dir));
            }
            walk(&abs, &path, ignore, &hits, out)?;
        } else if excluded {
            continue;
        } else if ft.is_symlink() {
            let target = fs::read_link(&abs).map_err(io(&abs))?;
            let target = target.to_string_lossy().into_owned();
            out.push(entry(path, abs, &m, FileKind::Symlink(target)));
        } else if ft.is_file() {
            out.push(entry(path, abs, &m, FileKind::File));
        }
        // Sockets, fifos and devices are skipped: they cannot be sent in a context.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn paths(files: &[ContextFile]) -> Vec<&str> {
        files.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn lists_what_dockerignore_leaves_in_plus_dockerfile_and_itself() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(r, "Dockerfile", "FROM scratch\n");
        write(
            r,
            ".dockerignore",
            "Dockerfile\n.dockerignore\nnode_modules\n*.log\n!keep.log\nsecret/\n",
        );
        write(r, "app/main.sh", "echo\n");
        write(r, "node_modules/x/index.js", "x");
        write(r, "a.log", "x");
        write(r, "keep.log", "x");
        write(r, "secret/key", "x");
        write(r, "app/b.log", "x");
        let f = files(r).unwrap();
        assert_eq!(
            paths(&f),
            [
                ".dockerignore",
                "Dockerfile",
                "app",
                "app/b.log",
                "app/main.sh",
                "keep.log"
            ]
        );
    }

    #[test]
    fn exceptions_reach_inside_excluded_directories() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(r, "Dockerfile", "FROM scratch\n");
        write(r, ".dockerignore", "docs\n!docs/README.md\n");
        write(r, "docs/README.md", "x");
        write(r, "docs/other.md", "x");
        let f = files(r).unwrap();
        assert_eq!(paths(&f), [".dockerignore", "Dockerfile", "docs/README.md"]);
    }

    #[test]
    fn missing_context_and_dockerfile_are_typed() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            files(&d.path().join("nope")),
            Err(ContextError::Missing { .. })
        ));
        assert!(matches!(
            files(d.path()),
            Err(ContextError::DockerfileMissing { .. })
        ));
        write(d.path(), "build/Containerfile", "FROM scratch\n");
        assert!(files_with(d.path(), "build/Containerfile").is_ok());
    }

    #[test]
    fn bad_dockerignore_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "Dockerfile", "FROM scratch\n");
        write(d.path(), ".dockerignore", "a[\n");
        let e = files(d.path()).unwrap_err();
        assert!(e.to_string().contains(".dockerignore"), "{e}");
    }
}
