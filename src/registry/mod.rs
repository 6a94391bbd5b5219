//! A small Registry HTTP API v2 client: "does this tag exist, and what is its digest?"
//!
//! `HEAD /v2/<name>/manifests/<reference>` with the Accept headers of the Docker v2 schema 2
//! and OCI manifest and index types; a `401` carries a `WWW-Authenticate` challenge, answered
//! with Basic credentials or with a Bearer token fetched from the challenge's realm.
//!
//! HTTPS as Docker reaches a registry (verified against the system's roots and an extra CA:
//! [`Transport`]); an insecure or loopback registry without verification, else plain HTTP.
//!
//! The password lives only inside [`Credentials`], whose `Debug` is redacted, and is never put
//! in an error or a log line.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};

use crate::desired::RegistryTarget;

pub mod docker_config;

/// The manifest media types fleet accepts when asking for a tag.
pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json";

/// Docker Hub's name in image references.
pub const HUB: &str = "docker.io";

/// The registry an image reference is pulled from (or pushed to), as Docker reads a
/// reference: the first path element when it looks like a host (has a `.` or `:`, is
/// `localhost`, or has an upper case letter), else Docker Hub ([`HUB`], also for
/// `index.docker.io`).
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            if first == "index.docker.io" {
                HUB
            } else {
                first
            }
        }
        _ => HUB,
    }
}

/// A content digest as the registry reports it (`sha256:...`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Digest(pub String);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user name and password for one registry. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The password, for the few places that must send it (HTTP auth, X-Registry-Auth).
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl Credentials {
    /// What bollard sends as `X-Registry-Auth` for a pull or a push from `server`.
    pub fn to_docker(&self, server: &str) -> bollard::auth::DockerCredentials {
        bollard::auth::DockerCredentials {
            username: Some(self.username.clone()),
            password: Some(self.password.clone()),
            serveraddress: Some(server.to_string()),
            ..Default::default()
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry} refused the login{}", user.as_deref().map(|u| format!(" of user `{u}`")).unwrap_or_else(|| " (no credentials given)".into()))]
    Unauthorized {
        registry: String,
        user: Option<String>,
    },
    #[error("registry {registry} is unreachable: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error("registry answered {status}: {body}")]
    Unexpected { status: u16, body: String },
    #[error("registry password {reference}: {source}")]
    Secret {
        reference: String,
        source: crate::manifest::secret::SecretError,
    },
    #[error("credential helper docker-credential-{helper} for {registry}: {reason}")]
    CredentialHelper {
        helper: String,
        registry: String,
        reason: String,
    },
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic {
        realm: Option<String>,
    },
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parse a `WWW-Authenticate` header value: a scheme, then `key="value"` (or bare token)
/// parameters separated by commas; quoted values may contain commas and `\"` escapes.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    let params = parse_params(rest);
    let get = |k: &str| params.get(k).cloned();
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic {
            realm: get("realm"),
        }),
        "bearer" => Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        }),
        _ => None,
    }
}

fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ','))
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            return out;
        }
        if chars.next_if_eq(&'=').is_none() {
            continue;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                .collect::<String>()
                .trim()
                .to_string();
        }
        out.insert(key, value);
    }
}

/// Auth cache key for "any repository of this registry" (Basic auth is not per repository).
const ANY_REPO: &str = "";

/// What to send as `Authorization` once a challenge has been answered.
#[derive(Clone)]
enum Auth {
    Basic(String),
    Bearer(String),
}

/// How a registry is reached, as Docker does: HTTPS, verified against the system's roots plus
/// an extra CA when given. A registry marked insecure (or on loopback, which Docker also
/// treats as insecure): HTTPS without verifying its certificate, else plain HTTP.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// `[registry] insecure = true` (the registry must then be in each engine's
    /// `insecure-registries` too).
    pub insecure: bool,
    /// An extra CA certificate (PEM) to trust for this registry.
    pub ca_pem: Option<Vec<u8>>,
}

impl Transport {
    /// For `server`: insecure when `insecure` or on loopback; the CA of `FLEET_REGISTRY_CA`
    /// (a PEM file), else Docker's `/etc/docker/certs.d/<server>/ca.crt` when it exists.
    pub fn for_server(server: &str, insecure: bool) -> Result<Self, RegistryError> {
        let ca = std::env::var_os("FLEET_REGISTRY_CA")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                let p = std::path::Path::new("/etc/docker/certs.d")
                    .join(server)
                    .join("ca.crt");
                p.exists().then_some(p)
            });
        let ca_pem = match ca {
            Some(p) => Some(std::fs::read(&p).map_err(|e| RegistryError::Unreachable {
                registry: server.to_string(),
                reason: format!("cannot read its CA certificate {}: {e}", p.display()),
            })?),
            None => None,
        };
        Ok(Transport {
            insecure: insecure || is_loopback(server),
            ca_pem,
        })
    }
}

/// `localhost:5000`, `127.0.0.1:5000`, `[::1]:5000`.
fn is_loopback(server: &str) -> bool {
    let host = server
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(server, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A client for one registry (`host:port`).
pub struct RegistryClient {
    server: String,
    credentials: Option<Credentials>,
    http: reqwest::Client,
    insecure: bool,
    /// `https://server` or, for an insecure registry that does not speak TLS, `http://server`;
    /// decided at the first request.
    base: tokio::sync::OnceCell<String>,
    /// Per repository, the `Authorization` value that last worked.
    auth: Mutex<HashMap<String, Auth>>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("server", &self.server)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl RegistryClient {
    /// A client with the transport Docker would use for `server` by default.
    pub fn new(server: impl Into<String>, credentials: Option<Credentials>) -> Self {
        let server = server.into();
        let transport = Transport {
            insecure: is_loopback(&server),
            ca_pem: None,
        };
        Self::with_transport(server, credentials, transport)
            .expect("a client without an extra CA always builds")
    }

    pub fn with_transport(
        server: impl Into<String>,
        credentials: Option<Credentials>,
        transport: Transport,
    ) -> Result<Self, RegistryError> {
        let server = server.into();
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        if let Some(pem) = &transport.ca_pem {
            let cert =
                reqwest::Certificate::from_pem(pem).map_err(|e| RegistryError::Unreachable {
                    registry: server.clone(),
                    reason: format!("its CA certificate is not PEM: {e}"),
                })?;
            b = b.add_root_certificate(cert);
        }
        if transport.insecure {
            // Docker's `insecure-registries`: HTTPS without verifying the certificate, then
            // plain HTTP.
            b = b.danger_accept_invalid_certs(true);
        }
        let http = b.build().map_err(|e| RegistryError::Unreachable {
            registry: server.clone(),
            reason: format!("cannot set up TLS: {e}"),
        })?;
        Ok(Self {
            server,
            credentials,
            http,
            insecure: transport.insecure,
            base: tokio::sync::OnceCell::new(),
            auth: Mutex::new(HashMap::new()),
        })
    }

    /// The client for a manifest's registry, with its credentials read now.
    pub fn for_target(target: &RegistryTarget) -> Result<Self, RegistryError> {
        let transport = Transport::for_server(&target.server, target.insecure)?;
        Self::with_transport(target.server.clone(), credentials(target)?, transport)
    }

    /// `https://server`; for an insecure registry, `http://server` when HTTPS cannot connect.
    async fn base(&self) -> &str {
        self.base
            .get_or_init(|| async {
                let https = format!("https://{}", self.server);
                if !self.insecure {
                    return https;
                }
                match self.http.get(format!("{https}/v2/")).send().await {
                    Ok(_) => https,
                    Err(_) => format!("http://{}", self.server),
                }
            })
            .await
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    fn user(&self) -> Option<String> {
        self.credentials.as_ref().map(|c| c.username.clone())
    }

    /// The repository name inside this registry: `10.200.1.1:5000/shop/api` -> `shop/api`.
    pub fn name_of<'a>(&self, repo: &'a str) -> &'a str {
        repo.strip_prefix(&self.server)
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(repo)
    }

    /// The digest of `repo:tag` when the registry has it, `None` when it does not.
    pub async fn manifest_exists(
        &self,
        repo: &str,
        tag: &str,
    ) -> Result<Option<Digest>, RegistryError> {
        let name = self.name_of(repo);
        let url = format!("{}/v2/{}/manifests/{}", self.base().await, name, tag);
        let mut answered = false;
        loop {
            let mut req = self.http.head(&url).header(ACCEPT, MANIFEST_ACCEPT);
            // A repository seen before uses what worked for it; a new one starts with Basic
            // when Basic worked anywhere on this registry (saves a 401 round trip per app).
            let known = {
                let cache = self.auth.lock().expect("auth cache");
                cache.get(name).or_else(|| cache.get(ANY_REPO)).cloned()
            };
            if let Some(a) = known {
                req = req.header(AUTHORIZATION, header_value(&a));
            }
            let resp = req.send().await.map_err(|e| self.unreachable(e))?;
            match resp.status() {
                StatusCode::OK => {
                    let digest = resp
                        .headers()
                        .get("docker-content-digest")
                        .and_then(|v| v.to_str().ok())
                        .ok_or_else(|| RegistryError::Unexpected {
                            status: 200,
                            body: "no Docker-Content-Digest header".into(),
                        })?;
                    return Ok(Some(Digest(digest.to_string())));
                }
                StatusCode::NOT_FOUND => return Ok(None),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if !answered => {
                    answered = true;
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_challenge);
                    let auth = self.answer(challenge, name).await?;
                    let mut cache = self.auth.lock().expect("auth cache");
                    if matches!(auth, Auth::Basic(_)) {
                        cache.insert(ANY_REPO.to_string(), auth.clone());
                    }
                    cache.insert(name.to_string(), auth);
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    let mut cache = self.auth.lock().expect("auth cache");
                    cache.remove(name);
                    cache.remove(ANY_REPO);
                    return Err(RegistryError::Unauthorized {
                        registry: self.server.clone(),
                        user: self.user(),
                    });
                }
                s => {
                    let body = resp.text().await.unwrap_or_default();
                    return Err(RegistryError::Unexpected {
                        status: s.as_u16(),
                        body: truncate(&body),
                    });
                }
            }
        }
    }

    /// Answer a challenge: Basic with the credentials, or fetch a Bearer token from the realm.
    async fn answer(
        &self,
        challenge: Option<Challenge>,
        name: &str,
    ) -> Result<Auth, RegistryError> {
        let unauthorized = || RegistryError::Unauthorized {
            registry: self.server.clone(),
            user: self.user(),
        };
        match challenge {
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope = scope.unwrap_or_else(|| format!("repository:{name}:pull"));
                let mut url =
                    reqwest::Url::parse(&realm).map_err(|e| RegistryError::Unexpected {
                        status: 401,
                        body: format!("bad token realm `{realm}`: {e}"),
                    })?;
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("scope", &scope);
                    if let Some(s) = &service {
                        q.append_pair("service", s);
                    }
                }
                let mut req = self.http.get(url);
                if let Some(c) = &self.credentials {
                    req = req.basic_auth(&c.username, Some(&c.password));
                }
                let resp = req.send().await.map_err(|e| self.unreachable(e))?;
                match resp.status() {
                    s if s.is_success() => {}
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Err(unauthorized()),
                    s => {
                        return Err(RegistryError::Unexpected {
                            status: s.as_u16(),
                            body: truncate(&resp.text().await.unwrap_or_default()),
                        });
                    }
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Token = resp.json().await.map_err(|e| RegistryError::Unexpected {
                    status: 200,
                    body: format!("token response: {e}"),
                })?;
                t.token.or(t.access_token).map(Auth::Bearer).ok_or_else(|| {
                    RegistryError::Unexpected {
                        status: 200,
                        body: "token response without a token".into(),
                    }
                })
            }
            // Basic, or a 401 without a usable challenge: try Basic if we have credentials.
            _ => match &self.credentials {
                Some(c) => Ok(Auth::Basic(
                    B64.encode(format!("{}:{}", c.username, c.password)),
                )),
                None => Err(unauthorized()),
            },
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> RegistryError {
        // reqwest's message carries the URL (no credentials are ever put in a URL here).
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            reason = format!("{reason}: {s}");
            src = s.source();
        }
        RegistryError::Unreachable {
            registry: self.server.clone(),
            reason,
        }
    }
}

fn header_value(a: &Auth) -> String {
    match a {
        Auth::Basic(b) => format!("Basic {b}"),
        Auth::Bearer(t) => format!("Bearer {t}"),
    }
}

fn truncate(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// The credentials for a registry: the manifest's (user + secret reference), else what the
/// user's Docker config has for that server (`docker login`: a credential helper or `auths`),
/// else none.
pub fn credentials(target: &RegistryTarget) -> Result<Option<Credentials>, RegistryError> {
    if let Some(pw) = &target.password {
        let password =
            crate::manifest::secret::read(pw).map_err(|source| RegistryError::Secret {
                reference: pw.to_string(),
                source,
            })?;
        let username = target.username.clone().unwrap_or_default();
        return Ok(Some(Credentials::new(username, password)));
    }
    docker_config::credentials(&target.server, docker_config::path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_credentials_carry_the_server() {
        let d = Credentials::new("u", "p").to_docker("r:5000");
        assert_eq!(d.username.as_deref(), Some("u"));
        assert_eq!(d.password.as_deref(), Some("p"));
        assert_eq!(d.serveraddress.as_deref(), Some("r:5000"));
    }

    #[test]
    fn the_registry_of_a_reference_is_its_first_element_when_that_is_a_host() {
        for (image, registry) in [
            ("nginx:1.27", "docker.io"),
            ("library/nginx", "docker.io"),
            ("bitnami/redis:7", "docker.io"),
            ("index.docker.io/library/nginx", "docker.io"),
            ("10.200.1.1:5000/shop/api:v1", "10.200.1.1:5000"),
            ("ghcr.io/o/x@sha256:00", "ghcr.io"),
            ("localhost/x", "localhost"),
            ("Registry/x", "Registry"),
        ] {
            assert_eq!(registry_of(image), registry, "{image}");
        }
    }

    #[test]
    fn parses_bearer_challenge_from_the_spec() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:samalba/my-app:pull,push".into()),
            })
        );
    }

    #[test]
    fn parses_basic_and_odd_spacing() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic {
                realm: Some("Registry Realm".into())
            })
        );
        assert_eq!(
            parse_challenge("basic"),
            Some(Challenge::Basic { realm: None })
        );
        assert_eq!(
            parse_challenge(r#"Bearer  realm = "http://x/t" , service=reg, scope="a\"b""#),
            Some(Challenge::Bearer {
                realm: "http://x/t".into(),
                service: Some("reg".into()),
                scope: Some("a\"b".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None, "no realm");
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn password_never_in_debug_or_errors() {
        let c = Credentials::new("alice", "s3cr3t-pw");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let client = RegistryClient::new("127.0.0.1:1", Some(c));
        assert!(!format!("{client:?}").contains("s3cr3t"));
        let e = RegistryError::Unauthorized {
            registry: "r:5000".into(),
            user: Some("alice".into()),
        };
        assert_eq!(
            e.to_string(),
            "registry r:5000 refused the login of user `alice`"
        );
    }

    #[test]
    fn repository_names_lose_the_server() {
        let c = RegistryClient::new("10.200.1.1:5000", None);
        assert_eq!(c.name_of("10.200.1.1:5000/shop/api"), "shop/api");
        assert_eq!(c.name_of("shop/api"), "shop/api");
    }

    /// A self-signed certificate for 127.0.0.1: (its PEM, the server's identity).
    fn self_signed() -> (Vec<u8>, native_tls::Identity) {
        use openssl::{asn1::Asn1Time, bn::BigNum, ec, hash::MessageDigest, nid::Nid, pkey, x509};
        let group = ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = pkey::PKey::from_ec_key(ec::EcKey::generate(&group).unwrap()).unwrap();
        let mut name = x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "fleet test registry")
            .unwrap();
        let name = name.build();
        let mut b = x509::X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        let san = x509::extension::SubjectAlternativeName::new()
            .ip("127.0.0.1")
            .build(&b.x509v3_context(None, None))
            .unwrap();
        b.append_extension(san).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let pem = b.build().to_pem().unwrap();
        let identity =
            native_tls::Identity::from_pkcs8(&pem, &key.private_key_to_pem_pkcs8().unwrap())
                .unwrap();
        (pem, identity)
    }

    /// A registry that speaks only TLS: found with its CA, refused without it (no fallback
    /// to plain HTTP for a registry that is not insecure).
    #[tokio::test]
    async fn a_tls_registry_is_verified_against_its_ca() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (pem, identity) = self_signed();
        let acceptor =
            tokio_native_tls::TlsAcceptor::from(native_tls::TlsAcceptor::new(identity).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let Ok(mut tls) = acceptor.accept(s).await else {
                    continue; // a client that refused the certificate
                };
                let mut buf = vec![0u8; 4096];
                let n = tls.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let resp = if req.starts_with("HEAD /v2/shop/api/manifests/v1 ") {
                    "HTTP/1.1 200 OK\r\nDocker-Content-Digest: sha256:abc\r\nContent-Length: 0\r\n\r\n"
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                };
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        let trusted = Transport {
            insecure: false,
            ca_pem: Some(pem),
        };
        let ok = RegistryClient::with_transport(addr.clone(), None, trusted).unwrap();
        let found = ok.manifest_exists("shop/api", "v1").await.unwrap();
        assert_eq!(found.map(|d| d.to_string()), Some("sha256:abc".to_string()));
        assert!(
            ok.manifest_exists("shop/api", "v2")
                .await
                .unwrap()
                .is_none()
        );

        let strict = RegistryClient::with_transport(addr, None, Transport::default()).unwrap();
        match strict.manifest_exists("shop/api", "v1").await {
            Err(RegistryError::Unreachable { reason, .. }) => {
                assert!(reason.contains("https://"), "{reason}");
            }
            other => panic!("an unknown certificate was accepted: {other:?}"),
        }
    }

    #[test]
    fn loopback_registries_are_insecure_like_dockers() {
        for s in [
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback(s), "{s}");
        }
        for s in ["10.200.1.1:5000", "registry.example.com", "ghcr.io"] {
            assert!(!is_loopback(s), "{s}");
        }
    }

    /// A one-shot fake registry on loopback: checks the client's challenge handling end to end.
    #[tokio::test]
    async fn basic_challenge_round_trip() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let good = format!("Basic {}", B64.encode("u:p"));
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let authed = req.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("authorization:")
                        && l.split_once(':').unwrap().1.trim() == good
                });
                let resp = if !authed {
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"r\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                } else if req.contains("/manifests/have") {
                    "HTTP/1.1 200 OK\r\nDocker-Content-Digest: sha256:abc\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let ok = RegistryClient::new(addr.clone(), Some(Credentials::new("u", "p")));
        assert_eq!(
            ok.manifest_exists(&format!("{addr}/x/y"), "have")
                .await
                .unwrap(),
            Some(Digest("sha256:abc".into()))
        );
        assert_eq!(ok.manifest_exists("x/y", "missing").await.unwrap(), None);
        let bad = RegistryClient::new(addr.clone(), Some(Credentials::new("u", "wrong-pw")));
        let e = bad.manifest_exists("x/y", "have").await.unwrap_err();
        assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
        assert!(!e.to_string().contains("wrong-pw"));
        let none = RegistryClient::new(addr, None);
        assert!(matches!(
            none.manifest_exists("x/y", "have").await,
            Err(RegistryError::Unauthorized { user: None, .. })
        ));
        let gone = RegistryClient::new("127.0.0.1:1", None);
        assert!(matches!(
            gone.manifest_exists("x/y", "t").await,
            Err(RegistryError::Unreachable { .. })
        ));
    }
}
