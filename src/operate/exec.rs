//! `fleet exec`: run a command in one instance's container, with a TTY when there is one, and
//! give back the command's exit code.

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{OperateError, Selector, instance_label};
use crate::observe::Connected;
use crate::observe::read::list_containers;

/// The container chosen for an exec.
pub struct Chosen {
    pub docker: Docker,
    pub container_id: String,
    /// `api#1@h1`.
    pub label: String,
    /// How many running containers matched (the first, by host then instance, is chosen).
    pub matched: usize,
}

/// The running container `sel` designates: the first match by host (manifest order) and
/// instance number.
pub async fn choose(cx: &Connected, sel: &Selector) -> Result<Chosen, OperateError> {
    let d = &cx.desired;
    let mut chosen: Option<Chosen> = None;
    let mut matched = 0;
    for (t, s) in cx.hosts() {
        if sel.host.as_deref().is_some_and(|h| h != t.name) {
            continue;
        }
        let Ok(s) = s else { continue };
        let Ok(list) = list_containers(s, &d.project, &d.environment).await else {
            continue;
        };
        for c in list.iter().filter(|c| {
            c.state == crate::observe::ContainerState::Running
                && sel.matches(c.app.as_deref(), c.instance, &t.name)
        }) {
            matched += 1;
            if chosen.is_none() {
                chosen = Some(Chosen {
                    docker: s.docker().await?,
                    container_id: c.id.clone(),
                    label: instance_label(c.app.as_deref().unwrap_or("?"), c.instance, &t.name),
                    matched: 0,
                });
            }
        }
    }
    if let Some(h) = &sel.host
        && cx.session(h).is_none()
    {
        return Err(OperateError::UnknownHost(h.clone()));
    }
    let mut c =
        chosen.ok_or_else(|| OperateError::NoMatch(format!("{} (running)", sel.describe())))?;
    c.matched = matched;
    Ok(c)
}

/// Run `cmd` in the chosen container, wiring this process's stdin, stdout and stderr to it.
/// With `tty` the engine allocates a pseudo-terminal (one output stream). Returns the command's
/// exit code.
pub async fn run(c: &Chosen, cmd: Vec<String>, tty: bool) -> Result<i64, OperateError> {
    let err = |e: bollard::errors::Error| OperateError::Docker {
        host: c.label.clone(),
        message: e.to_string(),
    };
    let exec = c
        .docker
        .create_exec(
            &c.container_id,
            CreateExecOptions {
                cmd: Some(cmd),
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(tty),
                ..Default::default()
            },
        )
        .await
        .map_err(err)?;
    let started = c
        .docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                detach: false,
                tty,
                output_capacity: None,
            }),
        )
        .await
        .map_err(err)?;
    if let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    {
        // stdin is read on a plain thread (a blocked read cannot be cancelled; the thread ends
        // with the process) and copied until it ends.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 4096];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let feeder = tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                if input.write_all(&chunk).await.is_err() {
                    break;
                }
                let _ = input.flush().await;
            }
            let _ = input.shutdown().await;
        });
        use std::io::Write;
        while let Some(item) = output.next().await {
            use bollard::container::LogOutput;
            match item.map_err(err)? {
                LogOutput::StdErr { message } => {
                    let mut e = std::io::stderr().lock();
                    let _ = e.write_all(&message);
                    let _ = e.flush();
                }
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(&message);
                    let _ = o.flush();
                }
                LogOutput::StdIn { .. } => {}
            }
        }
        feeder.abort();
    }
    let inspect = c.docker.inspect_exec(&exec.id).await.map_err(err)?;
    Ok(inspect.exit_code.unwrap_or(0))
}
