//! `fleet deploy` / `fleet rollback` end to end on the testbed (issue 7's acceptance), through
//! the real binary. One sequential story keeps the runtime modest (short intervals, a 10 s
//! health deadline): v1 -> no changes -> v2 under a client loop -> v3 failing -> SIGKILL
//! mid-rollout -> converge -> rollback to v1.
//!
//! Each run uses its own project name (`fdt<pid>`), so it never touches what other tests or
//! helpers deploy on the shared testbed, and removes its containers and registrations at the end.

use crate::support;
use crate::support::project;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use project::{Agents, Project, containers, text};
use support::Testbed;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_story_v1_v2_v3_kill_rollback() {
    let Some(tb) = Testbed::get("deploy_story") else {
        return;
    };
    let p = Project::new(&tb);
    let _cleanup = p.cleanup(&tb);
    let agents = Agents::open(&tb).await;

    // v1: every instance healthy and registered, passing.
    p.set_version("v1");
    let v1 = p.tag();
    let o = p.run(&tb, &["deploy", "production", "--yes"]);
    assert!(o.status.success(), "v1 deploy failed:\n{}", text(&o));
    let passing = agents.passing(&p.name).await;
    for (h, list) in tb.hosts.iter().zip(&passing) {
        assert_eq!(
            list.len(),
            1,
            "{}: one passing instance: {list:?}; registered: {:?}\n{}",
            h.name,
            agents.all(&p.name).await,
            text(&o)
        );
        assert_eq!(list[0].0, h.address);
        assert_eq!(list[0].2, v1);
        let body = agents.get(&list[0].0, list[0].1).await.unwrap();
        assert!(body.contains("version: v1"), "{body}");
    }
    let ids: Vec<_> = tb
        .hosts
        .iter()
        .map(|h| containers(&tb, &h.name, &p.name))
        .collect();

    // Second deploy: "No changes", nothing touched.
    let o = p.run(&tb, &["deploy", "production", "--yes"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("No changes"), "{}", text(&o));
    let again: Vec<_> = tb
        .hosts
        .iter()
        .map(|h| containers(&tb, &h.name, &p.name))
        .collect();
    assert_eq!(ids, again, "a deploy without changes touched containers");

    // v2 with a client looking instances up in Consul and calling them the whole time.
    p.set_version("v2");
    let v2 = p.tag();
    let done = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let agents = Arc::new(agents);
    let client = {
        let (done, ok, failed, agents, project) = (
            done.clone(),
            ok.clone(),
            failed.clone(),
            agents.clone(),
            p.name.clone(),
        );
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                for list in agents.passing(&project).await {
                    for (addr, port, _) in list {
                        match agents.get(&addr, port).await {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => failed.lock().unwrap().push(format!("{addr}:{port}: {e}")),
                        }
                    }
                }
            }
        })
    };
    let o = p.run(&tb, &["deploy", "production", "--yes"]);
    done.store(true, Ordering::SeqCst);
    client.await.unwrap();
    assert!(o.status.success(), "v2 deploy failed:\n{}", text(&o));
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} failed requests during the v2 rollout ({} ok): {failed:?}",
        failed.len(),
        ok.load(Ordering::SeqCst)
    );
    assert!(ok.load(Ordering::SeqCst) > 10, "the client loop barely ran");
    for list in agents.passing(&p.name).await {
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].2, v2);
    }

    // v3 fails its health check: exit 1, report names the instance, v2 still serves.
    p.set_version("v3");
    let start = std::fs::read_to_string(p.root.join("app/start.sh")).unwrap();
    std::fs::write(
        p.root.join("app/start.sh"),
        start.replace(
            "$b cp /app/www/health /www/health",
            "echo 'v3: no health file today' >&2",
        ),
    )
    .unwrap();
    let o = p.run(&tb, &["deploy", "production", "--yes"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "v3 must fail:\n{out}");
    assert!(out.contains("FAILED: hello#1 on h"), "{out}");
    assert!(
        out.contains("v3: no health file today"),
        "stderr tail: {out}"
    );
    for (h, list) in tb.hosts.iter().zip(agents.passing(&p.name).await) {
        assert_eq!(list.len(), 1, "{}: {list:?}", h.name);
        assert_eq!(list[0].2, v2, "only v2 passing on {}", h.name);
        let body = agents.get(&list[0].0, list[0].1).await.unwrap();
        assert!(body.contains("version: v2"));
    }
    let regs = agents.all(&p.name).await;
    assert_eq!(regs.len(), 3, "no v3 registration left: {regs:?}");
    std::fs::write(p.root.join("app/start.sh"), &start).unwrap();

    // SIGKILL in the middle of a rollout: every instance still answers; the next deploy
    // completes and leaves one container per instance.
    p.set_version("v4");
    let v4 = p.tag();
    // Build + push first, so the kill lands in the rollout.
    let o = p.run(&tb, &["build", "--push"]);
    assert!(o.status.success(), "{}", text(&o));
    let mut child = p
        .fleet(&tb, &["deploy", "production", "--yes", "--no-build"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for (h, list) in tb.hosts.iter().zip(agents.passing(&p.name).await) {
        assert!(
            !list.is_empty(),
            "{}: nothing passing after the kill",
            h.name
        );
        for (addr, port, _) in list {
            agents
                .get(&addr, port)
                .await
                .unwrap_or_else(|e| panic!("{} does not answer after the kill: {e}", h.name));
        }
    }
    // The killed deploy's lock is not renewed any more: it expires within its TTL by itself.
    p.wait_lock_free(&tb, Duration::from_secs(40));
    let o = p.run(&tb, &["deploy", "production", "--yes", "--no-build"]);
    assert!(o.status.success(), "deploy after the kill:\n{}", text(&o));
    // The killed deploy's release does not stay "in progress": the next deploy closes it.
    let releases = p.releases(&tb);
    assert!(
        releases.iter().all(|r| r["outcome"] != "in-progress"),
        "{releases:#?}"
    );
    for h in &tb.hosts {
        let c = containers(&tb, &h.name, &p.name);
        assert_eq!(c.len(), 1, "{}: {c:?}", h.name);
        assert_eq!(c[0].1, v4);
    }
    let o = p.run(&tb, &["deploy", "production", "--yes", "--no-build"]);
    assert!(text(&o).contains("No changes"), "{}", text(&o));

    // Rollback to v1.
    let o = p.run(&tb, &["rollback", "production", "--to", &v1, "--yes"]);
    assert!(o.status.success(), "rollback:\n{}", text(&o));
    for list in agents.passing(&p.name).await {
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].2, v1);
        let body = agents.get(&list[0].0, list[0].1).await.unwrap();
        assert!(body.contains("version: v1"));
    }
    // And a plain rollback returns to the release before (v4).
    let o = p.run(&tb, &["rollback", "production", "--yes"]);
    assert!(o.status.success(), "rollback:\n{}", text(&o));
    for list in agents.passing(&p.name).await {
        assert_eq!(list[0].2, v4);
    }
    match Arc::try_unwrap(agents) {
        Ok(a) => a.close().await,
        Err(_) => panic!("agents still shared"),
    }
}

/// Two deploys started together: one takes the lock and deploys, the other is refused at once
/// (exit 1) naming the holder (user, machine, pid) and since when; the ledger has one release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deploys_at_once_one_is_refused_naming_the_holder() {
    let Some(tb) = Testbed::get("deploy_lock_race") else {
        return;
    };
    let p = Project::named(&tb, "fdl");
    let _cleanup = p.cleanup(&tb);
    p.one_host();
    // The winner holds the lock through a slow pre_deploy hook, so the two surely overlap.
    p.project_line("pre_deploy = [\"sleep 2\"]");
    p.set_version("race");
    let o = p.run(&tb, &["build", "--push"]);
    assert!(o.status.success(), "{}", text(&o));
    let spawn = || {
        p.fleet(&tb, &["deploy", "production", "--yes", "--no-build"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let pids = [a.id(), b.id()];
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let ok: Vec<usize> = (0..2).filter(|&i| outs[i].status.success()).collect();
    assert_eq!(
        ok.len(),
        1,
        "exactly one deploy proceeds:\n--- a ---\n{}\n--- b ---\n{}",
        text(&outs[0]),
        text(&outs[1])
    );
    let (winner, loser) = (ok[0], 1 - ok[0]);
    let refused = text(&outs[loser]);
    assert_eq!(outs[loser].status.code(), Some(1), "{refused}");
    assert!(
        refused.contains("another deploy holds the lock"),
        "{refused}"
    );
    assert!(
        refused.contains(&format!("(pid {}", pids[winner])),
        "the refusal names the holder's pid {}: {refused}",
        pids[winner]
    );
    assert!(refused.contains("since "), "{refused}");
    assert!(
        !refused.contains("[pre_deploy]"),
        "the refused deploy ran hooks: {refused}"
    );
    // One release, succeeded; the lock is free again.
    let rel = p.releases(&tb);
    assert_eq!(rel.len(), 1, "{rel:?}");
    assert_eq!(rel[0]["outcome"], "succeeded");
    let o = p.run(&tb, &["lock", "status", "production"]);
    assert!(text(&o).contains("is free"), "{}", text(&o));
    assert_eq!(containers(&tb, "h1", &p.name).len(), 1);
}

/// A failing pre_deploy hook stops the deploy before anything changes: exit 1, the commands
/// after it do not run, no container, no release, the lock free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pre_deploy_hook_changes_nothing() {
    let Some(tb) = Testbed::get("deploy_pre_hook") else {
        return;
    };
    let p = Project::named(&tb, "fdh");
    let _cleanup = p.cleanup(&tb);
    p.one_host();
    let marker = p.root.join("after-the-failure");
    p.project_line(&format!(
        "pre_deploy = [\"echo checking $FLEET_ENV $FLEET_APPS\", \"exit 3\", \"touch {}\"]",
        marker.display()
    ));
    p.set_version("hook");
    let o = p.run(&tb, &["deploy", "production", "--yes"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("[pre_deploy] checking production hello"),
        "{out}"
    );
    assert!(
        out.contains("the pre_deploy hook `exit 3` failed with exit code 3"),
        "{out}"
    );
    assert!(out.contains("nothing was changed"), "{out}");
    assert!(!marker.exists(), "a command after the failing one ran");
    assert!(
        containers(&tb, "h1", &p.name).is_empty(),
        "a container was created"
    );
    assert!(p.releases(&tb).is_empty());
    let o = p.run(&tb, &["lock", "status", "production"]);
    assert!(text(&o).contains("is free"), "{}", text(&o));
}

/// A hook cannot hold the deploy and its lock: a background process it leaves with its output
/// open is stopped when the hook exits (the deploy goes on), and a hook past
/// `FLEET_HOOK_TIMEOUT` is stopped and fails the deploy, nothing changed, the lock free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_cannot_hold_the_deploy_and_its_lock() {
    let Some(tb) = Testbed::get("deploy_hook_bounded") else {
        return;
    };
    let p = Project::named(&tb, "fhb");
    let _cleanup = p.cleanup(&tb);
    p.one_host();
    p.project_line(
        "pre_deploy = \"(sleep 120; echo late) & echo started; printf 'caf\\\\351\\\\n'\"",
    );
    p.set_version("bg");
    let t0 = std::time::Instant::now();
    let o = p.run(&tb, &["deploy", "production", "--yes"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "the deploy waited for the hook's background child: {:?}",
        t0.elapsed()
    );
    assert!(out.contains("[pre_deploy] started"), "{out}");
    assert!(out.contains("[pre_deploy] caf\u{fffd}"), "{out}");
    assert!(!out.contains("late"), "{out}");
    assert_eq!(containers(&tb, "h1", &p.name).len(), 1);

    p.edit(|t| {
        t.replace(
            "(sleep 120; echo late) & echo started",
            "echo slow; sleep 120",
        )
    });
    p.set_version("slow");
    let t0 = std::time::Instant::now();
    let o = p
        .fleet(&tb, &["deploy", "production", "--yes"])
        .env("FLEET_HOOK_TIMEOUT", "2s")
        .output()
        .unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    assert!(out.contains("[pre_deploy] slow"), "{out}");
    assert!(out.contains("finish within 2s"), "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    let versions: Vec<String> = containers(&tb, "h1", &p.name)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
    let o = p.run(&tb, &["lock", "status", "production"]);
    assert!(text(&o).contains("is free"), "{}", text(&o));
}

/// The ledger: a deploy, another, a failed one; `fleet releases` lists them with outcomes;
/// `fleet rollback` (no version) returns to the last good release other than the current one;
/// post_deploy runs after each successful apply only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_list_outcomes_and_rollback_uses_the_ledger() {
    let Some(tb) = Testbed::get("deploy_ledger") else {
        return;
    };
    let p = Project::named(&tb, "fdr");
    let _cleanup = p.cleanup(&tb);
    p.one_host();
    let log = p.root.join("post.log");
    p.project_line(&format!(
        "post_deploy = \"echo $FLEET_OUTCOME $FLEET_VERSION >> {}\"",
        log.display()
    ));
    let mut tags = Vec::new();
    for v in ["r1", "r2"] {
        p.set_version(v);
        tags.push(p.tag());
        let o = p.run(&tb, &["deploy", "production", "--yes"]);
        assert!(o.status.success(), "{v}:\n{}", text(&o));
    }
    let start = std::fs::read_to_string(p.root.join("app/start.sh")).unwrap();
    p.break_health();
    p.set_version("r3");
    let bad = p.tag();
    let o = p.run(&tb, &["deploy", "production", "--yes"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    std::fs::write(p.root.join("app/start.sh"), &start).unwrap();

    let rel = p.releases(&tb);
    let seen: Vec<(String, String)> = rel
        .iter()
        .map(|r| {
            (
                r["versions"]["hello"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(seen.len(), 3, "{rel:?}");
    assert_eq!(seen[0].0, bad);
    assert!(
        seen[0].1 == "failed" || seen[0].1 == "rolled-back",
        "{seen:?}"
    );
    assert_eq!(seen[1], (tags[1].clone(), "succeeded".to_string()));
    assert_eq!(seen[2], (tags[0].clone(), "succeeded".to_string()));
    let ids: Vec<u64> = rel.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert!(ids[0] > ids[1] && ids[1] > ids[2], "newest first: {ids:?}");
    let o = p.run(&tb, &["releases", "production"]);
    let table = text(&o);
    assert!(table.contains("OUTCOME"), "{table}");
    assert!(table.contains(&format!("hello={}", tags[0])), "{table}");
    assert!(table.contains("succeeded"), "{table}");

    // What runs is r2 (the failed r3 was rolled back): rollback returns to r1.
    let o = p.run(&tb, &["rollback", "production", "--yes"]);
    let out = text(&o);
    assert!(o.status.success(), "rollback:\n{out}");
    assert!(
        out.contains(&format!("rollback: to release {}", ids[2])),
        "{out}"
    );
    let c = containers(&tb, "h1", &p.name);
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].1, tags[0]);
    let rel = p.releases(&tb);
    assert_eq!(rel[0]["outcome"], "succeeded");
    assert_eq!(rel[0]["versions"]["hello"], tags[0].as_str());
    assert!(
        rel[0]["summary"].as_str().unwrap().starts_with("rollback:"),
        "{:?}",
        rel[0]
    );
    // post_deploy ran after r1, r2 and the rollback; not after the failed r3.
    let posts = std::fs::read_to_string(&log).unwrap();
    let expect: Vec<String> = [&tags[0], &tags[1], &tags[0]]
        .iter()
        .map(|t| format!("succeeded hello={t}"))
        .collect();
    assert_eq!(posts.lines().collect::<Vec<_>>(), expect, "{posts}");
}

/// `--canary 1`: a version that fails its health check touches only the canary host, which is
/// rolled back; the other hosts are never started on it and keep serving the old version.
#[test]
fn e2e_a_failing_canary_leaves_the_other_hosts_untouched() {
    let Some(tb) = Testbed::get("e2e_a_failing_canary_leaves_the_other_hosts_untouched") else {
        return;
    };
    let p = Project::named(&tb, "fcn");
    let _cleanup = p.cleanup(&tb);
    p.set_version("v1");
    let o = p.run(&tb, &["deploy", "production", "--yes", "--canary", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("canary"),
        "the canary wave is announced: {}",
        text(&o)
    );
    let before: Vec<_> = tb
        .hosts
        .iter()
        .map(|h| containers(&tb, &h.name, &p.name))
        .collect();
    assert!(before.iter().all(|c| c.len() == 1), "{before:?}");

    p.set_version("v2");
    p.break_health();
    let o = p.run(
        &tb,
        &["deploy", "production", "--yes", "--canary", "1", "--json"],
    );
    assert!(
        !o.status.success(),
        "a failing canary fails the deploy: {}",
        text(&o)
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("--json report: {e}: {}", text(&o)));
    assert_eq!(report["failures"][0]["host"], "h1", "{report:#}");
    assert_eq!(
        report["not_started"],
        serde_json::json!(["h2", "h3"]),
        "{report:#}"
    );
    // h1 is back on its old container; h2 and h3 were never touched.
    let after: Vec<_> = tb
        .hosts
        .iter()
        .map(|h| containers(&tb, &h.name, &p.name))
        .collect();
    assert_eq!(after[1..], before[1..], "hosts after the canary changed");
    assert_eq!(after[0].len(), 1, "h1: {:?}", after[0]);
    assert_eq!(
        after[0][0].1, before[0][0].1,
        "h1 is rolled back to v1's version"
    );
}
