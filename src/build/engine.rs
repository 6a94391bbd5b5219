//! The outside-world half of `fleet build`: the local Docker engine (bollard) and the tar
//! stream of a context.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptions, PushImageOptions};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::BuildError;
use super::context::{ContextFile, FileKind};
use crate::registry::Credentials;

/// The oldest engine API fleet talks to (Docker 20.10).
pub const MIN_API: (usize, usize) = (1, 41);

/// The local engine: `DOCKER_HOST` (a `unix://` path) when set, else `/run/docker.sock`,
/// with the API version negotiated down to the engine's.
pub async fn connect_local() -> Result<Docker, BuildError> {
    let path = match std::env::var("DOCKER_HOST") {
        Ok(h) if !h.is_empty() => match h.strip_prefix("unix://") {
            Some(p) => p.to_string(),
            None => {
                return Err(BuildError::Engine {
                    endpoint: h,
                    message: "only unix:// DOCKER_HOST values are supported".into(),
                });
            }
        },
        _ => "/run/docker.sock".to_string(),
    };
    let fail = |e: bollard::errors::Error| BuildError::Engine {
        endpoint: path.clone(),
        message: e.to_string(),
    };
    let docker = Docker::connect_with_unix(&path, 600, bollard::API_DEFAULT_VERSION)
        .map_err(fail)?
        .negotiate_version()
        .await
        .map_err(fail)?;
    let v = docker.client_version();
    let (major, minor) = (v.major_version, v.minor_version);
    if (major, minor) < MIN_API {
        return Err(BuildError::EngineTooOld {
            endpoint: path,
            version: format!("{major}.{minor}"),
        });
    }
    Ok(docker)
}

/// A `Write` that hands 256 KiB chunks to an async body stream.
struct ChunkWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "engine closed the build"))
    }
}

/// Write exactly `files` as a tar archive (uid/gid 0, modes and mtimes kept, symlinks as links).
pub fn write_tar<W: Write>(out: W, files: &[ContextFile]) -> io::Result<W> {
    let mut tar = tar::Builder::new(out);
    for f in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(f.mode);
        h.set_mtime(f.mtime.max(0) as u64);
        h.set_uid(0);
        h.set_gid(0);
        match &f.kind {
            FileKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, format!("{}/", f.path), io::empty())?;
            }
            FileKind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                tar.append_link(&mut h, &f.path, target)?;
            }
            FileKind::File => {
                let file = File::open(&f.abs)?;
                let len = file.metadata()?.len();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(len);
                tar.append_data(&mut h, &f.path, io::Read::take(file, len))?;
            }
        }
    }
    tar.into_inner()
}

/// The tar stream of a context, written on a blocking thread while the engine reads it (a
/// large context is never held in memory whole).
pub fn tar_stream(
    files: Vec<ContextFile>,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        let w = ChunkWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        match write_tar(w, &files).and_then(|mut w| w.flush()) {
            Ok(()) => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// What one build asks of the engine.
pub struct BuildRequest<'a> {
    pub app: &'a str,
    pub image: String,
    pub dockerfile: &'a str,
    pub args: &'a std::collections::BTreeMap<String, String>,
    pub target: Option<&'a str>,
    pub labels: HashMap<String, String>,
}

/// Build through the engine, calling `on_line` for each line of build output. A failing step
/// becomes `BuildError::StepFailed` with that step and its output.
pub async fn build(
    docker: &Docker,
    req: BuildRequest<'_>,
    files: Vec<ContextFile>,
    mut on_line: impl FnMut(&str),
) -> Result<(), BuildError> {
    let opts = BuildImageOptions {
        dockerfile: req.dockerfile.trim_start_matches("./").to_string(),
        t: Some(req.image.clone()),
        rm: true,
        forcerm: true,
        buildargs: Some(req.args.clone().into_iter().collect()),
        labels: Some(req.labels),
        target: req.target.unwrap_or_default().to_string(),
        ..Default::default()
    };
    let mut stream = docker.build_image(
        opts,
        None,
        Some(bollard::body_try_stream(tar_stream(files))),
    );
    let mut step = String::new();
    let mut output = Vec::<String>::new();
    let failed = |step: &str, output: &[String], message: String| BuildError::StepFailed {
        app: req.app.to_string(),
        step: if step.is_empty() {
            "(before the first step)".into()
        } else {
            step.to_string()
        },
        output: output.join("\n"),
        message,
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(s) = info.stream.as_deref() {
                    for line in s.lines().filter(|l| !l.trim().is_empty()) {
                        if line.starts_with("Step ") {
                            step = line.to_string();
                            output.clear();
                        } else {
                            output.push(line.to_string());
                        }
                        on_line(line);
                    }
                }
                if let Some(d) = info.error_detail {
                    let msg = d.message.unwrap_or_default();
                    return Err(failed(&step, &output, msg));
                }
            }
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                return Err(failed(&step, &output, error));
            }
            Err(e) => {
                return Err(failed(&step, &output, e.to_string()));
            }
        }
    }
    Ok(())
}

/// Push `image:tag` with `credentials` (sent as X-Registry-Auth).
pub async fn push(
    docker: &Docker,
    app: &str,
    server: &str,
    repository: &str,
    tag: &str,
    credentials: Option<&Credentials>,
    mut on_line: impl FnMut(&str),
) -> Result<(), BuildError> {
    let creds = credentials.map(|c| c.to_docker(server));
    let opts = PushImageOptions {
        tag: Some(tag.to_string()),
        ..Default::default()
    };
    let mut stream = docker.push_image(repository, Some(opts), creds);
    let fail = |message: String| {
        let lower = message.to_ascii_lowercase();
        if lower.contains("unauthorized") || lower.contains("authentication required") {
            BuildError::Registry(crate::registry::RegistryError::Unauthorized {
                registry: server.to_string(),
                user: credentials.map(|c| c.username.clone()),
            })
        } else {
            BuildError::PushFailed {
                app: app.to_string(),
                message,
            }
        }
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(d) = info.error_detail {
                    return Err(fail(d.message.unwrap_or_default()));
                }
                if let Some(s) = info.status.as_deref() {
                    on_line(s);
                }
            }
            Err(bollard::errors::Error::DockerStreamError { error }) => return Err(fail(error)),
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_holds_exactly_the_context_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::create_dir(d.path().join("www")).unwrap();
        std::fs::write(d.path().join("www/a"), "aaa").unwrap();
        std::fs::write(d.path().join("skip.tmp"), "x").unwrap();
        std::fs::write(d.path().join(".dockerignore"), "*.tmp\n").unwrap();
        std::os::unix::fs::symlink("a", d.path().join("www/l")).unwrap();
        let files = super::super::context::files(d.path()).unwrap();
        let bytes = write_tar(Vec::new(), &files).unwrap();
        let mut ar = tar::Archive::new(&bytes[..]);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [".dockerignore", "Dockerfile", "www/", "www/a", "www/l"]
        );
    }
}
