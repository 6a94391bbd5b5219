//! Readiness probes with std only (no HTTP client dependency in the xtask).
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(2);

fn http_get<S: Read + Write>(mut s: S, path: &str) -> Option<String> {
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf)
}

/// True when a Docker engine answers `/_ping` on this unix socket.
pub fn docker_ping(sock: &Path) -> bool {
    let Ok(s) = UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(T));
    http_get(s, "/_ping").is_some_and(|r| r.starts_with("HTTP/1.") && r.contains(" 200 "))
}

/// The HTTP status line of `GET path` on a TCP address.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    let addr: SocketAddr = addr.parse().ok()?;
    let s = TcpStream::connect_timeout(&addr, T).ok()?;
    let _ = s.set_read_timeout(Some(T));
    let r = http_get(s, path)?;
    r.split_whitespace().nth(1)?.parse().ok()
}

/// True when something accepts TCP connections at `addr`.
pub fn tcp_open(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .is_ok_and(|a| TcpStream::connect_timeout(&a, T).is_ok())
}
