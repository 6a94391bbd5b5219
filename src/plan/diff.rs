//! `diff(desired, observed) -> Plan`: pure, deterministic, tested without hosts.
//!
//! Rules, per host that could be read:
//! - a desired instance with no container is **create**;
//! - with a container of the same spec hash: **unchanged** when it runs, **start** when it
//!   exited (or was created and never started);
//! - with a container of another spec hash: **replace**, with reasons from the `fleet.fields`
//!   label (`plan::fields`), else from the version label, else the spec hashes;
//! - every other managed container is **remove** (app no longer in the manifest, app no longer
//!   on this host, instance beyond the count, a second container for one instance, unreadable
//!   labels).
//! - Consul: registrations are matched to instances by Meta (`fleet-app`, `fleet-instance`),
//!   never by ID (apply registers each container under its own ID so old and new overlap).
//!   Desired service absent **register**, different **update** (a desired port of 0, the auto
//!   port, matches any registered port), a second registration for one instance and fleet's
//!   registrations that are not desired **deregister** (saying when their container is gone).
//! - Two containers for one instance (a deploy killed mid-replace): the one with the desired
//!   spec is kept (then a running one, then the newest), the others are **remove**d; apply
//!   converges the kept one's registration before removing the others, so the instance keeps
//!   being served.
//! - KV (when the project uses Consul): **put** new or changed keys, **delete** keys under
//!   `<project>/<env>/` that the manifest no longer has, except those whose first segment
//!   starts with `_` or `.` (fleet's own bookkeeping, e.g. the deploy lock).
//!
//! Only fleet's own records are compared (spec hash, field digests, registration fields): what
//! Docker or Consul fill in by themselves can never show up as drift.

use std::collections::{BTreeMap, BTreeSet};

use crate::desired::{DesiredHost, DesiredState, InstanceSpec, ServiceSpec};
use crate::identity::labels;
use crate::observe::{Fault, ObservedContainer, ObservedHost, ObservedService, ObservedState};

use super::{
    Action, ContainerRef, DesiredRef, HostPlan, InstanceChange, KvAction, KvChange, Plan, Reason,
    Rollout, ServiceAction, ServiceChange,
};
use crate::identity::fields::{FieldDigests, differences};

/// Compare what should run with what runs.
pub fn diff(desired: &DesiredState, observed: &ObservedState) -> Plan {
    let app_order: Vec<&str> = desired.apps.iter().map(|a| a.name.as_str()).collect();
    let mut faults: Vec<Fault> = Vec::new();
    let mut hosts = Vec::new();
    for dh in &desired.hosts {
        let name = &dh.target.name;
        let Some(oh) = observed.hosts.iter().find(|h| &h.name == name) else {
            faults.push(Fault {
                host: name.clone(),
                address: dh.target.address.clone(),
                kind: "not-observed".into(),
                message: "the host was not read".into(),
            });
            hosts.push(unknown_host(name, &dh.target.address));
            continue;
        };
        if let Some(f) = &oh.fault {
            faults.push(f.clone());
            hosts.push(unknown_host(name, &dh.target.address));
            continue;
        }
        if let Some(f) = &oh.consul_fault {
            faults.push(f.clone());
        }
        // Registrations first: a slot's rollout depends on whether its registrations converged.
        let services = match &oh.services {
            Some(obs) => diff_services(&app_order, &dh.instances, obs, oh),
            None => Vec::new(),
        };
        let instances = diff_instances(desired, &app_order, dh, oh, &services);
        hosts.push(HostPlan {
            name: name.clone(),
            address: dh.target.address.clone(),
            observed: true,
            instances,
            services,
            images_in_use: super::rollout::images_in_use(desired, dh),
        });
    }
    let kv = if desired.consul.is_some() {
        if let Some(f) = &observed.kv_fault {
            faults.push(f.clone());
        }
        observed
            .kv
            .as_ref()
            .map(|kv| diff_kv(desired, kv))
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    Plan {
        edge: super::edge::diff(desired, observed),
        project: desired.project.clone(),
        environment: desired.environment.clone(),
        hosts,
        kv,
        faults,
        context: super::rollout::ApplyContext::of(desired),
    }
}

fn unknown_host(name: &str, address: &str) -> HostPlan {
    HostPlan {
        name: name.into(),
        address: address.into(),
        observed: false,
        instances: Vec::new(),
        services: Vec::new(),
        images_in_use: Vec::new(),
    }
}

fn container_ref(c: &ObservedContainer) -> ContainerRef {
    ContainerRef {
        id: c.id.clone(),
        name: c.name.clone(),
        version: c.version.clone(),
        spec_hash: c.spec_hash.clone(),
        state: c.state,
        health: c.health,
    }
}

fn desired_ref(d: &DesiredState, i: &InstanceSpec) -> DesiredRef {
    DesiredRef {
        name: i.container_name(&d.project, &d.environment),
        image: i.container.image.clone(),
        version: i.version.clone(),
        spec_hash: i.spec_hash.clone(),
    }
}

/// Position of an app in manifest order; apps no longer in the manifest sort after, by name.
fn app_rank<'a>(order: &[&str], app: &'a str) -> (usize, &'a str) {
    (
        order.iter().position(|a| *a == app).unwrap_or(usize::MAX),
        app,
    )
}

fn diff_instances(
    d: &DesiredState,
    app_order: &[&str],
    dh: &DesiredHost,
    oh: &ObservedHost,
    services: &[ServiceChange],
) -> Vec<InstanceChange> {
    let want = &dh.instances;
    let host = super::rollout::HostRollout {
        d,
        dh,
        oh,
        services,
    };
    let rollout = |w: &InstanceSpec, action, duplicates| host.slot(w, action, duplicates);
    // Observed containers per (app, instance) slot.
    let mut slots: BTreeMap<(Option<&str>, Option<u32>), Vec<&ObservedContainer>> = BTreeMap::new();
    for c in &oh.containers {
        slots
            .entry((c.app.as_deref(), c.instance))
            .or_default()
            .push(c);
    }
    let mut out = Vec::new();
    for w in want {
        let found = slots
            .remove(&(Some(w.app.as_str()), Some(w.instance)))
            .unwrap_or_default();
        let desired = Some(desired_ref(d, w));
        if found.is_empty() {
            out.push(InstanceChange {
                app: w.app.clone(),
                instance: Some(w.instance),
                action: Action::Create,
                current: None,
                desired,
                reasons: Vec::new(),
                rollout: rollout(w, Action::Create, Vec::new()),
            });
            continue;
        }
        // Keep the best one: same spec first, then running, then the newest.
        let best = found
            .iter()
            .enumerate()
            .max_by_key(|(_, c)| {
                (
                    c.spec_hash.as_deref() == Some(w.spec_hash.as_str()),
                    c.state.is_up(),
                    c.created,
                    c.id.as_str(),
                )
            })
            .map(|(i, _)| i)
            .unwrap_or(0);
        let c = found[best];
        let (action, reasons) = if c.spec_hash.as_deref() == Some(w.spec_hash.as_str()) {
            if c.state.is_up() {
                (Action::Unchanged, Vec::new())
            } else {
                (
                    Action::Start,
                    vec![Reason::new(
                        "state",
                        format!("container is {}", c.state.as_str()),
                    )],
                )
            }
        } else {
            let mut reasons = replace_reasons(c, w);
            if d.apps.iter().any(|a| a.name == w.app && a.accessory) {
                reasons.push(Reason::new("gap", accessory_gap(w)));
            }
            (Action::Replace, reasons)
        };
        let extras: Vec<&ObservedContainer> = found
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != best)
            .map(|(_, e)| *e)
            .collect();
        let duplicates = extras.iter().map(|e| container_ref(e)).collect();
        out.push(InstanceChange {
            app: w.app.clone(),
            instance: Some(w.instance),
            action,
            current: Some(container_ref(c)),
            desired,
            reasons,
            rollout: rollout(w, action, duplicates),
        });
        for extra in extras {
            out.push(InstanceChange {
                // Retired with its slot, after the kept container passes.
                rollout: Rollout::Duplicate,
                ..remove(
                    extra,
                    "duplicate",
                    format!("a second container for this instance (kept {})", c.name),
                )
            });
        }
    }
    // What is left is not desired on this host.
    let apps_here: BTreeMap<&str, u32> = want.iter().fold(BTreeMap::new(), |mut m, w| {
        let n = m.entry(w.app.as_str()).or_insert(0);
        *n = (*n).max(w.instance);
        m
    });
    for ((app, instance), cs) in slots {
        for c in cs {
            let (field, why) = match (app, instance) {
                (Some(a), Some(_)) if !app_order.contains(&a) => {
                    ("app", "app no longer in the manifest".to_string())
                }
                (Some(a), Some(_)) => match apps_here.get(a) {
                    None => ("host", "app no longer placed on this host".to_string()),
                    Some(n) => (
                        "count",
                        format!("instance beyond the count ({n} on this host)"),
                    ),
                },
                _ => (
                    "labels",
                    format!("no readable {} / {} label", labels::APP, labels::INSTANCE),
                ),
            };
            out.push(remove(c, field, why));
        }
    }
    out.sort_by(|a, b| {
        (
            app_rank(app_order, &a.app),
            a.instance,
            a.action == Action::Remove,
        )
            .cmp(&(
                app_rank(app_order, &b.app),
                b.instance,
                b.action == Action::Remove,
            ))
    });
    out
}

fn remove(c: &ObservedContainer, field: &str, why: String) -> InstanceChange {
    InstanceChange {
        app: c.app.clone().unwrap_or_else(|| "?".into()),
        instance: c.instance,
        action: Action::Remove,
        current: Some(container_ref(c)),
        desired: None,
        reasons: vec![Reason::new(field, why)],
        rollout: Rollout::Retire,
    }
}

/// The repository part of an image reference (without `:tag` / `@digest`).
fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

/// What the replace of an accessory costs: it is stopped before its new container starts.
fn accessory_gap(w: &InstanceSpec) -> String {
    let named: Vec<&str> = w
        .container
        .volumes
        .iter()
        .filter(|v| !v.starts_with('/'))
        .filter_map(|v| v.split(':').next())
        .collect();
    let data = if named.is_empty() {
        String::new()
    } else {
        format!("; the data in volume {} stays", named.join(", "))
    };
    format!(
        "an accessory is stopped before its new container starts: {} is down meanwhile{data}",
        w.app
    )
}

fn replace_reasons(c: &ObservedContainer, w: &InstanceSpec) -> Vec<Reason> {
    let mut reasons = Vec::new();
    let version_changed = c.version.as_deref() != Some(w.version.as_str());
    if version_changed {
        reasons.push(Reason::new(
            "version",
            format!(
                "{} -> {}",
                c.version.as_deref().unwrap_or("(none)"),
                w.version
            ),
        ));
    }
    let new = FieldDigests::of(&w.container);
    match &c.fields {
        Some(old) => {
            let (fields, env) = differences(old, &new);
            for f in fields {
                if f == "image" {
                    // A new tag of the same repository is already said by `version`.
                    if !(version_changed && repository(&c.image) == repository(&w.container.image))
                    {
                        reasons.push(Reason::new(
                            "image",
                            format!("{} -> {}", c.image, w.container.image),
                        ));
                    }
                } else {
                    reasons.push(Reason::new(&f, describe(&f, w)));
                }
            }
            if !env.is_empty() {
                reasons.push(Reason::new("env", env.join(", ")));
            }
            if reasons.is_empty() {
                reasons.push(Reason::new(
                    "secret",
                    "a secret's value changed (values are never shown)",
                ));
            }
        }
        None => {
            if !version_changed && c.image != w.container.image {
                reasons.push(Reason::new(
                    "image",
                    format!("{} -> {}", c.image, w.container.image),
                ));
            }
            if reasons.is_empty() {
                reasons.push(Reason::new(
                    "spec",
                    format!(
                        "spec hash {} -> {}",
                        c.spec_hash.as_deref().unwrap_or("(none)"),
                        w.spec_hash
                    ),
                ));
            }
        }
    }
    reasons
}

/// The new value of a changed field, said briefly (never an env value).
fn describe(field: &str, w: &InstanceSpec) -> String {
    let s = &w.container;
    let now = match field {
        "command" => s
            .command
            .as_ref()
            .map(|c| format!("{c:?}"))
            .unwrap_or_else(|| "the image's default".into()),
        "ports" => {
            let p: Vec<String> = s
                .ports
                .iter()
                .map(|p| format!("{}:{}/{}", p.host, p.container, p.protocol))
                .collect();
            if p.is_empty() {
                "none".into()
            } else {
                p.join(", ")
            }
        }
        "volumes" => {
            if s.volumes.is_empty() {
                "none".into()
            } else {
                s.volumes.join(", ")
            }
        }
        "network" => s.network.clone().unwrap_or_else(|| "default".into()),
        "user" => s.user.clone().unwrap_or_else(|| "the image's".into()),
        "workdir" => s.workdir.clone().unwrap_or_else(|| "the image's".into()),
        "restart" => match &s.restart {
            crate::desired::RestartPolicy::No => "no".into(),
            crate::desired::RestartPolicy::Always => "always".into(),
            crate::desired::RestartPolicy::UnlessStopped => "unless-stopped".into(),
            crate::desired::RestartPolicy::OnFailure { max_retries } => match max_retries {
                Some(n) => format!("on-failure:{n}"),
                None => "on-failure".into(),
            },
        },
        "memory" => s
            .memory
            .map(|m| bytesize::ByteSize(m).to_string())
            .unwrap_or_else(|| "unlimited".into()),
        "cpus" => s
            .cpus
            .map(|c| c.to_string())
            .unwrap_or_else(|| "unlimited".into()),
        "stop_timeout" => humantime::format_duration(s.stop_timeout).to_string(),
        "health" => match &s.health {
            None => "none".into(),
            Some(h) => {
                let what = match &h.check {
                    crate::desired::HealthCheck::Http(p) => format!("http {p}"),
                    crate::desired::HealthCheck::Tcp => "tcp".into(),
                };
                format!("{what} every {}", humantime::format_duration(h.interval))
            }
        },
        "labels" => {
            let l: Vec<&str> = s
                .labels
                .keys()
                .filter(|k| !k.starts_with("fleet."))
                .map(String::as_str)
                .collect();
            return format!("changed (now: {})", l.join(", "));
        }
        _ => return "changed".into(),
    };
    format!("changed (now {now})")
}

fn sorted(v: &[String]) -> Vec<&String> {
    let mut v: Vec<&String> = v.iter().collect();
    v.sort();
    v
}

fn service_reasons(want: &ServiceSpec, have: &ObservedService) -> Vec<Reason> {
    let mut r = Vec::new();
    if want.name != have.name {
        r.push(Reason::new(
            "name",
            format!("{} -> {}", have.name, want.name),
        ));
    }
    if sorted(&want.tags) != sorted(&have.tags) {
        r.push(Reason::new(
            "tags",
            format!("[{}] -> [{}]", have.tags.join(", "), want.tags.join(", ")),
        ));
    }
    if want.meta != have.meta {
        let keys: BTreeSet<&String> = want
            .meta
            .iter()
            .filter(|(k, v)| have.meta.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .chain(have.meta.keys().filter(|k| !want.meta.contains_key(*k)))
            .collect();
        let keys: Vec<&str> = keys.into_iter().map(String::as_str).collect();
        r.push(Reason::new("meta", keys.join(", ")));
    }
    if want.address != have.address {
        r.push(Reason::new(
            "address",
            format!("{} -> {}", have.address, want.address),
        ));
    }
    // 0 is the instance's auto port (Docker picked it): whatever was registered is right.
    if want.port != 0 && want.port != have.port {
        r.push(Reason::new(
            "port",
            format!("{} -> {}", have.port, want.port),
        ));
    }
    r
}

/// The registration's check against the manifest's: its ID carries a digest of the whole
/// definition (`apply::health::check_id`), so a check that is not under the ID the manifest's
/// definition gives was registered from another definition (path, kind, interval, port, …).
fn check_reasons(w: &InstanceSpec, svc: &ServiceSpec, have: &ObservedService) -> Vec<Reason> {
    let Some(h) = &w.container.health else {
        return if have.checks.is_empty() {
            Vec::new()
        } else {
            vec![Reason::new("check", "no longer in the manifest")]
        };
    };
    let address = if svc.address.is_empty() {
        &have.address
    } else {
        &svc.address
    };
    let port = if svc.port == 0 { have.port } else { svc.port };
    let want = crate::identity::checks::check_definition(h, &have.id, address, port);
    match &want.check_id {
        Some(id) if have.checks.iter().any(|c| &c.id == id) => Vec::new(),
        _ if have.checks.is_empty() => vec![Reason::new("check", "not registered")],
        _ => vec![Reason::new("check", "definition changed")],
    }
}

/// What differs between an instance's service and a registration of it.
fn registration_reasons(
    w: &InstanceSpec,
    svc: &ServiceSpec,
    have: &ObservedService,
) -> Vec<Reason> {
    let mut r = service_reasons(svc, have);
    r.extend(check_reasons(w, svc, have));
    r
}

fn diff_services(
    app_order: &[&str],
    want: &[InstanceSpec],
    have: &[ObservedService],
    oh: &ObservedHost,
) -> Vec<ServiceChange> {
    let meta_app = labels::meta_key(labels::APP);
    let meta_inst = labels::meta_key(labels::INSTANCE);
    let meta_spec = labels::meta_key(labels::SPEC);
    // Registrations are matched to instances by their Meta (app + instance), not by ID: apply
    // registers each container under its own ID (`<base id>-<container>`), so that old and new
    // are both registered while a replace overlaps.
    let slot_of = |s: &ObservedService| {
        (
            s.meta.get(&meta_app).cloned(),
            s.meta.get(&meta_inst).and_then(|i| i.parse::<u32>().ok()),
        )
    };
    let mut out = Vec::new();
    let mut matched: BTreeSet<&str> = BTreeSet::new();
    for w in want {
        let Some(svc) = &w.service else { continue };
        let slot = (Some(w.app.clone()), Some(w.instance));
        let found: Vec<&ObservedService> = have.iter().filter(|h| slot_of(h) == slot).collect();
        // Keep the registration of the desired spec, passing first; the others go.
        // Each candidate's reasons once: they hash the check definition.
        let best = found
            .iter()
            .map(|h| (*h, registration_reasons(w, svc, h)))
            .max_by(|(a, ra), (b, rb)| {
                let key = |h: &ObservedService, r: &Vec<Reason>| {
                    (
                        h.meta.get(&meta_spec) == Some(&w.spec_hash),
                        r.is_empty(),
                        h.checks.iter().all(|c| c.status == "passing"),
                    )
                };
                key(a, ra).cmp(&key(b, rb)).then_with(|| a.id.cmp(&b.id))
            });
        let best_id = best.as_ref().map(|(h, _)| h.id.as_str());
        let (id, action, reasons) = match best {
            None => (
                svc.id.clone(),
                ServiceAction::Register,
                vec![Reason::new("service", "not registered")],
            ),
            Some((h, r)) => {
                matched.insert(h.id.as_str());
                if r.is_empty() {
                    (h.id.clone(), ServiceAction::Unchanged, r)
                } else {
                    (h.id.clone(), ServiceAction::Update, r)
                }
            }
        };
        out.push(ServiceChange {
            id,
            name: svc.name.clone(),
            app: w.app.clone(),
            instance: Some(w.instance),
            action,
            reasons,
        });
        for extra in found {
            if Some(extra.id.as_str()) != best_id {
                matched.insert(extra.id.as_str());
                out.push(ServiceChange {
                    id: extra.id.clone(),
                    name: extra.name.clone(),
                    app: w.app.clone(),
                    instance: Some(w.instance),
                    action: ServiceAction::Deregister,
                    reasons: vec![Reason::new(
                        "duplicate",
                        "a second registration for this instance",
                    )],
                });
            }
        }
    }
    let wanted_apps: BTreeSet<&str> = want.iter().map(|w| w.app.as_str()).collect();
    for h in have {
        if matched.contains(h.id.as_str()) {
            continue;
        }
        let app = h.meta.get(&meta_app).cloned();
        let instance = h.meta.get(&meta_inst).and_then(|i| i.parse::<u32>().ok());
        let has_container = oh
            .containers
            .iter()
            .any(|c| c.app == app && c.instance == instance && app.is_some());
        let why = if !has_container {
            Reason::new("container", "its container is gone")
        } else {
            match &app {
                Some(a) if !app_order.contains(&a.as_str()) => {
                    Reason::new("app", "app no longer in the manifest")
                }
                Some(a) if !wanted_apps.contains(a.as_str()) => {
                    Reason::new("host", "app no longer placed on this host")
                }
                _ => Reason::new("service", "no longer in the manifest"),
            }
        };
        out.push(ServiceChange {
            id: h.id.clone(),
            name: h.name.clone(),
            app: app.unwrap_or_else(|| "?".into()),
            instance,
            action: ServiceAction::Deregister,
            reasons: vec![why],
        });
    }
    out.sort_by(|a, b| {
        (app_rank(app_order, &a.app), a.instance, &a.id).cmp(&(
            app_rank(app_order, &b.app),
            b.instance,
            &b.id,
        ))
    });
    out
}

/// Whether a key under `<project>/<env>/` is fleet's own bookkeeping (never deleted by a plan).
fn reserved(rel: &str) -> bool {
    rel.starts_with('_') || rel.starts_with('.') || rel.is_empty() || rel.ends_with('/')
}

fn diff_kv(d: &DesiredState, observed: &crate::observe::ObservedKv) -> Vec<KvChange> {
    let have = &observed.entries;
    let index = |k: &str| observed.indexes.get(k).copied().unwrap_or(0);
    let prefix = format!("{}/{}/", d.project, d.environment);
    let mut want: BTreeMap<&str, &str> = BTreeMap::new();
    for a in &d.apps {
        for (k, v) in &a.config {
            want.insert(k, v);
        }
    }
    let mut out = Vec::new();
    for (k, v) in &want {
        let digest = crate::observe::value_digest(v.as_bytes());
        let (action, reason) = match have.get(*k) {
            None => (KvAction::Put, "new key"),
            Some(h) if *h != digest => (KvAction::Put, "value changed"),
            Some(_) => (KvAction::Unchanged, ""),
        };
        out.push(KvChange {
            key: (*k).into(),
            action,
            reason: reason.into(),
            index: index(k),
            value: (action == KvAction::Put).then(|| (*v).to_string()),
            before: observed.values.get(*k).cloned(),
        });
    }
    for k in have.keys() {
        let Some(rel) = k.strip_prefix(&prefix) else {
            continue;
        };
        if want.contains_key(k.as_str()) || reserved(rel) {
            continue;
        }
        out.push(KvChange {
            key: k.clone(),
            action: KvAction::Delete,
            reason: "no longer in the manifest".into(),
            index: index(k),
            value: None,
            before: observed.values.get(k).cloned(),
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

#[cfg(test)]
mod tests;
