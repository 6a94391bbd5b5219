//! The local runtime directory of a command's sockets (control masters, forwarded Docker
//! sockets): short, private to this user, its name unguessable.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;

use super::HostError;

pub(super) static RUNTIME_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Where runtime directories go: `$XDG_RUNTIME_DIR` (private to the user by definition) when
/// it is set, absolute and short enough for socket paths; else `/tmp`.
pub(super) fn runtime_base() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && d.as_os_str().len() <= 32)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// 64 bits nobody else can predict: std's hasher keys come from the OS's random source.
pub(crate) fn unguessable() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/// Makes `path` a directory of ours alone: `mkdir` with mode 0700, which fails if anything of
/// that name exists; an existing one is accepted only if [`check_private`] says it is ours.
pub(crate) fn make_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => check_private(path),
        other => other,
    }
}

/// `path` is a directory (not a symlink) owned by this user, with no access for group or
/// others.
pub(crate) fn check_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let why = if !meta.is_dir() {
        "it is not a directory (or is a symlink)".to_string()
    } else if meta.uid() != uid {
        format!("it belongs to uid {}, not to this user ({uid})", meta.uid())
    } else if meta.mode() & 0o077 != 0 {
        format!("its mode is {:04o}, not 0700", meta.mode() & 0o7777)
    } else {
        return Ok(());
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!("refusing a directory that is not ours alone: {why}"),
    ))
}

/// Makes the runtime directory (if this process has none yet) and `dir` in it, both private.
pub(super) fn make_dir(runtime: &Path, dir: &Path) -> Result<(), HostError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HostError::RuntimeDir { path, source }
    };
    // Another session's close may remove the (then empty) runtime directory between the two
    // steps: make it again.
    let mut tries = 0;
    loop {
        make_private_dir(runtime).map_err(err(runtime))?;
        match make_private_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 5 => tries += 1,
            other => return other.map_err(err(dir)),
        }
    }
}

/// 64-bit FNV-1a: short, stable names for socket files and directories.
pub(super) fn fnv64(text: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// A short, stable directory name for a host's sockets.
pub(super) fn short_name(name: &str) -> String {
    format!("{:08x}", fnv64(name) as u32)
}

/// Removes a session's directory, and the runtime directory with its last session.
pub(super) fn remove_session_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
}
