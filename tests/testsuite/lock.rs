//! Deploy lock and release ledger: against the in-process Consul stand-in (like tests/testsuite/consul.rs)
//! and, for the no-Consul mode, the lock file and ledger on a testbed host.

use crate::support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet::consul::ConsulClient;
use fleet::host::{ConnectOptions, HostSession};
use fleet::release::ledger::{self, Release, ReleaseOutcome};
use fleet::release::lock::{self, DeployLock, Holder, LockError};

async fn standin() -> (consul_standin::Handle, ConsulClient) {
    let mut config = consul_standin::Config::default().fast_reaper();
    config.node = "locktest".into();
    let handle = consul_standin::start(config).await.expect("start stand-in");
    let client = ConsulClient::new(&handle.url(), None, None).unwrap();
    (handle, client)
}

fn holder(user: &str) -> Holder {
    Holder {
        user: user.into(),
        ..Holder::current()
    }
}

/// A holder on another machine: its lock can only expire (the killed-holder tests below).
fn elsewhere(user: &str) -> Holder {
    Holder {
        machine: "elsewhere.invalid".into(),
        ..holder(user)
    }
}

/// The pid of a process of this machine that has ended (and been waited for).
fn ended_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

#[tokio::test]
async fn a_second_deploy_is_refused_naming_the_holder_until_the_first_releases() {
    let (_agent, consul) = standin().await;
    let first = DeployLock::acquire(&consul, "shop", "prod", holder("alice"), "1 to replace")
        .await
        .unwrap();
    let err = DeployLock::acquire(&consul, "shop", "prod", holder("bob"), "2 to create")
        .await
        .err()
        .expect("a second deploy took a held lock");
    match &err {
        LockError::Held { holder, .. } => {
            assert_eq!(holder.user, "alice");
            assert_eq!(holder.summary, "1 to replace");
        }
        other => panic!("wrong error: {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("alice on "), "{msg}");
    assert!(msg.contains("plan: 1 to replace"), "{msg}");
    // Another environment has its own lock.
    let staging = DeployLock::acquire(&consul, "shop", "staging", holder("bob"), "")
        .await
        .unwrap();
    let (h, session) = lock::status(&consul, "shop", "prod")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.user, "alice");
    assert_eq!(Some(session.as_str()), first.session());
    first.release().await.unwrap();
    assert!(
        lock::status(&consul, "shop", "prod")
            .await
            .unwrap()
            .is_none()
    );
    let again = DeployLock::acquire(&consul, "shop", "prod", holder("bob"), "")
        .await
        .unwrap();
    again.release().await.unwrap();
    staging.release().await.unwrap();
    // A released lock leaves no key behind.
    for env in ["prod", "staging"] {
        let key = lock::lock_key("shop", env);
        assert!(consul.kv_get(&key).await.unwrap().is_none(), "{key} left");
    }
}

#[tokio::test]
async fn force_release_frees_a_lock_and_its_holder_notices() {
    let (_agent, consul) = standin().await;
    let held = DeployLock::acquire_consul(
        &consul,
        "shop",
        "prod",
        holder("alice"),
        "",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let was = lock::force_release(&consul, "shop", "prod").await.unwrap();
    assert_eq!(was.unwrap().user, "alice");
    assert!(
        lock::status(&consul, "shop", "prod")
            .await
            .unwrap()
            .is_none()
    );
    // The holder watches its key with a blocking query: it notices at once, long before
    // its next renewal (TTL/2 = 5 s).
    let t = Instant::now();
    while !held.is_lost() {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "the holder did not notice within a second"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let next = DeployLock::acquire(&consul, "shop", "prod", holder("bob"), "")
        .await
        .unwrap();
    next.release().await.unwrap();
    drop(held);
}

#[tokio::test]
async fn a_held_lock_stays_held_past_its_ttl_while_renewed() {
    let (_agent, consul) = standin().await;
    let ttl = Duration::from_secs(10);
    let held = DeployLock::acquire_consul(&consul, "shop", "prod", holder("alice"), "", ttl)
        .await
        .unwrap();
    tokio::time::sleep(ttl + Duration::from_secs(3)).await;
    assert!(!held.is_lost());
    assert!(matches!(
        DeployLock::acquire(&consul, "shop", "prod", holder("bob"), "").await,
        Err(LockError::Held { .. })
    ));
    held.release().await.unwrap();
}

/// The child half of `a_lock_whose_holder_was_killed_expires_within_its_ttl`: takes the lock
/// at FLEET_LOCK_CHILD_URL, says so, and waits to be killed. Does nothing when run alone.
#[tokio::test]
async fn lock_child() {
    let Ok(url) = std::env::var("FLEET_LOCK_CHILD_URL") else {
        return;
    };
    let consul = ConsulClient::new(&url, None, None).unwrap();
    // On another machine as far as the parent knows: its lock must expire, not be taken over.
    let held = DeployLock::acquire_consul(
        &consul,
        "shop",
        "prod",
        elsewhere("child"),
        "from the child",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    announce_acquired();
    tokio::time::sleep(Duration::from_secs(120)).await;
    drop(held);
}

#[tokio::test]
async fn a_lock_whose_holder_was_killed_expires_within_twice_its_ttl() {
    let (agent, consul) = standin().await;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lock::lock_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FLEET_LOCK_CHILD_URL", agent.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.split_once("ACQUIRED ")
                    .map(|(_, pid)| pid.trim().to_string())
            })
    })
    .await
    .unwrap()
    .expect("the child never took the lock");
    let pid: u32 = line.parse().unwrap();
    match DeployLock::acquire(&consul, "shop", "prod", holder("parent"), "").await {
        Err(LockError::Held { holder, .. }) => {
            assert_eq!(holder.pid, pid);
            assert_eq!(holder.summary, "from the child");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("took the child's lock"),
    }
    // SIGKILL: no release, no renewal from now on.
    let killed_at = Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    let taken = loop {
        match DeployLock::acquire(&consul, "shop", "prod", holder("parent"), "").await {
            Ok(l) => break l,
            Err(LockError::Held { .. }) => {
                // Consul invalidates a session at up to twice its TTL (session_ttl.go).
                assert!(
                    killed_at.elapsed() < Duration::from_secs(2 * 10 + 3),
                    "the dead holder's lock did not expire within 2x its TTL"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(
        killed_at.elapsed() > Duration::from_secs(3),
        "the lock expired too soon"
    );
    taken.release().await.unwrap();
}

/// A lock whose holder ran on this machine and no longer runs is taken over at once, naming
/// it; the same dead pid on another machine, or a live process here, still holds the lock.
#[tokio::test]
async fn a_lock_of_a_process_gone_from_this_machine_is_taken_over_at_once() {
    let (_agent, consul) = standin().await;
    let gone = ended_pid();
    // Its session still lives (as right after a SIGKILL, long before the TTL): only the
    // process is gone.
    let ttl = Duration::from_secs(60);
    let ghost = Holder {
        pid: gone,
        ..holder("ghost")
    };
    let ghost = DeployLock::acquire_consul(&consul, "shop", "prod", ghost, "", ttl)
        .await
        .unwrap();
    assert!(ghost.took_over().is_none());
    let t = Instant::now();
    let taken = DeployLock::acquire(&consul, "shop", "prod", holder("bob"), "")
        .await
        .expect("the lock of a process gone from this machine is taken over");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let from = taken
        .took_over()
        .expect("the new lock names whom it took over");
    assert_eq!((from.user.as_str(), from.pid), ("ghost", gone));
    assert_eq!(
        lock::status(&consul, "shop", "prod")
            .await
            .unwrap()
            .unwrap()
            .0
            .user,
        "bob"
    );
    while !ghost.is_lost() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the old holder never noticed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    taken.release().await.unwrap();
    drop(ghost);
    // The same dead pid on another machine: the lock only expires.
    let far = Holder {
        pid: gone,
        ..elsewhere("far")
    };
    let far = DeployLock::acquire_consul(&consul, "shop", "prod", far, "", ttl)
        .await
        .unwrap();
    assert!(matches!(
        DeployLock::acquire(&consul, "shop", "prod", holder("bob"), "").await,
        Err(LockError::Held { holder, .. }) if holder.user == "far"
    ));
    far.release().await.unwrap();
    // A live holder here (this process) holds it too.
    let alive = DeployLock::acquire(&consul, "shop", "prod", holder("alive"), "")
        .await
        .unwrap();
    assert!(matches!(
        DeployLock::acquire(&consul, "shop", "prod", holder("bob"), "").await,
        Err(LockError::Held { holder, .. }) if holder.user == "alive"
    ));
    alive.release().await.unwrap();
}

fn versions(v: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("web".to_string(), v.to_string())])
}

#[tokio::test]
async fn the_ledger_appends_with_cas_updates_lists_newest_first_and_keeps_fifty() {
    let (_agent, consul) = standin().await;
    let h = holder("alice");
    // Concurrent writers never clobber each other: every append gets its own id.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let consul = consul.clone();
        let r = Release::begin(&h, versions(&format!("v{i}")), "");
        tasks.push(tokio::spawn(async move {
            ledger::append(&consul, "shop", "prod", r).await.unwrap().id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=8).collect::<Vec<_>>());
    ledger::update(&consul, "shop", "prod", 3, ReleaseOutcome::Succeeded)
        .await
        .unwrap();
    ledger::update(&consul, "shop", "prod", 5, ReleaseOutcome::Succeeded)
        .await
        .unwrap();
    ledger::update(&consul, "shop", "prod", 6, ReleaseOutcome::Failed)
        .await
        .unwrap();
    let list = ledger::list(&consul, "shop", "prod").await.unwrap();
    assert_eq!(list.first().unwrap().id, 8);
    assert!(list.iter().find(|r| r.id == 6).unwrap().finished.is_some());
    let good = ledger::last_good(&consul, "shop", "prod", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(good.id, 5);
    let current = good.versions.clone();
    let before = ledger::last_good(&consul, "shop", "prod", Some(&current))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.id, 3);
    assert!(matches!(
        ledger::update(&consul, "shop", "prod", 99, ReleaseOutcome::Failed).await,
        Err(ledger::LedgerError::NoSuchRelease(99))
    ));
    for i in 0..50 {
        ledger::append(
            &consul,
            "shop",
            "prod",
            Release::begin(&h, versions(&format!("w{i}")), ""),
        )
        .await
        .unwrap();
    }
    let list = ledger::list(&consul, "shop", "prod").await.unwrap();
    assert_eq!(list.len(), ledger::KEEP);
    assert_eq!(list.first().unwrap().id, 58);
    assert_eq!(list.last().unwrap().id, 9);
}

// ---- without Consul: the lock file and ledger on a testbed host ----------------------------

async fn h1(tb: &support::Testbed) -> (Arc<HostSession>, ConnectOptions) {
    let target = fleet::desired::HostTarget {
        name: "h1".into(),
        address: tb.host("h1").address.clone(),
        user: Some("root".into()),
        port: None,
        identity_file: Some(tb.identity_file().display().to_string()),
        docker_socket: "/run/docker.sock".into(),
        roles: vec![],
    };
    let opts = ConnectOptions {
        ssh_config: Some(tb.ssh_config()),
        persist: None,
        ..ConnectOptions::default()
    };
    (
        Arc::new(HostSession::connect(&target, &opts).await.unwrap()),
        opts,
    )
}

#[tokio::test]
async fn host_lock_file_refuses_a_second_holder_and_goes_stale_after_expiry() {
    let Some(tb) = support::Testbed::get("host_lock_file") else {
        return;
    };
    let (host, _) = h1(&tb).await;
    let project = format!("locktest-{}", support::unique());
    let env = "prod";
    let first = DeployLock::acquire_on_host(
        host.clone(),
        &project,
        env,
        holder("alice"),
        "1 to replace",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    match DeployLock::acquire_on_host(
        host.clone(),
        &project,
        env,
        holder("bob"),
        "",
        Duration::from_secs(30),
    )
    .await
    {
        Err(LockError::Held { holder, .. }) => {
            assert_eq!(holder.user, "alice");
            assert_eq!(holder.summary, "1 to replace");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second holder took the lock file"),
    }
    let (h, _) = lock::status_on_host(&host, &project, env)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.user, "alice");
    first.release().await.unwrap();
    assert!(
        lock::status_on_host(&host, &project, env)
            .await
            .unwrap()
            .is_none()
    );

    // A holder that died: its file stays, but is stale after its expiry.
    let dead = DeployLock::acquire_on_host(
        host.clone(),
        &project,
        env,
        holder("dead"),
        "",
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    // Leaked (no release), as a killed holder leaves it; its renewer is stopped by the file
    // being replaced below (it then sees another token and gives up).
    std::mem::forget(dead);
    let path = lock::lock_file(&project, env);
    // Simulate the SIGKILL: rewrite the expiry to the past as a holder that stopped renewing.
    tb.ssh_ok(
        "h1",
        &format!("sed -i 's/^{{\"expires\":[0-9]*,/{{\"expires\":1,/' {path}"),
    );
    let taken = DeployLock::acquire_on_host(
        host.clone(),
        &project,
        env,
        holder("bob"),
        "",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(
        lock::status_on_host(&host, &project, env)
            .await
            .unwrap()
            .unwrap()
            .0
            .user,
        "bob"
    );
    let was = lock::force_release_on_host(&host, &project, env)
        .await
        .unwrap();
    assert_eq!(was.unwrap().user, "bob");
    // Its holder notices within seconds (it looks every 2 s), long before its renewal (15 s).
    let t = std::time::Instant::now();
    while !taken.is_lost() {
        assert!(
            t.elapsed() < Duration::from_secs(6),
            "a released host lock was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(taken.release().await.is_ok());
    tb.ssh_ok("h1", &format!("rm -f {path}"));
}

/// The child half of `host_lock_of_a_killed_process_expires`.
#[tokio::test]
async fn host_lock_child() {
    let Ok(project) = std::env::var("FLEET_LOCK_CHILD_PROJECT") else {
        return;
    };
    let tb = support::Testbed::get("host_lock_child").unwrap();
    let (host, _) = h1(&tb).await;
    let held = DeployLock::acquire_on_host(
        host,
        &project,
        "prod",
        elsewhere("child"),
        "",
        Duration::from_secs(4),
    )
    .await
    .unwrap();
    announce_acquired();
    tokio::time::sleep(Duration::from_secs(120)).await;
    drop(held);
}

#[tokio::test]
async fn host_lock_of_a_killed_process_expires() {
    let Some(tb) = support::Testbed::get("host_lock_killed") else {
        return;
    };
    let (host, _) = h1(&tb).await;
    let project = format!("locktest-{}", support::unique());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lock::host_lock_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FLEET_LOCK_CHILD_PROJECT", &project)
        .env("FLEET_TESTBED", &tb.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let pid = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.split_once("ACQUIRED ").map(|(_, p)| p.trim().to_string()))
    })
    .await
    .unwrap()
    .expect("the child never took the lock");
    // Past its 4s TTL, still held: the child renews it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    match DeployLock::acquire_on_host(
        host.clone(),
        &project,
        "prod",
        holder("bob"),
        "",
        Duration::from_secs(30),
    )
    .await
    {
        Err(LockError::Held { holder, .. }) => assert_eq!(holder.pid.to_string(), pid),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("took the live child's lock"),
    }
    let killed_at = Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    let taken = loop {
        match DeployLock::acquire_on_host(
            host.clone(),
            &project,
            "prod",
            holder("bob"),
            "",
            Duration::from_secs(30),
        )
        .await
        {
            Ok(l) => break l,
            Err(LockError::Held { .. }) => {
                assert!(
                    killed_at.elapsed() < Duration::from_secs(4 + 3),
                    "the dead holder's lock file never went stale"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    taken.release().await.unwrap();
    assert!(
        lock::status_on_host(&host, &project, "prod")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn host_ledger_appends_updates_and_lists() {
    let Some(tb) = support::Testbed::get("host_ledger") else {
        return;
    };
    let (host, _) = h1(&tb).await;
    let project = format!("locktest-{}", support::unique());
    let h = holder("alice");
    let a = ledger::append_on_host(
        &host,
        &project,
        "prod",
        Release::begin(&h, versions("v1"), "first"),
    )
    .await
    .unwrap();
    let b = ledger::append_on_host(
        &host,
        &project,
        "prod",
        Release::begin(&h, versions("v2"), "second"),
    )
    .await
    .unwrap();
    assert_eq!((a.id, b.id), (1, 2));
    ledger::update_on_host(&host, &project, "prod", 1, ReleaseOutcome::Succeeded)
        .await
        .unwrap();
    ledger::update_on_host(&host, &project, "prod", 2, ReleaseOutcome::Failed)
        .await
        .unwrap();
    let list = ledger::list_on_host(&host, &project, "prod").await.unwrap();
    assert_eq!(list.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2, 1]);
    assert_eq!(list[0].outcome, ReleaseOutcome::Failed);
    assert_eq!(
        ledger::newest_good(&list, None).unwrap().versions,
        versions("v1")
    );
    for i in 0..52 {
        ledger::append_on_host(
            &host,
            &project,
            "prod",
            Release::begin(&h, versions(&format!("w{i}")), ""),
        )
        .await
        .unwrap();
    }
    let list = ledger::list_on_host(&host, &project, "prod").await.unwrap();
    assert_eq!(list.len(), ledger::KEEP);
    assert_eq!(list[0].id, 54);
    let lines = tb.ssh_ok(
        "h1",
        &format!("wc -l < {}", ledger::ledger_file(&project, "prod")),
    );
    assert!(
        lines.parse::<usize>().unwrap() <= ledger::KEEP,
        "{lines} lines kept"
    );
    tb.ssh_ok(
        "h1",
        &format!("rm -f {}", ledger::ledger_file(&project, "prod")),
    );
}

/// The lock file of a process gone from this machine is taken over at once, naming it.
#[tokio::test]
async fn host_lock_of_a_process_gone_from_this_machine_is_taken_over_at_once() {
    let Some(tb) = support::Testbed::get("host_lock_takeover") else {
        return;
    };
    let (host, _) = h1(&tb).await;
    let project = format!("locktest-{}", support::unique());
    let gone = ended_pid();
    let ttl = Duration::from_secs(60);
    let ghost = Holder {
        pid: gone,
        ..holder("ghost")
    };
    let ghost = DeployLock::acquire_on_host(host.clone(), &project, "prod", ghost, "", ttl)
        .await
        .unwrap();
    let far = Holder {
        pid: gone,
        ..elsewhere("far")
    };
    let other = format!("{project}-far");
    let far = DeployLock::acquire_on_host(host.clone(), &other, "prod", far, "", ttl)
        .await
        .unwrap();
    let taken = DeployLock::acquire_on_host(host.clone(), &project, "prod", holder("bob"), "", ttl)
        .await
        .expect("the lock file of a process gone from this machine is taken over");
    let from = taken
        .took_over()
        .expect("the new lock names whom it took over");
    assert_eq!((from.user.as_str(), from.pid), ("ghost", gone));
    // On another machine, the same dead pid still holds its lock until it expires.
    assert!(matches!(
        DeployLock::acquire_on_host(host.clone(), &other, "prod", holder("bob"), "", ttl).await,
        Err(LockError::Held { holder, .. }) if holder.user == "far"
    ));
    taken.release().await.unwrap();
    far.release().await.unwrap();
    drop(ghost);
    assert!(
        lock::status_on_host(&host, &project, "prod")
            .await
            .unwrap()
            .is_none()
    );
}

/// Tells the parent test that this child process holds the lock. Straight to the stdout
/// handle: the harness's capture would keep a `println!` from the parent.
fn announce_acquired() {
    use std::io::Write as _;
    let mut out = std::io::stdout();
    writeln!(out, "\nACQUIRED {}", std::process::id()).unwrap();
    out.flush().unwrap();
}
