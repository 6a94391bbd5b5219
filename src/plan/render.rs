//! A plan as text for people (`human`) and as JSON for tools (`json`, documented in
//! `docs/plan-json.md`).
//!
//! Human output is grouped by host then app; hosts with nothing to do collapse to one line.
//! Symbols: `+` create / register / put, `±` replace, `~` start / update, `-` remove /
//! deregister / delete. Colour is a parameter (the CLI passes what `ui::init_color` decided),
//! so snapshots are stable. Neither form ever holds a KV value or a secret.

use std::fmt::Write;

use owo_colors::OwoColorize;
use serde::Serialize;

use super::{
    Action, HostPlan, InstanceChange, KvAction, Plan, ServiceAction, ServiceChange, Summary,
};

/// The version of the JSON document's shape. Bumped on any incompatible change.
pub const JSON_FORMAT_VERSION: u32 = 1;

struct Paint {
    on: bool,
}

impl Paint {
    fn sym(&self, sym: &str) -> String {
        if !self.on {
            return sym.to_string();
        }
        match sym {
            "+" => sym.green().bold().to_string(),
            "-" => sym.red().bold().to_string(),
            "±" | "~" => sym.yellow().bold().to_string(),
            _ => sym.to_string(),
        }
    }
    fn bold(&self, s: &str) -> String {
        if self.on {
            s.bold().to_string()
        } else {
            s.to_string()
        }
    }
    fn dim(&self, s: &str) -> String {
        if self.on {
            s.dimmed().to_string()
        } else {
            s.to_string()
        }
    }
    fn red(&self, s: &str) -> String {
        if self.on {
            s.red().to_string()
        } else {
            s.to_string()
        }
    }
}

/// `web#2` (`web#?` for a container whose instance number could not be read).
fn slot_label(app: &str, instance: Option<u32>) -> String {
    match instance {
        Some(n) => format!("{app}#{n}"),
        None => format!("{app}#?"),
    }
}

pub(super) fn instance_label(i: &InstanceChange) -> String {
    slot_label(&i.app, i.instance)
}

/// What happens to one instance, without its symbol: `replace  a-1 -> a-2`.
pub(super) fn instance_what(i: &InstanceChange) -> String {
    let current = || i.current.as_ref().map(|c| c.name.as_str()).unwrap_or("?");
    let desired = || i.desired.as_ref().map(|d| d.name.as_str()).unwrap_or("?");
    match i.action {
        Action::Create => format!(
            "{:<10} {}  ({})",
            "create",
            desired(),
            i.desired.as_ref().map(|d| d.image.as_str()).unwrap_or("?")
        ),
        Action::Replace => format!("{:<10} {} -> {}", "replace", current(), desired()),
        Action::Remove => format!("{:<10} {}", "remove", current()),
        Action::Start => format!("{:<10} {}", "start", current()),
        Action::Unchanged => "unchanged".into(),
    }
}

fn instance_line(p: &Paint, i: &InstanceChange) -> String {
    format!(
        "    {} {:<10} {}",
        p.sym(i.action.symbol()),
        instance_label(i),
        instance_what(i)
    )
}

/// What happens to one registration, without its symbol and instance label.
pub(super) fn service_what(s: &ServiceChange) -> String {
    let word = match s.action {
        ServiceAction::Register => "register",
        ServiceAction::Update => "update",
        ServiceAction::Deregister => "deregister",
        ServiceAction::Unchanged => "unchanged",
    };
    format!("{word:<10} consul service {} ({})", s.name, s.id)
}

pub(super) fn service_label(s: &ServiceChange) -> String {
    slot_label(&s.app, s.instance)
}

fn service_line(p: &Paint, s: &ServiceChange) -> String {
    format!(
        "    {} {:<10} {}",
        p.sym(s.action.symbol()),
        service_label(s),
        service_what(s)
    )
}

pub(super) fn host_has_changes(h: &HostPlan) -> bool {
    h.instances.iter().any(|i| i.action != Action::Unchanged)
        || h.services
            .iter()
            .any(|s| s.action != ServiceAction::Unchanged)
}

fn write_host(out: &mut String, p: &Paint, plan: &Plan, h: &HostPlan) {
    let head = format!("{} ({})", p.bold(&h.name), h.address);
    if !h.observed {
        let why = plan
            .faults
            .iter()
            .find(|f| f.host == h.name)
            .map(|f| format!("{}: {}", f.kind, f.message))
            .unwrap_or_else(|| "not read".into());
        let _ = writeln!(
            out,
            "{head}: {}",
            p.red(&format!("could not be read ({why})"))
        );
        return;
    }
    let unchanged = h
        .instances
        .iter()
        .filter(|i| i.action == Action::Unchanged)
        .count();
    if !host_has_changes(h) {
        let _ = writeln!(out, "{head}: no changes ({unchanged} unchanged)");
        return;
    }
    let _ = writeln!(out, "{head}");
    // Apps in the order the diff sorted them (manifest order, then removed apps).
    let mut apps: Vec<&str> = Vec::new();
    for a in h
        .instances
        .iter()
        .map(|i| i.app.as_str())
        .chain(h.services.iter().map(|s| s.app.as_str()))
    {
        if !apps.contains(&a) {
            apps.push(a);
        }
    }
    for app in apps {
        let inst: Vec<&InstanceChange> = h
            .instances
            .iter()
            .filter(|i| i.app == app && i.action != Action::Unchanged)
            .collect();
        let svcs: Vec<&ServiceChange> = h
            .services
            .iter()
            .filter(|s| s.app == app && s.action != ServiceAction::Unchanged)
            .collect();
        if inst.is_empty() && svcs.is_empty() {
            continue;
        }
        let same = h
            .instances
            .iter()
            .filter(|i| i.app == app && i.action == Action::Unchanged)
            .count();
        let tail = if same > 0 {
            p.dim(&format!(" ({same} unchanged)"))
        } else {
            String::new()
        };
        let _ = writeln!(out, "  {}{tail}", p.bold(app));
        for i in inst {
            let _ = writeln!(out, "{}", instance_line(p, i));
            for r in &i.reasons {
                let _ = writeln!(out, "        {}: {}", r.field, r.detail);
            }
        }
        for s in svcs {
            let _ = writeln!(out, "{}", service_line(p, s));
            for r in &s.reasons {
                let _ = writeln!(out, "        {}: {}", r.field, r.detail);
            }
        }
    }
}

fn count(n: usize, what: &str) -> String {
    format!("{n} {what}")
}

/// `Plan: 3 to create, 2 to replace, 1 to remove, 12 unchanged.` (start only when non-zero),
/// then a Consul/KV line when they change.
pub(super) fn summary_lines(s: &Summary) -> Vec<String> {
    let mut parts = vec![
        count(s.create, "to create"),
        count(s.replace, "to replace"),
        count(s.remove, "to remove"),
    ];
    if s.start > 0 {
        parts.push(count(s.start, "to start"));
    }
    parts.push(count(s.unchanged, "unchanged"));
    let mut lines = vec![format!("Plan: {}.", parts.join(", "))];
    let mut more = Vec::new();
    if s.register + s.update + s.deregister > 0 {
        more.push(format!(
            "Consul: {} to register, {} to update, {} to deregister.",
            s.register, s.update, s.deregister
        ));
    }
    if s.kv_put + s.kv_delete > 0 {
        more.push(format!(
            "KV: {} to put, {} to delete.",
            s.kv_put, s.kv_delete
        ));
    }
    if s.edge > 0 {
        more.push(format!(
            "Edge: {} change{}.",
            s.edge,
            if s.edge == 1 { "" } else { "s" }
        ));
    }
    if !more.is_empty() {
        lines.push(more.join(" "));
    }
    lines
}

/// What could not be read, counted by host (a host can have several faults: its engine and
/// its agent), and the KV (read once, through the first host that answers), without the
/// trailing punctuation: `2 hosts could not be fully read; their parts are not planned`.
pub(super) fn faults_headline(plan: &Plan) -> String {
    let mut hosts: Vec<&str> = plan
        .faults
        .iter()
        .map(|f| f.host.as_str())
        .filter(|h| plan.hosts.iter().any(|p| p.name == *h))
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    let kv = plan.faults.len()
        > plan
            .faults
            .iter()
            .filter(|f| hosts.contains(&f.host.as_str()))
            .count();
    let n = hosts.len();
    match (n, kv) {
        (0, _) => "the KV could not be read; config changes are not planned".into(),
        (_, kv) => format!(
            "{n} host{} could not be fully read{}; {} not planned",
            if n == 1 { "" } else { "s" },
            if kv { ", nor the KV" } else { "" },
            if n == 1 {
                "its part is"
            } else {
                "their parts are"
            }
        ),
    }
}

/// `3 instances up to date on 2 hosts.`
pub(super) fn up_to_date(s: &Summary, hosts: usize) -> String {
    format!(
        "{} instance{} up to date on {hosts} host{}.",
        s.unchanged,
        if s.unchanged == 1 { "" } else { "s" },
        if hosts == 1 { "" } else { "s" }
    )
}

/// The plan for a person. `color`: whether to emit ANSI colours.
pub fn human(plan: &Plan, color: bool) -> String {
    let p = Paint { on: color };
    let mut out = String::new();
    let s = plan.summary();
    let _ = writeln!(
        out,
        "Plan for {} / {} ({} host{})",
        p.bold(&plan.project),
        p.bold(&plan.environment),
        plan.hosts.len(),
        if plan.hosts.len() == 1 { "" } else { "s" }
    );
    let _ = writeln!(out);
    if s.changes() == 0 && plan.faults.is_empty() {
        let _ = writeln!(out, "No changes. {}", up_to_date(&s, plan.hosts.len()));
        return out;
    }
    for h in &plan.hosts {
        write_host(&mut out, &p, plan, h);
        let _ = writeln!(out);
    }
    let kv: Vec<_> = plan
        .kv
        .iter()
        .filter(|k| k.action != KvAction::Unchanged)
        .collect();
    if !kv.is_empty() {
        let _ = writeln!(out, "{}", p.bold("KV"));
        for k in kv {
            let sym = match k.action {
                KvAction::Put => "+",
                KvAction::Delete => "-",
                KvAction::Unchanged => " ",
            };
            let word = if k.action == KvAction::Put {
                "put"
            } else {
                "delete"
            };
            let _ = writeln!(
                out,
                "    {} {word:<10} {}  ({})",
                p.sym(sym),
                k.key,
                k.reason
            );
        }
        let _ = writeln!(out);
    }
    if !plan.edge.is_empty() {
        let _ = writeln!(out, "{}", p.bold("Edge"));
        for c in &plan.edge {
            let _ = writeln!(out, "    {}", super::edge::line(c));
        }
        let _ = writeln!(out);
    }
    for l in summary_lines(&s) {
        let _ = writeln!(out, "{}", p.bold(&l));
    }
    if !plan.faults.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{}",
            p.red(&format!("Error: {}:", faults_headline(plan)))
        );
        for f in &plan.faults {
            let _ = writeln!(
                out,
                "  {} ({}): {}: {}",
                f.host, f.address, f.kind, f.message
            );
        }
    }
    out
}

/// The JSON document (`docs/plan-json.md`): the plan plus `format_version`, `summary` and
/// `changes`.
pub fn json(plan: &Plan) -> serde_json::Value {
    #[derive(Serialize)]
    struct Doc<'a> {
        format_version: u32,
        changes: bool,
        summary: Summary,
        #[serde(flatten)]
        plan: &'a Plan,
    }
    serde_json::to_value(Doc {
        format_version: JSON_FORMAT_VERSION,
        changes: plan.has_changes(),
        summary: plan.summary(),
        plan,
    })
    .expect("a plan serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::diff;
    use crate::plan::fixtures::*;

    #[test]
    fn human_busy_plan() {
        insta::assert_snapshot!(human(&busy_plan(), false));
    }

    #[test]
    fn human_no_changes() {
        let d = desired();
        insta::assert_snapshot!(human(&diff(&d, &deployed(&d)), false));
    }

    #[test]
    fn human_empty_environment() {
        let d = desired();
        insta::assert_snapshot!(human(&diff(&d, &empty(&d)), false));
    }

    #[test]
    fn json_schema_of_a_busy_plan() {
        insta::assert_json_snapshot!(json(&busy_plan()));
    }

    #[test]
    fn colour_only_when_asked() {
        let p = busy_plan();
        assert!(!human(&p, false).contains('\x1b'));
        assert!(human(&p, true).contains('\x1b'));
    }

    #[test]
    fn no_secret_or_kv_value_in_any_output() {
        let p = busy_plan();
        let text = human(&p, false) + &json(&p).to_string();
        for v in NEVER_SHOWN {
            assert!(!text.contains(v), "{v} leaked");
        }
    }

    #[test]
    fn faults_are_counted_by_host_and_the_kv_apart() {
        let mut p = busy_plan();
        assert_eq!(
            faults_headline(&p),
            "1 host could not be fully read; its part is not planned"
        );
        let fault = |host: &str| crate::observe::Fault {
            host: host.into(),
            address: "-".into(),
            kind: "consul-unreachable".into(),
            message: "x".into(),
        };
        // Every host unreachable, h2 twice (engine and agent), and the KV read once for all:
        // three hosts, not five.
        p.faults
            .extend([fault("h1"), fault("h2"), fault("h3"), fault("(all)")]);
        assert_eq!(
            faults_headline(&p),
            "3 hosts could not be fully read, nor the KV; their parts are not planned"
        );
        p.faults = vec![fault("(all)")];
        assert_eq!(
            faults_headline(&p),
            "the KV could not be read; config changes are not planned"
        );
    }

    #[test]
    fn summary_line_format() {
        let s = Summary {
            create: 3,
            replace: 2,
            remove: 1,
            unchanged: 12,
            ..Default::default()
        };
        assert_eq!(
            summary_lines(&s),
            vec!["Plan: 3 to create, 2 to replace, 1 to remove, 12 unchanged.".to_string()]
        );
    }
}
