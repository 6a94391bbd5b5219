//! Typed client for the parts of Consul's HTTP API (v1) that fleet uses: agent services and
//! checks, health, catalog, KV (with CAS and blocking queries), sessions and locks.
//!
//! fleet reaches each host's agent through an SSH-forwarded port, so a client is built per host
//! with a `target` label ("h1 (127.0.0.1:8500)") that every error names. Every request carries
//! `X-Consul-Token` when a token is configured and `dc` when a datacenter is.

mod types;

use std::time::Duration;

use hyper::header::HeaderName;
use hyper::{Method, StatusCode};
use url::Url;

pub use types::*;

/// How long a non-blocking request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Consul's default and maximum `wait` for blocking queries.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// What went wrong talking to Consul.
#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    /// 403: the token is missing, unknown, or lacks the permission.
    #[error("Consul refused the ACL token for {request}: {body}{}", needed_rule(.body).map(|r| format!("; add `{r}` to the token's policy")).unwrap_or_default())]
    AclDenied { request: String, body: String },
    /// A list read that ACLs filtered (`X-Consul-Results-Filtered-By-ACLs: true`): Consul left
    /// out what the token may not read, so the answer is incomplete. Never taken as "there is
    /// none": a plan on it would recreate what it cannot see.
    #[error(
        "the Consul token cannot read {what}: Consul left entries out of {request} on {target} \
         (X-Consul-Results-Filtered-By-ACLs); add {rule} to the token's policy"
    )]
    Filtered {
        target: String,
        request: String,
        /// What the token cannot read, e.g. `every service on the agent`, `key prefix "p/e/"`.
        what: String,
        /// The ACL rule(s) that would let it, in Consul's HCL, each in backquotes.
        rule: String,
    },
    /// The agent could not be reached (connection refused, timeout, …).
    #[error("Consul agent {target} is unreachable")]
    Unreachable {
        target: String,
        #[source]
        source: crate::http::Error,
    },
    /// 5xx, with Consul's body.
    #[error("Consul agent {target} failed {request}: {status} {body}")]
    Server {
        target: String,
        request: String,
        status: u16,
        body: String,
    },
    /// 400: Consul rejected the request; the body says why.
    #[error("Consul rejected {request}: {body}")]
    BadRequest { request: String, body: String },
    /// Any other status the call does not expect (e.g. 404 where there is no "absent" meaning).
    #[error("Consul answered {status} to {request}: {body}")]
    Unexpected {
        request: String,
        status: u16,
        body: String,
    },
    /// The answer did not have the documented shape.
    #[error("cannot read Consul's answer to {request}: {message}")]
    Decode { request: String, message: String },
    /// The base URL given to [`ConsulClient::new`] is not a URL.
    #[error("invalid Consul address {url:?}: {message}")]
    InvalidUrl { url: String, message: String },
}

/// The most operations one transaction may hold (api-docs/txn.mdx; `maxTxnOps` in
/// hashicorp/consul agent/txn_endpoint.go, 128 today, 64 in older releases).
pub const TXN_MAX_OPS: usize = 128;
/// The largest transaction request Consul takes by default (`txn_max_req_len`, 512 KiB, the
/// suggested Raft entry size; agent/txn_endpoint.go `convertOps`). fleet counts the values.
pub const TXN_MAX_BYTES: usize = 512 * 1024;

/// How a transaction ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TxnOutcome {
    /// Applied: one result per operation that leaves an entry, in order.
    Committed(Vec<TxnResult>),
    /// Nothing applied: the operations that failed, and why.
    RolledBack(Vec<TxnOpError>),
}

/// Options of a blocking query: wait until the data's index exceeds `index`, or `wait` runs out.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryOptions {
    pub index: Option<u64>,
    pub wait: Option<Duration>,
}

impl QueryOptions {
    /// A blocking query after `index`, waiting at most `wait`.
    pub fn blocking(index: u64, wait: Duration) -> Self {
        QueryOptions {
            index: Some(index),
            wait: Some(wait),
        }
    }
}

/// A read's result with its `X-Consul-Index` (pass it to the next blocking query).
#[derive(Debug, Clone, PartialEq)]
pub struct Indexed<T> {
    pub index: u64,
    pub value: T,
}

/// Parameters of a KV write.
#[derive(Debug, Clone, Default)]
pub struct KvPut {
    /// Check-and-set: 0 creates only when absent; otherwise the key's current ModifyIndex.
    pub cas: Option<u64>,
    pub flags: Option<u64>,
    /// Take the key's lock for this session.
    pub acquire: Option<String>,
    /// Release the key's lock held by this session.
    pub release: Option<String>,
}

/// Parameters of a KV delete.
#[derive(Debug, Clone, Default)]
pub struct KvDelete {
    /// Delete only if the key's ModifyIndex is this.
    pub cas: Option<u64>,
    /// Delete every key under the prefix.
    pub recurse: bool,
}

/// A client bound to one Consul agent.
#[derive(Debug, Clone)]
pub struct ConsulClient {
    http: crate::http::Client,
    base: Url,
    token: Option<String>,
    datacenter: Option<String>,
    target: String,
}

struct Answer {
    status: StatusCode,
    index: u64,
    body: Vec<u8>,
    request: String,
    /// `X-Consul-Results-Filtered-By-ACLs: true`: ACLs left entries out of a list.
    filtered: bool,
}

impl ConsulClient {
    /// A client for the agent at `base_url` (e.g. `http://127.0.0.1:41234`, the local end of an
    /// SSH forward). Errors name the URL until [`with_target`](Self::with_target) says better.
    pub fn new(
        base_url: &str,
        token: Option<String>,
        datacenter: Option<String>,
    ) -> Result<Self, ConsulError> {
        let base = Url::parse(base_url).map_err(|e| ConsulError::InvalidUrl {
            url: base_url.to_string(),
            message: e.to_string(),
        })?;
        if base.cannot_be_a_base() {
            return Err(ConsulError::InvalidUrl {
                url: base_url.to_string(),
                message: "not an http:// address".into(),
            });
        }
        Ok(ConsulClient {
            http: crate::http::plain(),
            target: base_url.to_string(),
            base,
            token: token.filter(|t| !t.is_empty()),
            datacenter: datacenter.filter(|d| !d.is_empty()),
        })
    }

    /// Names the agent in errors, e.g. `"h1 (agent 127.0.0.1:8500)"`.
    pub fn with_target(mut self, target: impl Into<String>) -> Self {
        self.target = target.into();
        self
    }

    /// The label errors use for this agent.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("checked in new()");
            path.pop_if_empty();
            path.extend(segments);
        }
        {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
            if let Some(dc) = &self.datacenter {
                pairs.append_pair("dc", dc);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        url
    }

    /// Sends a request; maps 400, 403 and 5xx to errors and returns other answers.
    async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer, ConsulError> {
        let url = self.url(segments, query);
        let request = format!("{method} {}", url.path());
        let token = self
            .token
            .as_deref()
            .map(|t| (HeaderName::from_static("x-consul-token"), t));
        let response = self
            .http
            .send(crate::http::Call {
                method,
                url: url.as_str(),
                headers: token.as_slice(),
                body,
                timeout,
            })
            .await
            .map_err(|source| ConsulError::Unreachable {
                target: self.target.clone(),
                source,
            })?;
        let status = response.status;
        let index = response
            .headers
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let filtered = response
            .headers
            .get("X-Consul-Results-Filtered-By-ACLs")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let body = response.body.to_vec();
        classify(status, &body, &request, &self.target)?;
        Ok(Answer {
            status,
            index,
            body,
            request,
            filtered,
        })
    }

    /// `answer` unless ACLs filtered it: then [`ConsulError::Filtered`] naming `what` the token
    /// cannot read and the `rule` that would let it.
    fn complete(&self, answer: Answer, what: &str, rule: &str) -> Result<Answer, ConsulError> {
        if answer.filtered {
            return Err(ConsulError::Filtered {
                target: self.target.clone(),
                request: answer.request,
                what: what.to_string(),
                rule: rule.to_string(),
            });
        }
        Ok(answer)
    }

    async fn get(
        &self,
        segments: &[&str],
        mut query: Vec<(&'static str, String)>,
        options: QueryOptions,
    ) -> Result<Answer, ConsulError> {
        let mut timeout = REQUEST_TIMEOUT;
        if let Some(index) = options.index {
            let wait = options.wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
            query.push(("index", index.to_string()));
            query.push(("wait", go_duration(wait)));
            // Consul adds up to wait/16 of jitter before answering.
            timeout = wait + wait / 16 + Duration::from_secs(5);
        }
        self.send(Method::GET, segments, &query, None, timeout)
            .await
    }

    async fn put(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ConsulError> {
        self.send(Method::PUT, segments, query, body, REQUEST_TIMEOUT)
            .await
    }

    // ---- agent ---------------------------------------------------------------------------

    /// Registers a service on the agent, replacing any registration with the same ID. Sends
    /// `replace-existing-checks`, so checks left out of `registration` are removed: fleet's
    /// registration is always the whole desired definition.
    pub async fn register_service(
        &self,
        registration: &ServiceRegistration,
    ) -> Result<(), ConsulError> {
        let body = serde_json::to_vec(registration).expect("serialisable");
        let answer = self
            .put(
                &["v1", "agent", "service", "register"],
                &[("replace-existing-checks", "true".into())],
                Some(body),
            )
            .await?;
        expect_ok(answer).map(|_| ())
    }

    /// Deregisters a service. `Ok(false)` when it was not registered (404: already gone).
    pub async fn deregister_service(&self, service_id: &str) -> Result<bool, ConsulError> {
        let answer = self
            .put(
                &["v1", "agent", "service", "deregister", service_id],
                &[],
                None,
            )
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        expect_ok(answer).map(|_| true)
    }

    /// Every service registered on this agent, by service ID.
    pub async fn agent_services(
        &self,
    ) -> Result<std::collections::BTreeMap<String, AgentService>, ConsulError> {
        let answer = self
            .get(
                &["v1", "agent", "services"],
                Vec::new(),
                QueryOptions::default(),
            )
            .await?;
        let answer = self.complete(answer, "every service on the agent", ALL_SERVICES)?;
        decode(expect_ok(answer)?)
    }

    /// Every check registered on this agent, by check ID.
    pub async fn agent_checks(
        &self,
    ) -> Result<std::collections::BTreeMap<String, HealthCheck>, ConsulError> {
        let answer = self
            .get(
                &["v1", "agent", "checks"],
                Vec::new(),
                QueryOptions::default(),
            )
            .await?;
        let rule = format!("{ALL_SERVICES} and {ALL_NODES}");
        let answer = self.complete(answer, "every check on the agent", &rule)?;
        decode(expect_ok(answer)?)
    }

    /// Sets a TTL check to `status` (passing, warning or critical) and restarts its TTL clock.
    pub async fn update_ttl(
        &self,
        check_id: &str,
        status: CheckStatus,
        note: Option<&str>,
    ) -> Result<(), ConsulError> {
        let verb = match status {
            CheckStatus::Passing => "pass",
            CheckStatus::Warning => "warn",
            CheckStatus::Critical | CheckStatus::Maintenance => "fail",
        };
        let query: Vec<(&str, String)> =
            note.map(|n| ("note", n.to_string())).into_iter().collect();
        let answer = self
            .put(&["v1", "agent", "check", verb, check_id], &query, None)
            .await?;
        expect_ok(answer).map(|_| ())
    }

    /// `update_ttl(check_id, Passing, note)`.
    pub async fn check_pass(&self, check_id: &str, note: Option<&str>) -> Result<(), ConsulError> {
        self.update_ttl(check_id, CheckStatus::Passing, note).await
    }

    /// `update_ttl(check_id, Warning, note)`.
    pub async fn check_warn(&self, check_id: &str, note: Option<&str>) -> Result<(), ConsulError> {
        self.update_ttl(check_id, CheckStatus::Warning, note).await
    }

    /// `update_ttl(check_id, Critical, note)`.
    pub async fn check_fail(&self, check_id: &str, note: Option<&str>) -> Result<(), ConsulError> {
        self.update_ttl(check_id, CheckStatus::Critical, note).await
    }

    // ---- health and catalog -------------------------------------------------------------

    /// Instances of service `name` with their checks; with `passing_only`, only instances whose
    /// every check (the node's `serfHealth` included) is passing.
    pub async fn health_service(
        &self,
        name: &str,
        passing_only: bool,
        options: QueryOptions,
    ) -> Result<Indexed<Vec<ServiceEntry>>, ConsulError> {
        let mut query = Vec::new();
        if passing_only {
            query.push(("passing", "true".to_string()));
        }
        let answer = self
            .get(&["v1", "health", "service", name], query, options)
            .await?;
        let answer = self.complete(
            answer,
            &format!("service {name:?} and the nodes it runs on"),
            &service_rule(name),
        )?;
        indexed(expect_ok(answer)?)
    }

    /// Service names in the catalog with all their tags.
    pub async fn catalog_services(
        &self,
        options: QueryOptions,
    ) -> Result<Indexed<std::collections::BTreeMap<String, Vec<String>>>, ConsulError> {
        let answer = self
            .get(&["v1", "catalog", "services"], Vec::new(), options)
            .await?;
        let answer = self.complete(answer, "every service in the catalog", ALL_SERVICES)?;
        indexed(expect_ok(answer)?)
    }

    /// The instances of service `name` in the catalog.
    pub async fn catalog_service(
        &self,
        name: &str,
        options: QueryOptions,
    ) -> Result<Indexed<Vec<CatalogService>>, ConsulError> {
        let answer = self
            .get(&["v1", "catalog", "service", name], Vec::new(), options)
            .await?;
        let answer = self.complete(
            answer,
            &format!("service {name:?} and the nodes it runs on"),
            &service_rule(name),
        )?;
        indexed(expect_ok(answer)?)
    }

    // ---- KV -----------------------------------------------------------------------------

    fn kv_segments(key: &str) -> Vec<&str> {
        let mut segments = vec!["v1", "kv"];
        segments.extend(key.split('/'));
        segments
    }

    /// One key; `None` when it does not exist (404).
    pub async fn kv_get(&self, key: &str) -> Result<Option<KvPair>, ConsulError> {
        Ok(self.kv_get_with(key, QueryOptions::default()).await?.value)
    }

    /// One key with its index, optionally as a blocking query.
    pub async fn kv_get_with(
        &self,
        key: &str,
        options: QueryOptions,
    ) -> Result<Indexed<Option<KvPair>>, ConsulError> {
        let answer = self
            .get(&Self::kv_segments(key), Vec::new(), options)
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(Indexed {
                index: answer.index,
                value: None,
            });
        }
        let index = answer.index;
        let pairs: Vec<KvPair> = decode(expect_ok(answer)?)?;
        Ok(Indexed {
            index,
            value: pairs.into_iter().next(),
        })
    }

    /// Every key under `prefix` (`recurse`); empty when there is none.
    pub async fn kv_list(
        &self,
        prefix: &str,
        options: QueryOptions,
    ) -> Result<Indexed<Vec<KvPair>>, ConsulError> {
        let answer = self
            .get(
                &Self::kv_segments(prefix),
                vec![("recurse", "true".into())],
                options,
            )
            .await?;
        let answer = self.complete(answer, &key_what(prefix), &key_rule(prefix))?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(Indexed {
                index: answer.index,
                value: Vec::new(),
            });
        }
        indexed(expect_ok(answer)?)
    }

    /// Key names under `prefix`; with `separator`, names are cut after it (one level).
    pub async fn kv_keys(
        &self,
        prefix: &str,
        separator: Option<&str>,
        options: QueryOptions,
    ) -> Result<Indexed<Vec<String>>, ConsulError> {
        let mut query = vec![("keys", "true".to_string())];
        if let Some(sep) = separator {
            query.push(("separator", sep.to_string()));
        }
        let answer = self.get(&Self::kv_segments(prefix), query, options).await?;
        let answer = self.complete(answer, &key_what(prefix), &key_rule(prefix))?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(Indexed {
                index: answer.index,
                value: Vec::new(),
            });
        }
        indexed(expect_ok(answer)?)
    }

    /// Writes a key. Returns Consul's `true`/`false`: false when a `cas`, `acquire` or
    /// `release` condition did not hold (and nothing changed).
    pub async fn kv_put(
        &self,
        key: &str,
        value: &[u8],
        options: &KvPut,
    ) -> Result<bool, ConsulError> {
        let mut query = Vec::new();
        if let Some(cas) = options.cas {
            query.push(("cas", cas.to_string()));
        }
        if let Some(flags) = options.flags {
            query.push(("flags", flags.to_string()));
        }
        if let Some(session) = &options.acquire {
            query.push(("acquire", session.clone()));
        }
        if let Some(session) = &options.release {
            query.push(("release", session.clone()));
        }
        let answer = self
            .put(&Self::kv_segments(key), &query, Some(value.to_vec()))
            .await?;
        decode(expect_ok(answer)?)
    }

    /// Takes the lock on `key` for `session`, writing `value`. False when another session holds
    /// it (or the lock-delay of a released lock is running).
    pub async fn kv_acquire(
        &self,
        key: &str,
        value: &[u8],
        session: &str,
    ) -> Result<bool, ConsulError> {
        let options = KvPut {
            acquire: Some(session.to_string()),
            ..KvPut::default()
        };
        self.kv_put(key, value, &options).await
    }

    /// Releases the lock on `key` held by `session`, writing `value`.
    pub async fn kv_release(
        &self,
        key: &str,
        value: &[u8],
        session: &str,
    ) -> Result<bool, ConsulError> {
        let options = KvPut {
            release: Some(session.to_string()),
            ..KvPut::default()
        };
        self.kv_put(key, value, &options).await
    }

    /// Deletes a key (or a prefix with `recurse`). False when a `cas` did not hold.
    pub async fn kv_delete(&self, key: &str, options: &KvDelete) -> Result<bool, ConsulError> {
        let mut query = Vec::new();
        if let Some(cas) = options.cas {
            query.push(("cas", cas.to_string()));
        }
        if options.recurse {
            query.push(("recurse", "true".to_string()));
        }
        let answer = self
            .send(
                Method::DELETE,
                &Self::kv_segments(key),
                &query,
                None,
                REQUEST_TIMEOUT,
            )
            .await?;
        decode(expect_ok(answer)?)
    }

    // ---- transactions --------------------------------------------------------------------

    /// Applies `ops` atomically (`PUT /v1/txn`): all of them, or none when one fails. At most
    /// [`TXN_MAX_OPS`] operations and [`TXN_MAX_BYTES`] of values; callers split nothing, so an
    /// over-large transaction is theirs to refuse before sending.
    pub async fn txn(&self, ops: &[TxnOp]) -> Result<TxnOutcome, ConsulError> {
        let body = serde_json::to_vec(ops).expect("serialisable");
        let answer = self.put(&["v1", "txn"], &[], Some(body)).await?;
        match answer.status.as_u16() {
            200 => {
                let r: TxnResponse = decode(answer)?;
                Ok(TxnOutcome::Committed(r.results.unwrap_or_default()))
            }
            409 => {
                let r: TxnResponse = decode(answer)?;
                Ok(TxnOutcome::RolledBack(r.errors.unwrap_or_default()))
            }
            // 413: too many operations, or too large (a plain-text body says which).
            status => Err(ConsulError::Unexpected {
                request: answer.request,
                status,
                body: String::from_utf8_lossy(&answer.body).trim().to_string(),
            }),
        }
    }

    // ---- sessions ------------------------------------------------------------------------

    /// Creates a session on this agent's node; returns its ID.
    pub async fn session_create(&self, request: &SessionRequest) -> Result<String, ConsulError> {
        let body = serde_json::to_vec(request).expect("serialisable");
        let answer = self
            .put(&["v1", "session", "create"], &[], Some(body))
            .await?;
        let created: SessionCreated = decode(expect_ok(answer)?)?;
        Ok(created.id)
    }

    /// Renews a TTL session. `None` when it no longer exists (expired or destroyed).
    pub async fn session_renew(&self, id: &str) -> Result<Option<SessionInfo>, ConsulError> {
        let answer = self.put(&["v1", "session", "renew", id], &[], None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let list: Vec<SessionInfo> = decode(expect_ok(answer)?)?;
        Ok(list.into_iter().next())
    }

    /// Destroys a session, releasing (or deleting) what it locked. Idempotent.
    pub async fn session_destroy(&self, id: &str) -> Result<bool, ConsulError> {
        let answer = self
            .put(&["v1", "session", "destroy", id], &[], None)
            .await?;
        decode(expect_ok(answer)?)
    }

    /// A session's details; `None` when it does not exist.
    pub async fn session_info(&self, id: &str) -> Result<Option<SessionInfo>, ConsulError> {
        let answer = self
            .get(
                &["v1", "session", "info", id],
                Vec::new(),
                QueryOptions::default(),
            )
            .await?;
        let list: Vec<SessionInfo> = decode(expect_ok(answer)?)?;
        Ok(list.into_iter().next())
    }
}

/// The rule that lets a token read every service.
const ALL_SERVICES: &str = r#"`service_prefix "" { policy = "read" }`"#;
/// The rule that lets a token read every node (health and catalog entries are filtered by node).
const ALL_NODES: &str = r#"`node_prefix "" { policy = "read" }`"#;

fn service_rule(name: &str) -> String {
    format!("`service {name:?} {{ policy = \"read\" }}` and {ALL_NODES}")
}

fn key_what(prefix: &str) -> String {
    format!("key prefix {prefix:?}")
}

fn key_rule(prefix: &str) -> String {
    format!("`key_prefix {prefix:?} {{ policy = \"read\" }}`")
}

/// The rule a 403 asks for, from Consul's message `… lacks permission 'key:write' on "a/b"`
/// (`acl/errors.go`): `key "a/b" { policy = "write" }`.
fn needed_rule(body: &str) -> Option<String> {
    let rest = body.split("lacks permission '").nth(1)?;
    let (permission, rest) = rest.split_once('\'')?;
    let (resource, access) = permission.split_once(':')?;
    let name = rest.trim_start().strip_prefix("on ")?.trim();
    let name = name.strip_prefix('"')?.strip_suffix('"')?;
    Some(format!("{resource} {name:?} {{ policy = {access:?} }}"))
}

/// Maps Consul's error statuses to typed errors; other statuses are left to the caller.
fn classify(
    status: StatusCode,
    body: &[u8],
    request: &str,
    target: &str,
) -> Result<(), ConsulError> {
    let text = || String::from_utf8_lossy(body).trim().to_string();
    match status.as_u16() {
        403 => Err(ConsulError::AclDenied {
            request: request.to_string(),
            body: text(),
        }),
        400 => Err(ConsulError::BadRequest {
            request: request.to_string(),
            body: text(),
        }),
        500..=599 => Err(ConsulError::Server {
            target: target.to_string(),
            request: request.to_string(),
            status: status.as_u16(),
            body: text(),
        }),
        _ => Ok(()),
    }
}

fn expect_ok(answer: Answer) -> Result<Answer, ConsulError> {
    if answer.status.is_success() {
        Ok(answer)
    } else {
        Err(ConsulError::Unexpected {
            request: answer.request,
            status: answer.status.as_u16(),
            body: String::from_utf8_lossy(&answer.body).trim().to_string(),
        })
    }
}

fn decode<T: serde::de::DeserializeOwned>(answer: Answer) -> Result<T, ConsulError> {
    serde_json::from_slice(&answer.body).map_err(|e| ConsulError::Decode {
        request: answer.request,
        message: e.to_string(),
    })
}

fn indexed<T: serde::de::DeserializeOwned>(answer: Answer) -> Result<Indexed<T>, ConsulError> {
    let index = answer.index;
    Ok(Indexed {
        index,
        value: decode(answer)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_typed_errors() {
        let err = classify(
            StatusCode::FORBIDDEN,
            b"Permission denied",
            "PUT /v1/kv/a",
            "h1",
        )
        .unwrap_err();
        assert!(
            matches!(&err, ConsulError::AclDenied { request, .. } if request == "PUT /v1/kv/a")
        );
        let err = classify(
            StatusCode::BAD_REQUEST,
            b"Missing service name\n",
            "PUT /x",
            "h1",
        )
        .unwrap_err();
        assert!(
            matches!(&err, ConsulError::BadRequest { body, .. } if body == "Missing service name")
        );
        let err = classify(
            StatusCode::INTERNAL_SERVER_ERROR,
            b"No path to datacenter",
            "GET /x",
            "h1",
        )
        .unwrap_err();
        assert!(
            matches!(&err, ConsulError::Server { status: 500, body, target, .. } if body == "No path to datacenter" && target == "h1")
        );
        assert!(classify(StatusCode::NOT_FOUND, b"", "GET /x", "h1").is_ok());
        assert!(classify(StatusCode::OK, b"", "GET /x", "h1").is_ok());
    }

    #[test]
    fn a_refusal_names_the_rule_it_lacks() {
        let body = "Permission denied: token with AccessorID '5e1f' lacks permission 'key:write' on \"shop/prod/_fleet/lock\"";
        assert_eq!(
            needed_rule(body).as_deref(),
            Some(r#"key "shop/prod/_fleet/lock" { policy = "write" }"#)
        );
        assert_eq!(needed_rule("ACL not found"), None);
        let e = classify(StatusCode::FORBIDDEN, body.as_bytes(), "PUT /v1/kv/x", "h1").unwrap_err();
        assert!(
            e.to_string().ends_with(
                r#"; add `key "shop/prod/_fleet/lock" { policy = "write" }` to the token's policy"#
            ),
            "{e}"
        );
    }

    /// A token that may write keys but not read services: every list read that ACLs filtered
    /// is an error naming the rule, never a short answer.
    #[tokio::test]
    async fn filtered_list_reads_are_errors_naming_the_missing_rule() {
        let acl = consul_standin::acl::Acl::from_json(
            r#"{"default_policy": "deny", "tokens": {
                "root": {"management": true},
                "kv": {"rules": {"key_prefix": {"": {"policy": "write"}, "p/e/secret/": {"policy": "deny"}},
                                 "session_prefix": {"": {"policy": "write"}}}}}}"#,
        )
        .unwrap();
        let config = consul_standin::Config {
            acl: Some(acl),
            ..Default::default()
        };
        let agent = consul_standin::start(config).await.unwrap();
        let root = ConsulClient::new(&agent.url(), Some("root".into()), None).unwrap();
        let kv = ConsulClient::new(&agent.url(), Some("kv".into()), None)
            .unwrap()
            .with_target("h1 (agent)");
        // Nothing hidden: empty is empty.
        assert!(kv.agent_services().await.unwrap().is_empty());
        root.register_service(&ServiceRegistration {
            id: Some("web-1".into()),
            name: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let e = kv.agent_services().await.unwrap_err();
        assert!(matches!(e, ConsulError::Filtered { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("the Consul token cannot read every service on the agent: "),
            "{msg}"
        );
        assert!(msg.contains("h1 (agent)"), "{msg}");
        assert!(
            msg.ends_with(r#"add `service_prefix "" { policy = "read" }` to the token's policy"#),
            "{msg}"
        );
        let e = kv
            .health_service("web", true, QueryOptions::default())
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains(r#"`service "web" { policy = "read" }`"#),
            "{e}"
        );
        assert!(matches!(
            kv.catalog_services(QueryOptions::default()).await,
            Err(ConsulError::Filtered { .. })
        ));
        // Keys: a prefix with a key the token may not read is filtered; one without is not.
        for k in ["p/e/a", "p/e/secret/b"] {
            root.kv_put(k, b"1", &KvPut::default()).await.unwrap();
        }
        let e = kv
            .kv_keys("p/e/", None, QueryOptions::default())
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains(r#"cannot read key prefix "p/e/": "#),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains(r#"add `key_prefix "p/e/" { policy = "read" }`"#),
            "{e}"
        );
        assert!(matches!(
            kv.kv_list("p/e/", QueryOptions::default()).await,
            Err(ConsulError::Filtered { .. })
        ));
        assert_eq!(
            kv.kv_list("p/e/a", QueryOptions::default())
                .await
                .unwrap()
                .value
                .len(),
            1
        );
        agent.shutdown().await;
    }

    #[test]
    fn urls_carry_dc_and_escape_keys() {
        let client = ConsulClient::new("http://127.0.0.1:8500/", None, Some("dc2".into())).unwrap();
        let url = client.url(
            &ConsulClient::kv_segments("fleet/app config/x"),
            &[("cas", "0".into())],
        );
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8500/v1/kv/fleet/app%20config/x?cas=0&dc=dc2"
        );
        let plain = ConsulClient::new("http://127.0.0.1:8500", None, None).unwrap();
        assert_eq!(
            plain.url(&["v1", "agent", "services"], &[]).as_str(),
            "http://127.0.0.1:8500/v1/agent/services"
        );
        let prefix = plain.url(&ConsulClient::kv_segments("fleet/"), &[]);
        assert_eq!(prefix.as_str(), "http://127.0.0.1:8500/v1/kv/fleet/");
    }

    #[test]
    fn rejects_non_urls() {
        assert!(matches!(
            ConsulClient::new("not a url", None, None),
            Err(ConsulError::InvalidUrl { .. })
        ));
    }

    #[tokio::test]
    async fn unreachable_names_the_target() {
        // A port that was just free: nothing listens there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = ConsulClient::new(&format!("http://{addr}"), None, None)
            .unwrap()
            .with_target(format!("h1 (agent {addr})"));
        let err = client.agent_services().await.unwrap_err();
        assert!(
            matches!(&err, ConsulError::Unreachable { target, .. } if target.starts_with("h1 "))
        );
        assert!(err.to_string().contains(&addr.to_string()));
    }
}
