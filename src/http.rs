//! The one plain-HTTP client of a fleet process, for what is reached over SSH forwards:
//! Consul agents and fleet's own health probes.
//!
//! hyper's client with a bare TCP connector: no TLS at all. A reqwest client with native-tls
//! loads the system's CA bundle when it is built (~0.05-0.1 s of CPU), although these
//! addresses are plain `http://`; the registry client, which needs TLS, builds its own reqwest
//! client only when a registry is contacted. Built once and shared (a clone is a handle).

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{ACCEPT, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// How long a TCP connect may take (to the local end of an SSH forward, in practice).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle on the shared plain-HTTP client.
#[derive(Debug, Clone)]
pub struct Client(HyperClient<HttpConnector, Full<Bytes>>);

/// The shared client.
pub fn plain() -> Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
            connector.set_nodelay(true);
            Client(
                HyperClient::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .build(connector),
            )
        })
        .clone()
}

/// A request for [`Client::send`].
#[derive(Debug)]
pub struct Call<'a> {
    pub method: Method,
    pub url: &'a str,
    pub headers: &'a [(HeaderName, &'a str)],
    pub body: Option<Vec<u8>>,
    /// For the whole exchange: connect, request, the answer and its body.
    pub timeout: Duration,
}

/// An answer, with its whole body read.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A request that could not be made or got no (whole) answer. Worded as reqwest words it.
#[derive(Debug, thiserror::Error)]
#[error("{} for url ({url})", match .kind {
    Kind::Url(_) | Kind::Request(_) => "builder error",
    Kind::Body(_) => "request or response body error",
    Kind::TimedOut | Kind::Send(_) => "error sending request",
})]
pub struct Error {
    url: String,
    #[source]
    kind: Kind,
}

#[derive(Debug, thiserror::Error)]
enum Kind {
    #[error("invalid URL: {0}")]
    Url(String),
    /// A header value or a request the HTTP library refuses to build.
    #[error("invalid request: {0}")]
    Request(String),
    #[error("operation timed out")]
    TimedOut,
    #[error(transparent)]
    Send(hyper_util::client::legacy::Error),
    #[error(transparent)]
    Body(hyper::Error),
}

impl Client {
    /// Sends the request and reads the whole answer within `call.timeout`.
    pub async fn send(&self, call: Call<'_>) -> Result<Response, Error> {
        let error = |kind| Error {
            url: call.url.to_string(),
            kind,
        };
        let uri: Uri = call
            .url
            .parse()
            .map_err(|e| error(Kind::Url(format!("{e}"))))?;
        let mut request = Request::builder()
            .method(call.method)
            .uri(uri)
            .header(ACCEPT, "*/*");
        for (name, value) in call.headers {
            let value = HeaderValue::from_str(value)
                .map_err(|e| error(Kind::Request(format!("header {name}: {e}"))))?;
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(call.body.unwrap_or_default())))
            .map_err(|e| error(Kind::Request(e.to_string())))?;
        let exchange = async {
            let response = self.0.request(request).await.map_err(Kind::Send)?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(Kind::Body)?.to_bytes();
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(call.timeout, exchange).await {
            Ok(result) => result.map_err(error),
            Err(_) => Err(error(Kind::TimedOut)),
        }
    }

    /// `GET url`, the whole answer within `timeout`.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<Response, Error> {
        self.send(Call {
            method: Method::GET,
            url,
            headers: &[],
            body: None,
            timeout,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot server: reads one request, answers `answer`, returns what it read.
    async fn serve_once(answer: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        (format!("http://{addr}"), task)
    }

    #[tokio::test]
    async fn sends_headers_and_reads_the_answer() {
        let (base, server) =
            serve_once("HTTP/1.1 200 OK\r\nX-Consul-Index: 7\r\nContent-Length: 2\r\n\r\nok").await;
        let url = format!("{base}/v1/kv/a?index=3");
        let token = HeaderName::from_static("x-consul-token");
        let r = plain()
            .send(Call {
                method: Method::GET,
                url: &url,
                headers: &[(token, "secret")],
                body: None,
                timeout: Duration::from_secs(5),
            })
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers.get("x-consul-index").unwrap(), "7");
        assert_eq!(&r.body[..], b"ok");
        let request = server.await.unwrap().to_ascii_lowercase();
        assert!(
            request.starts_with("get /v1/kv/a?index=3 http/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("x-consul-token: secret\r\n"), "{request}");
        assert!(request.contains("accept: */*\r\n"), "{request}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out_with_the_url() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        let e = plain()
            .get(&url, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("error sending request for url ({url})")
        );
        let source = std::error::Error::source(&e).unwrap().to_string();
        assert_eq!(source, "operation timed out");
    }

    /// Nothing is sent: a bad URL or header value is a builder error, each of its own kind.
    #[tokio::test]
    async fn a_request_that_cannot_be_built_is_not_sent() {
        let e = plain()
            .get("http://a b/", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "builder error for url (http://a b/)");
        let source = std::error::Error::source(&e).unwrap().to_string();
        assert!(source.starts_with("invalid URL: "), "{source}");

        let token = HeaderName::from_static("x-consul-token");
        let e = plain()
            .send(Call {
                method: Method::GET,
                url: "http://127.0.0.1:1/",
                headers: &[(token, "a\nb")],
                body: None,
                timeout: Duration::from_secs(5),
            })
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "builder error for url (http://127.0.0.1:1/)");
        let source = std::error::Error::source(&e).unwrap().to_string();
        assert!(
            source.starts_with("invalid request: header x-consul-token: "),
            "{source}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        let e = plain().get(&url, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("error sending request for url ({url})")
        );
    }
}
