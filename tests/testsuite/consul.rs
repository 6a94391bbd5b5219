//! Contract suite for fleet's Consul client.
//!
//! By default every test starts the in-process stand-in (`tests/consul-standin`) on
//! 127.0.0.1:0 with an ACL token and a fast reaper. With `FLEET_TEST_CONSUL_ADDR` (and
//! `FLEET_TEST_CONSUL_TOKEN`) set, the same tests run against that real agent instead; the few
//! that cannot (restarting the agent) say so on stderr. Each test uses its own names so they
//! can run in parallel on one agent.

use std::time::{Duration, Instant};

use fleet::consul::{
    CheckDefinition, CheckStatus, ConsulClient, ConsulError, KvDelete, KvPut, QueryOptions,
    ServiceRegistration, SessionBehavior, SessionRequest, TXN_MAX_OPS, TxnOp, TxnOutcome,
};

/// Says which agent a test runs against, or why it skips. Written straight to stderr so the
/// test harness's capture does not hide it: a skip must be seen.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

const TOKEN: &str = "contract-suite-token";

/// The agent under test: a stand-in we own, or a real agent from the environment.
struct Agent {
    url: String,
    token: Option<String>,
    standin: Option<consul_standin::Handle>,
}

impl Agent {
    async fn start(test: &str) -> Agent {
        if let Ok(addr) = std::env::var("FLEET_TEST_CONSUL_ADDR") {
            let url = if addr.contains("://") {
                addr
            } else {
                format!("http://{addr}")
            };
            say!("{test}: against the real Consul agent at {url} (FLEET_TEST_CONSUL_ADDR)");
            return Agent {
                url,
                token: std::env::var("FLEET_TEST_CONSUL_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
                standin: None,
            };
        }
        let mut config = consul_standin::Config::default().fast_reaper();
        config.acl_token = Some(TOKEN.into());
        config.node = "contract".into();
        let handle = consul_standin::start(config).await.expect("start stand-in");
        say!(
            "{test}: against the in-process Consul stand-in at {}",
            handle.url()
        );
        Agent {
            url: handle.url(),
            token: Some(TOKEN.into()),
            standin: Some(handle),
        }
    }

    fn client(&self) -> ConsulClient {
        ConsulClient::new(&self.url, self.token.clone(), None)
            .unwrap()
            .with_target(format!("contract agent {}", self.url))
    }

    fn is_real(&self) -> bool {
        self.standin.is_none()
    }

    /// DeregisterCriticalServiceAfter to ask for, and how long the reaper may take beyond it.
    fn reap(&self) -> (Duration, Duration) {
        if self.is_real() {
            // Consul's minimum is 1 minute and its reaper runs every 30 s.
            (Duration::from_secs(60), Duration::from_secs(45))
        } else {
            (Duration::from_secs(1), Duration::from_secs(2))
        }
    }
}

/// A tiny HTTP app on loopback answering 200 to everything, until dropped.
struct App {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    async fn start() -> App {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        App { port, task }
    }

    /// Stops accepting: the port refuses connections from now on.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("fleet-contract-{name}-{nanos}")
}

async fn check_status(client: &ConsulClient, check_id: &str) -> Option<(CheckStatus, String)> {
    let checks = client.agent_checks().await.unwrap();
    checks.get(check_id).map(|c| (c.status, c.output.clone()))
}

async fn wait_for<F, Fut>(limit: Duration, mut probe: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if probe().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test]
async fn http_checked_service_goes_passing_then_critical_then_is_reaped() {
    let agent = Agent::start("http_check").await;
    let client = agent.client();
    let app = App::start().await;
    let name = unique("web");
    let id = format!("{name}-1");
    let interval = Duration::from_secs(1);
    let (reap_after, reap_slack) = agent.reap();
    let registration = ServiceRegistration {
        id: Some(id.clone()),
        name: name.clone(),
        tags: vec!["fleet".into(), "v1".into()],
        address: Some("127.0.0.1".into()),
        port: Some(app.port),
        meta: [("fleet-project".to_string(), "contract".to_string())].into(),
        check: Some(CheckDefinition {
            http: Some(format!("http://127.0.0.1:{}/health", app.port)),
            interval: Some("1s".into()),
            timeout: Some("1s".into()),
            deregister_critical_service_after: Some(fleet::consul::go_duration(reap_after)),
            ..CheckDefinition::default()
        }),
        ..ServiceRegistration::default()
    };
    client.register_service(&registration).await.unwrap();

    // Kept exactly as registered.
    let services = client.agent_services().await.unwrap();
    let service = &services[&id];
    assert_eq!(service.service, name);
    assert_eq!(service.tags, ["fleet", "v1"]);
    assert_eq!(service.port, app.port);
    assert_eq!(service.address, "127.0.0.1");
    assert_eq!(service.meta["fleet-project"], "contract");

    // Check ID as Consul names it; passing once the app answers.
    let check_id = format!("service:{id}");
    let passed = wait_for(Duration::from_secs(5), || async {
        check_status(&client, &check_id).await.map(|s| s.0) == Some(CheckStatus::Passing)
    })
    .await;
    assert!(
        passed.is_some(),
        "check never passed: {:?}",
        check_status(&client, &check_id).await
    );
    let (_, output) = check_status(&client, &check_id).await.unwrap();
    assert!(output.contains("200 OK"), "output: {output}");

    // The catalog follows the agent (anti-entropy): wait for it, as a real cluster needs.
    let synced = wait_for(Duration::from_secs(3), || async {
        client
            .health_service(&name, true, QueryOptions::default())
            .await
            .unwrap()
            .value
            .len()
            == 1
    })
    .await;
    assert!(
        synced.is_some(),
        "the catalog never listed the passing instance"
    );
    let healthy = client
        .health_service(&name, true, QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(healthy.value.len(), 1);
    assert!(healthy.index > 0);
    let entry = &healthy.value[0];
    assert!(entry.checks.iter().any(|c| c.check_id == "serfHealth"));
    assert_eq!(entry.aggregated_status(), CheckStatus::Passing);
    let catalog = client
        .catalog_services(QueryOptions::default())
        .await
        .unwrap();
    assert!(catalog.value.contains_key(&name));

    // The app stops: critical within two intervals.
    app.stop().await;
    let stopped = Instant::now();
    let went_critical = wait_for(interval * 2 + Duration::from_millis(500), || async {
        check_status(&client, &check_id).await.map(|s| s.0) == Some(CheckStatus::Critical)
    })
    .await;
    assert!(
        went_critical.is_some(),
        "not critical {:?} after the app stopped: {:?}",
        stopped.elapsed(),
        check_status(&client, &check_id).await
    );
    let dropped = wait_for(Duration::from_secs(3), || async {
        client
            .health_service(&name, true, QueryOptions::default())
            .await
            .unwrap()
            .value
            .is_empty()
    })
    .await;
    assert!(
        dropped.is_some(),
        "?passing still lists a critical instance"
    );
    let all = client
        .health_service(&name, false, QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(all.value[0].aggregated_status(), CheckStatus::Critical);

    // Removed after DeregisterCriticalServiceAfter.
    let reaped = wait_for(reap_after + reap_slack, || async {
        !client.agent_services().await.unwrap().contains_key(&id)
    })
    .await;
    assert!(
        reaped.is_some(),
        "service not reaped within {:?}",
        reap_after + reap_slack
    );
    assert!(
        stopped.elapsed() >= reap_after,
        "reaped before DeregisterCriticalServiceAfter"
    );
    assert_eq!(check_status(&client, &check_id).await, None);
}

#[tokio::test]
async fn ttl_checks_start_critical_pass_and_expire() {
    let agent = Agent::start("ttl_check").await;
    let client = agent.client();
    let name = unique("ttl");
    let registration = ServiceRegistration {
        name: name.clone(),
        checks: vec![
            CheckDefinition {
                ttl: Some("2s".into()),
                ..CheckDefinition::default()
            },
            CheckDefinition {
                ttl: Some("30s".into()),
                status: Some(CheckStatus::Passing),
                ..CheckDefinition::default()
            },
        ],
        ..ServiceRegistration::default()
    };
    client.register_service(&registration).await.unwrap();
    let first = format!("service:{name}:1");
    let second = format!("service:{name}:2");
    assert_eq!(
        check_status(&client, &first).await.unwrap().0,
        CheckStatus::Critical
    );
    assert_eq!(
        check_status(&client, &second).await.unwrap().0,
        CheckStatus::Passing
    );

    client.check_pass(&first, Some("all good")).await.unwrap();
    assert_eq!(
        check_status(&client, &first).await.unwrap(),
        (CheckStatus::Passing, "all good".to_string())
    );
    client.check_warn(&first, None).await.unwrap();
    assert_eq!(
        check_status(&client, &first).await.unwrap().0,
        CheckStatus::Warning
    );
    client.check_pass(&first, None).await.unwrap();
    let expired = wait_for(Duration::from_secs(4), || async {
        check_status(&client, &first).await.map(|s| s.0) == Some(CheckStatus::Critical)
    })
    .await;
    assert!(expired.is_some(), "TTL check did not expire");

    assert!(client.deregister_service(&name).await.unwrap());
    assert!(
        !client.deregister_service(&name).await.unwrap(),
        "second deregister is 'already gone'"
    );
}

#[tokio::test]
async fn reregistering_replaces_the_service() {
    let agent = Agent::start("reregister").await;
    let client = agent.client();
    let name = unique("rereg");
    let mut registration = ServiceRegistration {
        id: Some(name.clone()),
        name: name.clone(),
        tags: vec!["old".into()],
        port: Some(1000),
        meta: [("version".to_string(), "1".to_string())].into(),
        check: Some(CheckDefinition {
            ttl: Some("30s".into()),
            ..CheckDefinition::default()
        }),
        ..ServiceRegistration::default()
    };
    client.register_service(&registration).await.unwrap();
    registration.tags = vec!["new".into()];
    registration.port = Some(2000);
    registration.meta = [("version".to_string(), "2".to_string())].into();
    registration.check = None;
    client.register_service(&registration).await.unwrap();
    let services = client.agent_services().await.unwrap();
    let service = &services[&name];
    assert_eq!(service.tags, ["new"]);
    assert_eq!(service.port, 2000);
    assert_eq!(service.meta.len(), 1);
    assert_eq!(service.meta["version"], "2");
    assert_eq!(
        check_status(&client, &format!("service:{name}")).await,
        None,
        "old check kept"
    );
    client.deregister_service(&name).await.unwrap();

    let bad = ServiceRegistration::default();
    let err = client.register_service(&bad).await.unwrap_err();
    assert!(matches!(err, ConsulError::BadRequest { .. }), "{err:?}");
}

#[tokio::test]
async fn kv_cas_conflict_returns_false_and_changes_nothing() {
    let agent = Agent::start("kv_cas").await;
    let client = agent.client();
    let prefix = unique("kv");
    let key = format!("{prefix}/config");
    assert_eq!(client.kv_get(&key).await.unwrap(), None);

    let create = KvPut {
        cas: Some(0),
        ..KvPut::default()
    };
    assert!(client.kv_put(&key, b"one", &create).await.unwrap());
    assert!(
        !client.kv_put(&key, b"two", &create).await.unwrap(),
        "cas=0 must not overwrite"
    );
    let first = client.kv_get(&key).await.unwrap().unwrap();
    assert_eq!(first.value.as_deref(), Some(&b"one"[..]));

    let stale = KvPut {
        cas: Some(first.modify_index + 1000),
        ..KvPut::default()
    };
    assert!(!client.kv_put(&key, b"three", &stale).await.unwrap());
    let unchanged = client.kv_get(&key).await.unwrap().unwrap();
    assert_eq!(unchanged, first, "a CAS conflict changed the entry");

    let right = KvPut {
        cas: Some(first.modify_index),
        ..KvPut::default()
    };
    assert!(client.kv_put(&key, b"four", &right).await.unwrap());
    let second = client.kv_get(&key).await.unwrap().unwrap();
    assert_eq!(second.value_str(), "four");
    assert_eq!(second.create_index, first.create_index);
    assert!(second.modify_index > first.modify_index);

    // Lists, keys with separator, deletes.
    client
        .kv_put(&format!("{prefix}/sub/a"), b"", &KvPut::default())
        .await
        .unwrap();
    client
        .kv_put(&format!("{prefix}/sub/b"), b"x", &KvPut::default())
        .await
        .unwrap();
    let listed = client
        .kv_list(&format!("{prefix}/"), QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(listed.value.len(), 3);
    assert!(listed.index >= second.modify_index);
    let keys = client
        .kv_keys(&format!("{prefix}/"), Some("/"), QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(
        keys.value,
        [format!("{prefix}/config"), format!("{prefix}/sub/")]
    );

    let wrong_delete = KvDelete {
        cas: Some(second.modify_index + 1000),
        recurse: false,
    };
    assert!(!client.kv_delete(&key, &wrong_delete).await.unwrap());
    assert!(client.kv_get(&key).await.unwrap().is_some());
    let all = KvDelete {
        cas: None,
        recurse: true,
    };
    assert!(client.kv_delete(&format!("{prefix}/"), &all).await.unwrap());
    assert!(
        client
            .kv_list(&format!("{prefix}/"), QueryOptions::default())
            .await
            .unwrap()
            .value
            .is_empty()
    );
}

/// `/v1/txn` (api-docs/txn.mdx): all operations or none, every failure named, one index for
/// all writes, at most 128 operations.
#[tokio::test]
async fn a_transaction_applies_all_of_its_operations_or_none() {
    let agent = Agent::start("txn").await;
    let client = agent.client();
    let prefix = unique("txn");
    let (a, b, c) = (
        format!("{prefix}/a"),
        format!("{prefix}/b"),
        format!("{prefix}/c"),
    );
    let TxnOutcome::Committed(created) = client
        .txn(&[TxnOp::cas(&a, b"1", 0), TxnOp::cas(&b, b"1", 0)])
        .await
        .unwrap()
    else {
        panic!("creating two absent keys with cas 0 must commit")
    };
    assert_eq!(created.len(), 2);
    let ia = created[0].kv.as_ref().unwrap().modify_index;
    let ib = created[1].kv.as_ref().unwrap().modify_index;
    assert_eq!(ia, ib, "the writes of one transaction share its index");
    assert_eq!(
        created[0].kv.as_ref().unwrap().value,
        None,
        "cas answers no value"
    );

    // One stale operation: nothing of the others is applied, and it is named.
    let outcome = client
        .txn(&[
            TxnOp::cas(&a, b"2", ia),
            TxnOp::cas(&c, b"2", 0),
            TxnOp::cas(&b, b"2", ib + 1000),
        ])
        .await
        .unwrap();
    let TxnOutcome::RolledBack(errors) = outcome else {
        panic!("a stale cas must roll the transaction back: {outcome:?}")
    };
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].op_index, 2);
    assert!(
        errors[0].what.contains("index is stale"),
        "{}",
        errors[0].what
    );
    assert_eq!(client.kv_get(&a).await.unwrap().unwrap().value_str(), "1");
    assert_eq!(client.kv_get(&c).await.unwrap(), None);

    // Set one key, delete another, in one step.
    let TxnOutcome::Committed(_) = client
        .txn(&[TxnOp::cas(&a, b"3", ia), TxnOp::delete_cas(&b, ib)])
        .await
        .unwrap()
    else {
        panic!("a current cas and delete-cas must commit")
    };
    assert_eq!(client.kv_get(&a).await.unwrap().unwrap().value_str(), "3");
    assert_eq!(client.kv_get(&b).await.unwrap(), None);

    // More operations than Consul takes: refused whole (413), nothing written.
    let many: Vec<TxnOp> = (0..=TXN_MAX_OPS)
        .map(|i| TxnOp::cas(&format!("{prefix}/many/{i}"), b"x", 0))
        .collect();
    match client.txn(&many).await {
        Err(ConsulError::Unexpected {
            status: 413, body, ..
        }) => {
            assert!(body.contains("too many operations"), "{body}")
        }
        other => panic!(
            "{} operations must be refused with 413: {other:?}",
            many.len()
        ),
    }
    assert_eq!(
        client.kv_get(&format!("{prefix}/many/0")).await.unwrap(),
        None
    );
    client
        .kv_delete(
            &format!("{prefix}/"),
            &KvDelete {
                cas: None,
                recurse: true,
            },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn blocking_query_returns_within_200ms_of_a_change() {
    let agent = Agent::start("blocking").await;
    let client = agent.client();
    let key = format!("{}/watched", unique("block"));
    client
        .kv_put(&key, b"before", &KvPut::default())
        .await
        .unwrap();
    let current = client
        .kv_get_with(&key, QueryOptions::default())
        .await
        .unwrap();
    assert!(current.index > 0);

    // Nothing changes: the query waits out its `wait`.
    let start = Instant::now();
    let idle = client
        .kv_get_with(
            &key,
            QueryOptions::blocking(current.index, Duration::from_millis(500)),
        )
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "returned early: {:?}",
        start.elapsed()
    );
    assert_eq!(idle.index, current.index);

    // A change: the query returns right after it.
    let writer = client.clone();
    let writer_key = key.clone();
    let write = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        writer
            .kv_put(&writer_key, b"after", &KvPut::default())
            .await
            .unwrap();
        Instant::now()
    });
    let started = Instant::now();
    let changed = client
        .kv_get_with(
            &key,
            QueryOptions::blocking(current.index, Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let returned = Instant::now();
    let written = write.await.unwrap();
    assert!(
        returned.duration_since(started) >= Duration::from_millis(300),
        "returned before the change"
    );
    let lag = returned.saturating_duration_since(written);
    assert!(
        lag <= Duration::from_millis(200),
        "returned {lag:?} after the change"
    );
    assert!(changed.index > current.index);
    assert_eq!(changed.value.unwrap().value_str(), "after");
}

#[tokio::test]
async fn a_held_lock_cannot_be_taken_until_its_session_is_destroyed() {
    let agent = Agent::start("locks").await;
    let client = agent.client();
    let key = format!("{}/lock", unique("lock"));
    let request = |name: &str| SessionRequest {
        name: Some(name.into()),
        ttl: Some("15s".into()),
        behavior: Some(SessionBehavior::Release),
        lock_delay: Some("10ms".into()),
        ..SessionRequest::default()
    };
    let first = client.session_create(&request("first")).await.unwrap();
    let second = client.session_create(&request("second")).await.unwrap();
    assert_ne!(first, second);
    let info = client
        .session_info(&first)
        .await
        .unwrap()
        .expect("session exists");
    assert_eq!(info.behavior, SessionBehavior::Release);
    assert_eq!(info.ttl, "15s");
    assert!(client.session_renew(&first).await.unwrap().is_some());

    assert!(
        client
            .kv_acquire(&key, b"holder: first", &first)
            .await
            .unwrap()
    );
    assert!(
        !client
            .kv_acquire(&key, b"holder: second", &second)
            .await
            .unwrap(),
        "second session took a held lock"
    );
    let held = client.kv_get(&key).await.unwrap().unwrap();
    assert_eq!(held.session.as_deref(), Some(first.as_str()));
    assert_eq!(held.value_str(), "holder: first");
    assert_eq!(held.lock_index, 1);

    assert!(client.session_destroy(&first).await.unwrap());
    assert_eq!(client.session_info(&first).await.unwrap(), None);
    assert_eq!(client.session_renew(&first).await.unwrap(), None);
    let released = client.kv_get(&key).await.unwrap().unwrap();
    assert_eq!(
        released.session, None,
        "destroying the session did not release its lock"
    );
    tokio::time::sleep(Duration::from_millis(100)).await; // past the 10ms lock-delay
    assert!(
        client
            .kv_acquire(&key, b"holder: second", &second)
            .await
            .unwrap()
    );
    let taken = client.kv_get(&key).await.unwrap().unwrap();
    assert_eq!(taken.session.as_deref(), Some(second.as_str()));
    assert_eq!(taken.lock_index, 2);

    assert!(
        !client.kv_release(&key, b"", &first).await.unwrap(),
        "a non-holder released the lock"
    );
    assert!(client.kv_release(&key, b"free", &second).await.unwrap());
    assert_eq!(client.kv_get(&key).await.unwrap().unwrap().session, None);
    client.session_destroy(&second).await.unwrap();
    client.kv_delete(&key, &KvDelete::default()).await.unwrap();
}

#[tokio::test]
async fn a_request_without_the_token_gets_acl_denied() {
    let agent = Agent::start("acl").await;
    if agent.token.is_none() {
        say!(
            "acl: SKIPPED: the real agent has no FLEET_TEST_CONSUL_TOKEN, so ACLs are presumably off"
        );
        return;
    }
    let anonymous = ConsulClient::new(&agent.url, None, None).unwrap();
    let key = format!("{}/x", unique("acl"));
    let err = anonymous
        .kv_put(&key, b"x", &KvPut::default())
        .await
        .unwrap_err();
    match &err {
        ConsulError::AclDenied { request, .. } => {
            assert!(request.starts_with("PUT /v1/kv/"), "{request}")
        }
        other => panic!("expected AclDenied, got {other:?}"),
    }
    let wrong = ConsulClient::new(&agent.url, Some("not-the-token".into()), None).unwrap();
    let err = wrong
        .register_service(&ServiceRegistration {
            name: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ConsulError::AclDenied { .. }), "{err:?}");
    // With the token the same write goes through.
    assert!(
        agent
            .client()
            .kv_put(&key, b"x", &KvPut::default())
            .await
            .unwrap()
    );
    agent
        .client()
        .kv_delete(&key, &KvDelete::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn registrations_and_kv_survive_a_restart_with_a_data_dir() {
    if std::env::var("FLEET_TEST_CONSUL_ADDR").is_ok() {
        say!(
            "restart: the suite cannot restart a real agent, so this test runs on the stand-in only"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let config = consul_standin::Config {
        data_dir: Some(dir.path().to_path_buf()),
        ..consul_standin::Config::default()
    };
    let first = consul_standin::start(config.clone()).await.unwrap();
    say!(
        "restart: against the in-process Consul stand-in at {}",
        first.url()
    );
    let client = ConsulClient::new(&first.url(), None, None).unwrap();
    let registration = ServiceRegistration {
        id: Some("api-1".into()),
        name: "api".into(),
        tags: vec!["blue".into()],
        port: Some(8080),
        meta: [("fleet-spec".to_string(), "abc123".to_string())].into(),
        check: Some(CheckDefinition {
            ttl: Some("30s".into()),
            status: Some(CheckStatus::Passing),
            ..CheckDefinition::default()
        }),
        ..ServiceRegistration::default()
    };
    client.register_service(&registration).await.unwrap();
    client
        .kv_put("fleet/app/config", b"v=1", &KvPut::default())
        .await
        .unwrap();
    let before = client.kv_get("fleet/app/config").await.unwrap().unwrap();
    let services_before = client.agent_services().await.unwrap();
    first.shutdown().await;

    let second = consul_standin::start(config).await.unwrap();
    let client = ConsulClient::new(&second.url(), None, None).unwrap();
    let services_after = client.agent_services().await.unwrap();
    assert_eq!(services_after, services_before);
    assert!(
        client
            .agent_checks()
            .await
            .unwrap()
            .contains_key("service:api-1")
    );
    let after = client.kv_get("fleet/app/config").await.unwrap().unwrap();
    assert_eq!(after, before);
    // The index carries on from where it was.
    client
        .kv_put("fleet/app/other", b"", &KvPut::default())
        .await
        .unwrap();
    let other = client.kv_get("fleet/app/other").await.unwrap().unwrap();
    assert!(other.create_index > before.modify_index);
}
