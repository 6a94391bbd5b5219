//! The content tag: a short hash of everything that goes into a build.
//!
//! Covered: each context file's path, kind, permission bits and content (symlinks: their
//! target), the Dockerfile path, the build args and the target stage. Not covered: mtimes,
//! owners, walk order. The same inputs give the same tag on any machine, so the tag says
//! whether the registry already has this exact build.

use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use super::context::{self, ContextError, ContextFile, FileKind};
use crate::desired::BuildSpec;

/// Bump when what the tag covers changes, so old tags are not taken for new ones.
const SCHEME: &str = "fleet-content-tag-v1";

/// Length of the tag in hex characters.
pub const TAG_LEN: usize = 12;

/// The content tag of a build (12 hex characters).
pub fn content_tag(spec: &BuildSpec) -> Result<String, ContextError> {
    let files = context::files_with(&spec.context, &spec.dockerfile)?;
    tag_of(spec, &files)
}

/// The content tag for an already listed context.
pub fn tag_of(spec: &BuildSpec, files: &[ContextFile]) -> Result<String, ContextError> {
    let digests = content_digests(files)?;
    let mut h = Sha256::new();
    let mut field = |parts: &[&[u8]]| {
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
    };
    field(&[SCHEME.as_bytes()]);
    field(&[
        b"dockerfile",
        spec.dockerfile.trim_start_matches("./").as_bytes(),
    ]);
    field(&[b"target", spec.target.as_deref().unwrap_or("").as_bytes()]);
    for (k, v) in &spec.args {
        field(&[b"arg", k.as_bytes(), v.as_bytes()]);
    }
    for (f, d) in files.iter().zip(&digests) {
        let (kind, body): (&[u8], &[u8]) = match &f.kind {
            FileKind::File => (b"f", d),
            FileKind::Dir => (b"d", b""),
            FileKind::Symlink(t) => (b"l", t.as_bytes()),
        };
        field(&[
            b"entry",
            kind,
            f.path.as_bytes(),
            &f.mode.to_le_bytes(),
            body,
        ]);
    }
    Ok(hex::encode(h.finalize())[..TAG_LEN].to_string())
}

/// SHA-256 of every regular file's content (empty for other kinds), in `files` order.
/// Files are streamed (never read whole) and hashed on every core: a 200 MB context is
/// bounded by disk and sha2 speed, not by one thread.
fn content_digests(files: &[ContextFile]) -> Result<Vec<Vec<u8>>, ContextError> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(files.len().max(1));
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<Result<Vec<u8>, ContextError>>> =
        (0..files.len()).map(|_| None).collect();
    type Done = Vec<(usize, Result<Vec<u8>, ContextError>)>;
    let chunks: Vec<Done> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut buf = vec![0u8; 1 << 20];
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(f) = files.get(i) else { break };
                        done.push((i, digest_file(f, &mut buf)));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("hash worker panicked"))
            .collect()
    });
    for (i, r) in chunks.into_iter().flatten() {
        results[i] = Some(r);
    }
    results
        .into_iter()
        .map(|r| r.expect("every file hashed"))
        .collect()
}

fn digest_file(f: &ContextFile, buf: &mut [u8]) -> Result<Vec<u8>, ContextError> {
    if f.kind != FileKind::File {
        return Ok(Vec::new());
    }
    let err = |source| ContextError::Io {
        path: f.abs.clone(),
        source,
    };
    let mut file = File::open(&f.abs).map_err(err)?;
    let mut h = Sha256::new();
    loop {
        let n = file.read(buf).map_err(err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_vec())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    use super::*;

    fn spec(ctx: &Path) -> BuildSpec {
        BuildSpec {
            context: ctx.to_path_buf(),
            dockerfile: "Dockerfile".into(),
            args: BTreeMap::new(),
            target: None,
        }
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn ctx() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "Dockerfile", "FROM scratch\nCOPY . /\n");
        write(d.path(), ".dockerignore", "*.tmp\n");
        write(d.path(), "www/index.html", "hello\n");
        write(d.path(), "www/b.txt", "b\n");
        d
    }

    #[test]
    fn tag_is_12_hex_and_stable() {
        let d = ctx();
        let t = content_tag(&spec(d.path())).unwrap();
        assert_eq!(t.len(), 12);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(t, content_tag(&spec(d.path())).unwrap());
    }

    #[test]
    fn same_content_elsewhere_same_tag_regardless_of_creation_order() {
        let a = ctx();
        let b = tempfile::tempdir().unwrap();
        // Created in another order, so directory order on disk may differ.
        write(b.path(), "www/b.txt", "b\n");
        write(b.path(), "www/index.html", "hello\n");
        write(b.path(), ".dockerignore", "*.tmp\n");
        write(b.path(), "Dockerfile", "FROM scratch\nCOPY . /\n");
        assert_eq!(
            content_tag(&spec(a.path())).unwrap(),
            content_tag(&spec(b.path())).unwrap()
        );
    }

    #[test]
    fn mtime_and_ignored_files_do_not_change_the_tag() {
        let d = ctx();
        let before = content_tag(&spec(d.path())).unwrap();
        let f = fs::File::options()
            .write(true)
            .open(d.path().join("www/index.html"))
            .unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(3600))
            .unwrap();
        write(d.path(), "junk.tmp", "whatever");
        assert_eq!(before, content_tag(&spec(d.path())).unwrap());
    }

    #[test]
    fn content_mode_args_target_dockerfile_change_the_tag() {
        let d = ctx();
        let base = content_tag(&spec(d.path())).unwrap();

        write(d.path(), "www/index.html", "hello!\n");
        let content = content_tag(&spec(d.path())).unwrap();
        assert_ne!(base, content);

        let p = d.path().join("www/index.html");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        let mode = content_tag(&spec(d.path())).unwrap();
        assert_ne!(content, mode);

        let mut s = spec(d.path());
        s.args.insert("V".into(), "1".into());
        let args = content_tag(&s).unwrap();
        assert_ne!(mode, args);

        s.target = Some("final".into());
        let target = content_tag(&s).unwrap();
        assert_ne!(args, target);

        write(d.path(), "Other.Dockerfile", "FROM scratch\nCOPY . /\n");
        let mut s2 = spec(d.path());
        s2.dockerfile = "Other.Dockerfile".into();
        assert_ne!(
            content_tag(&spec(d.path())).unwrap(),
            content_tag(&s2).unwrap()
        );

        // A renamed file with the same bytes is a different build.
        let before = content_tag(&spec(d.path())).unwrap();
        fs::rename(d.path().join("www/b.txt"), d.path().join("www/c.txt")).unwrap();
        assert_ne!(before, content_tag(&spec(d.path())).unwrap());
    }

    #[test]
    fn arg_boundaries_are_unambiguous() {
        let d = ctx();
        let mut a = spec(d.path());
        a.args.insert("AB".into(), "C".into());
        let mut b = spec(d.path());
        b.args.insert("A".into(), "BC".into());
        assert_ne!(content_tag(&a).unwrap(), content_tag(&b).unwrap());
    }
}
