use super::*;
use crate::desired::{EnvValue, SecretRef};
use crate::observe::{ContainerState, Fault, ObservedContainer};
use crate::plan::fixtures::*;
use crate::plan::{Action, KvAction, ServiceAction};

/// (host, app, instance, action, reason fields).
type Row = (String, String, Option<u32>, Action, Vec<String>);

/// Every instance change that is not `unchanged`.
fn changes(p: &Plan) -> Vec<Row> {
    p.hosts
        .iter()
        .flat_map(|h| {
            h.instances
                .iter()
                .filter(|i| i.action != Action::Unchanged)
                .map(move |i| {
                    (
                        h.name.clone(),
                        i.app.clone(),
                        i.instance,
                        i.action,
                        i.reasons.iter().map(|r| r.field.clone()).collect(),
                    )
                })
        })
        .collect()
}

fn services(p: &Plan) -> Vec<(String, String, ServiceAction, Vec<String>)> {
    p.hosts
        .iter()
        .flat_map(|h| {
            h.services
                .iter()
                .filter(|s| s.action != ServiceAction::Unchanged)
                .map(move |s| {
                    (
                        h.name.clone(),
                        s.id.clone(),
                        s.action,
                        s.reasons.iter().map(|r| r.detail.clone()).collect(),
                    )
                })
        })
        .collect()
}

fn c(host: &str, app: &str, i: Option<u32>, a: Action, r: &[&str]) -> Row {
    (
        host.into(),
        app.into(),
        i,
        a,
        r.iter().map(|s| s.to_string()).collect(),
    )
}

#[test]
fn right_after_a_deploy_there_are_no_changes() {
    let d = desired();
    let p = diff(&d, &deployed(&d));
    assert!(!p.has_changes(), "{p:#?}");
    assert_eq!(p.summary().unchanged, 6);
    assert_eq!(p.detailed_exit_code(), 0);
}

#[test]
fn an_empty_environment_creates_everything() {
    let d = desired();
    let p = diff(&d, &empty(&d));
    let s = p.summary();
    assert_eq!((s.create, s.register, s.kv_put, s.unchanged), (6, 4, 2, 0));
    assert_eq!(p.detailed_exit_code(), 2);
}

#[test]
fn instance_level_table() {
    type Edit = fn(&mut crate::desired::DesiredState, &mut crate::observe::ObservedState);
    let table: Vec<(&str, Edit, Vec<Row>)> = vec![
        (
            "new version",
            |d, _| {
                for h in &mut d.hosts {
                    for i in h.instances.iter_mut().filter(|i| i.app == "worker") {
                        *i = instance(&h.target.name, "worker", 1, "v2");
                    }
                }
            },
            vec![
                c("h1", "worker", Some(1), Action::Replace, &["version"]),
                c("h2", "worker", Some(1), Action::Replace, &["version"]),
            ],
        ),
        (
            "env var added and secret reference changed",
            |d, _| {
                let i = &mut d.hosts[0].instances[0];
                i.container
                    .env
                    .insert("NEW".into(), EnvValue::Plain("x".into()));
                i.container.env.insert(
                    "DB_PASSWORD".into(),
                    EnvValue::Secret(SecretRef::File("/etc/pw".to_string().into())),
                );
                rehash(i);
            },
            vec![c("h1", "web", Some(1), Action::Replace, &["env"])],
        ),
        (
            "an accessory's replace says it has a gap",
            |d, _| {
                d.apps[1].accessory = true;
                let i = &mut d.hosts[0].instances[2];
                i.container.volumes = vec!["data:/data".into(), "/etc/x:/x:ro".into()];
                rehash(i);
            },
            vec![c(
                "h1",
                "worker",
                Some(1),
                Action::Replace,
                &["volumes", "gap"],
            )],
        ),
        (
            "ports, memory and restart",
            |d, _| {
                let i = &mut d.hosts[1].instances[1];
                i.container.ports[0].host = 9999;
                i.container.memory = Some(512 << 20);
                i.container.restart = crate::desired::RestartPolicy::Always;
                rehash(i);
            },
            vec![c(
                "h2",
                "web",
                Some(2),
                Action::Replace,
                &["memory", "ports", "restart"],
            )],
        ),
        (
            "same fields, other spec hash: a secret's value",
            |d, _| {
                d.hosts[0].instances[2].spec_hash = "0123456789ab".into();
            },
            vec![c("h1", "worker", Some(1), Action::Replace, &["secret"])],
        ),
        (
            "container without the fields label: spec hashes",
            |d, o| {
                o.hosts[0].containers[2].fields = None;
                d.hosts[0].instances[2].spec_hash = "0123456789ab".into();
            },
            vec![c("h1", "worker", Some(1), Action::Replace, &["spec"])],
        ),
        (
            "container removed by hand",
            |_, o| {
                o.hosts[1].containers.remove(0);
            },
            vec![c("h2", "web", Some(1), Action::Create, &[])],
        ),
        (
            "exited container",
            |_, o| {
                o.hosts[0].containers[1].state = ContainerState::Exited;
            },
            vec![c("h1", "web", Some(2), Action::Start, &["state"])],
        ),
        (
            "count lowered",
            |d, _| {
                d.hosts[0].instances.remove(1);
            },
            vec![c("h1", "web", Some(2), Action::Remove, &["count"])],
        ),
        (
            "app removed from the manifest",
            |d, _| {
                d.apps.retain(|a| a.name != "worker");
                for h in &mut d.hosts {
                    h.instances.retain(|i| i.app != "worker");
                }
            },
            vec![
                c("h1", "worker", Some(1), Action::Remove, &["app"]),
                c("h2", "worker", Some(1), Action::Remove, &["app"]),
            ],
        ),
        (
            "app moved off a host",
            |d, _| {
                d.hosts[1].instances.retain(|i| i.app != "worker");
            },
            vec![c("h2", "worker", Some(1), Action::Remove, &["host"])],
        ),
        (
            "two containers for one instance: keep the matching one",
            |d, o| {
                let old = instance("h1", "web", 1, "v0");
                let mut stale = container_for(d, &old, 1);
                stale.state = ContainerState::Exited;
                o.hosts[0].containers.push(stale);
            },
            vec![c("h1", "web", Some(1), Action::Remove, &["duplicate"])],
        ),
        (
            "unreadable labels",
            |_, o| {
                let mut x: ObservedContainer = o.hosts[0].containers[0].clone();
                x.id = "zzz".into();
                x.instance = None;
                o.hosts[0].containers.push(x);
            },
            vec![c("h1", "web", None, Action::Remove, &["labels"])],
        ),
        (
            "what Docker fills in is invisible: image id, health, status",
            |_, o| {
                o.hosts[0].containers[0].health = crate::observe::Health::Starting;
                o.hosts[0].containers[1].state = ContainerState::Restarting;
            },
            vec![],
        ),
    ];
    for (name, edit, want) in table {
        let mut d = desired();
        let mut o = deployed(&d);
        edit(&mut d, &mut o);
        let p = diff(&d, &o);
        assert_eq!(changes(&p), want, "case: {name}");
    }
}

#[test]
fn replace_reasons_say_what_changed_without_values() {
    let mut d = desired();
    let o = deployed(&d);
    let i = &mut d.hosts[0].instances[0];
    i.container.env.shift_remove("LOG");
    i.container.env.insert(
        "DB_PASSWORD".into(),
        EnvValue::Secret(SecretRef::Env("OTHER".into())),
    );
    i.container.command = Some(vec!["httpd".into(), "-f".into()]);
    rehash(i);
    let p = diff(&d, &o);
    let r = &p.hosts[0].instances[0].reasons;
    let text: Vec<String> = r
        .iter()
        .map(|r| format!("{}: {}", r.field, r.detail))
        .collect();
    assert_eq!(
        text,
        vec![
            r#"command: changed (now ["httpd", "-f"])"#.to_string(),
            "env: ~DB_PASSWORD (secret), -LOG".into(),
        ]
    );
}

#[test]
fn version_and_other_repository() {
    let mut d = desired();
    let o = deployed(&d);
    let i = &mut d.hosts[0].instances[0];
    i.version = "v2".into();
    i.container.image = "elsewhere/web:v2".into();
    rehash(i);
    let p = diff(&d, &o);
    let r: Vec<String> = p.hosts[0].instances[0]
        .reasons
        .iter()
        .map(|r| format!("{}: {}", r.field, r.detail))
        .collect();
    assert_eq!(
        r,
        vec![
            "version: v1 -> v2".to_string(),
            "image: 10.200.1.1:5000/shop/web:v1 -> elsewhere/web:v2".into()
        ]
    );
}

#[test]
fn consul_table() {
    // Stale registration whose container is gone (instance 3 was removed by hand long ago).
    let mut d = desired();
    let mut o = deployed(&d);
    let ghost = instance("h1", "web", 3, "v1");
    o.hosts[0]
        .services
        .as_mut()
        .unwrap()
        .push(service_for(&ghost));
    // Tags changed for h2's web#1; h2's web#2 never registered.
    d.hosts[1].instances[0].service.as_mut().unwrap().tags = vec!["prod".into(), "v1".into()];
    o.hosts[1]
        .services
        .as_mut()
        .unwrap()
        .retain(|s| !s.id.ends_with("-2"));
    let p = diff(&d, &o);
    assert_eq!(
        services(&p),
        vec![
            (
                "h1".into(),
                "shop-prod-web-h1-3".into(),
                ServiceAction::Deregister,
                vec!["its container is gone".into()]
            ),
            (
                "h2".into(),
                "shop-prod-web-h2-1".into(),
                ServiceAction::Update,
                vec!["[prod] -> [prod, v1]".into()]
            ),
            (
                "h2".into(),
                "shop-prod-web-h2-2".into(),
                ServiceAction::Register,
                vec!["not registered".into()]
            ),
        ]
    );
    // Tag order is not drift.
    let mut d = desired();
    let o = deployed(&d);
    d.hosts[0].instances[0].service.as_mut().unwrap().tags = vec![];
    let mut o2 = o.clone();
    o2.hosts[0].services.as_mut().unwrap()[0].tags = vec![];
    assert!(!diff(&d, &o2).has_changes());
}

#[test]
fn app_removed_deregisters_its_services_with_the_app_reason() {
    let mut d = desired();
    let o = deployed(&d);
    d.apps.retain(|a| a.name != "web");
    for h in &mut d.hosts {
        h.instances.retain(|i| i.app != "web");
    }
    let p = diff(&d, &o);
    let s = services(&p);
    assert_eq!(s.len(), 4);
    assert!(s.iter().all(|(_, _, a, r)| *a == ServiceAction::Deregister
        && r == &vec!["app no longer in the manifest".to_string()]));
}

#[test]
fn kv_table() {
    let mut d = desired();
    let mut o = deployed(&d);
    d.apps[0]
        .config
        .insert("shop/prod/web/greeting".into(), "bonjour".into());
    d.apps[0]
        .config
        .insert("shop/prod/web/new".into(), "1".into());
    let kv = &mut o.kv.as_mut().unwrap().entries;
    kv.insert("shop/prod/old/x".into(), "d".into());
    kv.insert("shop/prod/_fleet/lock".into(), "d".into());
    kv.insert("other/prod/x".into(), "d".into());
    let p = diff(&d, &o);
    let got: Vec<(String, KvAction, String)> =
        p.kv.iter()
            .filter(|k| k.action != KvAction::Unchanged)
            .map(|k| (k.key.clone(), k.action, k.reason.clone()))
            .collect();
    assert_eq!(
        got,
        vec![
            (
                "shop/prod/old/x".into(),
                KvAction::Delete,
                "no longer in the manifest".into()
            ),
            (
                "shop/prod/web/greeting".into(),
                KvAction::Put,
                "value changed".into()
            ),
            ("shop/prod/web/new".into(), KvAction::Put, "new key".into()),
        ]
    );
    // Without Consul in the manifest, KV is not planned at all.
    d.consul = None;
    assert!(diff(&d, &o).kv.is_empty());
}

#[test]
fn a_failing_host_is_a_fault_and_the_others_are_still_planned() {
    let d = desired();
    let mut o = empty(&d);
    o.hosts[1].fault = Some(Fault {
        host: "h2".into(),
        address: "10.200.2.2".into(),
        kind: "unreachable".into(),
        message: "connection refused".into(),
    });
    o.hosts[1].containers.clear();
    let p = diff(&d, &o);
    assert_eq!(p.faults.len(), 1);
    assert!(!p.hosts[1].observed);
    assert!(p.hosts[1].instances.is_empty());
    assert_eq!(p.summary().create, 3);
    assert_eq!(p.detailed_exit_code(), 1);
}

#[test]
fn a_consul_fault_keeps_the_containers_planned() {
    let d = desired();
    let mut o = deployed(&d);
    o.hosts[0].services = None;
    o.hosts[0].consul_fault = Some(Fault {
        host: "h1".into(),
        address: "10.200.1.2".into(),
        kind: "consul-denied".into(),
        message: "ACL token refused".into(),
    });
    let p = diff(&d, &o);
    assert_eq!(p.summary().unchanged, 6);
    assert_eq!(p.faults[0].kind, "consul-denied");
    assert_eq!(p.detailed_exit_code(), 1);
}

#[test]
fn a_host_missing_from_the_observation_is_a_fault() {
    let d = desired();
    let mut o = deployed(&d);
    o.hosts.pop();
    let p = diff(&d, &o);
    assert_eq!(p.faults[0].kind, "not-observed");
}

#[test]
fn repository_strips_tag_but_not_registry_port() {
    assert_eq!(
        repository("10.200.1.1:5000/shop/web:v1"),
        "10.200.1.1:5000/shop/web"
    );
    assert_eq!(
        repository("10.200.1.1:5000/shop/web"),
        "10.200.1.1:5000/shop/web"
    );
    assert_eq!(repository("web@sha256:abc"), "web");
}

#[test]
fn registrations_match_by_meta_not_id_and_auto_ports_are_not_drift() {
    let mut d = desired();
    for h in &mut d.hosts {
        for i in &mut h.instances {
            if let Some(s) = &mut i.service {
                s.port = 0;
            }
        }
    }
    let mut o = deployed(&d);
    for (dh, oh) in d.hosts.iter().zip(&mut o.hosts) {
        let with_service = dh.instances.iter().filter(|i| i.service.is_some());
        for (i, s) in with_service.zip(oh.services.as_mut().unwrap()) {
            *s = registered(i, &format!("{}-0123456789ab", s.id), 32768);
        }
    }
    assert!(
        !diff(&d, &o).has_changes(),
        "{:#?}",
        services(&diff(&d, &o))
    );
    // A second registration of one instance (a killed replace) is deregistered, and the one of
    // the desired spec is kept.
    let mut old = o.hosts[0].services.as_ref().unwrap()[0].clone();
    old.id = "shop-prod-web-h1-1-old".into();
    old.meta.insert("fleet-spec".into(), "older".into());
    o.hosts[0].services.as_mut().unwrap().push(old);
    let p = diff(&d, &o);
    let s: Vec<_> = services(&p)
        .into_iter()
        .filter(|(_, _, a, _)| *a != ServiceAction::Unchanged)
        .collect();
    assert_eq!(
        s,
        vec![(
            "h1".into(),
            "shop-prod-web-h1-1-old".into(),
            ServiceAction::Deregister,
            vec!["a second registration for this instance".into()]
        )]
    );
}

/// A new health check definition re-registers the instance (its check gets a new ID, so it
/// cannot pass on the old status) without replacing the container.
#[test]
fn a_changed_health_check_re_registers_without_replacing() {
    let mut d = desired();
    let o = deployed(&d);
    let h = d.hosts[0].instances[0].container.health.as_mut().unwrap();
    h.check = crate::desired::HealthCheck::Http("/ready".into());
    let p = diff(&d, &o);
    let changed = services(&p);
    assert_eq!(changed.len(), 1, "{changed:#?}");
    assert_eq!(changed[0].0, "h1");
    assert_eq!(changed[0].2, ServiceAction::Update);
    assert_eq!(changed[0].3, vec!["definition changed".to_string()]);
    assert!(
        p.hosts
            .iter()
            .flat_map(|h| &h.instances)
            .all(|i| i.action == Action::Unchanged)
    );
    // The same definition registered: no change; a registration without its check: one.
    assert!(!diff(&d, &deployed(&d)).has_changes());
    let mut bare = deployed(&d);
    bare.hosts[0].services.as_mut().unwrap()[0].checks.clear();
    assert_eq!(services(&diff(&d, &bare))[0].3, vec!["not registered"]);
}
