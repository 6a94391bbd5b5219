//! The Docker engine's API version, as the docker CLI negotiates it; the engine's containers by
//! label.

use std::collections::HashMap;
use std::path::Path;

use bollard::Docker;
use bollard::models::ContainerSummary;
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};

/// Every container, running or not, that carries all of `labels` (`key=value` each): how fleet
/// finds what is its own, never by name.
pub async fn containers_labelled(
    docker: &Docker,
    labels: &[String],
) -> Result<Vec<ContainerSummary>, bollard::errors::Error> {
    let filters: HashMap<String, Vec<String>> = [("label".to_string(), labels.to_vec())].into();
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
}

/// Removes a container whatever its state (`docker rm -f`); one already gone is fine (`Ok`).
pub async fn force_remove(docker: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    match docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
    {
        Ok(())
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The engine's API version from `GET /_ping`'s `Api-Version` header, as the docker CLI
/// negotiates. Not `/version`: that one makes the engine run `runc --version` and
/// `docker-init --version` for its component list, on every call.
pub(super) async fn ping_api(socket: &Path) -> Result<(usize, usize), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    s.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    // Read the head only: waiting for the engine's close would wait on the SSH channel's
    // teardown too.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_ping(&String::from_utf8_lossy(&head))
}

pub(super) fn parse_ping(response: &str) -> Result<(usize, usize), String> {
    let mut lines = response.lines();
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP answer: {status:?}"));
    }
    let version = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("api-version"))
        .map(|(_, v)| v.trim().to_string())
        .ok_or_else(|| format!("no Api-Version header in the answer to /_ping ({status})"))?;
    let (major, minor) = version
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| format!("unreadable Api-Version {version:?}"))?;
    Ok((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_api_version_from_ping() {
        let ok = "HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nDocker-Experimental: false\r\n\r\nOK";
        assert_eq!(parse_ping(ok), Ok((1, 41)));
        let lower = "HTTP/1.1 200 OK\r\napi-version:1.45\r\n\r\nOK";
        assert_eq!(parse_ping(lower), Ok((1, 45)));
        assert!(parse_ping("HTTP/1.1 200 OK\r\n\r\nApi-Version: 1.41").is_err());
        assert!(parse_ping("SSH-2.0-OpenSSH").is_err());
        assert!(parse_ping("HTTP/1.1 200 OK\r\nApi-Version: one\r\n\r\n").is_err());
    }
}
