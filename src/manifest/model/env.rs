//! `[environments.NAME]`: hosts, roles, per-app overrides, the edge and Consul of one environment.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) fn decode_env(
    cx: &mut Cx,
    k: &Key,
    v: &Node,
    app_nodes: &[(Key, Node)],
    accessory_nodes: &[(Key, Node)],
    base_consul: Option<&Node>,
    base_edge: Option<&Node>,
    hosts: &[HostDef],
    dir: &Path,
) -> Option<EnvDef> {
    check_name(cx, "environment", &k.name, &k.span, &['_']);
    let t = cx.table(v, &format!("environment `{}`", k.name), ENV_KEYS)?;
    let host_names: Vec<&str> = hosts.iter().map(|h| h.target.name.as_str()).collect();
    let env_hosts: Vec<String> = match get(t, "hosts").and_then(|h| cx.str_list(h)) {
        Some(list) => {
            for (h, span) in &list {
                unknown_ref(cx, "host", h, span, &host_names);
            }
            // Manifest order, whatever order the environment lists them in.
            host_names
                .iter()
                .filter(|h| list.iter().any(|(l, _)| l == *h))
                .map(|h| h.to_string())
                .collect()
        }
        None => host_names.iter().map(|h| h.to_string()).collect(),
    };

    let overlays: Vec<(Key, Node)> =
        match get(t, "apps").and_then(|a| cx.map(a, "environment apps")) {
            Some(o) => o.entries.clone(),
            None => Vec::new(),
        };
    let app_names: Vec<&str> = app_nodes.iter().map(|(k, _)| k.name.as_str()).collect();
    for (ok, ov) in &overlays {
        if !app_names.contains(&ok.name.as_str()) {
            unknown_ref(cx, "app", &ok.name, &ok.span, &app_names);
        }
        if let Value::Table(ot) = &ov.value
            && let Some(b) = ot
                .entries
                .iter()
                .find(|(bk, _)| NOT_IN_OVERLAY.contains(&bk.name.as_str()))
        {
            cx.err(&b.0.span, format!("`{}` cannot change per environment", b.0.name), "not allowed here", Some("an image is built once and deployed to every environment; override `env`, `instances`, ... instead".into()));
        }
    }

    let mut apps = Vec::new();
    let mut secrets = Vec::new();
    // Accessories as written: an environment's `env` and `apps` overrides are the apps'.
    for (ak, an) in accessory_nodes {
        if let Some(a) = decode_app(cx, ak, an, dir, Kind::Accessory) {
            secrets.extend(a.secrets.iter().cloned());
            apps.push(a);
        }
    }
    for (ak, an) in app_nodes {
        let mut merged = an.clone();
        if let Some(env_wide) = get(t, "env") {
            let synthetic = Node {
                span: env_wide.span.clone(),
                value: Value::Table(Table {
                    entries: vec![(
                        Key {
                            name: "env".into(),
                            span: env_wide.span.clone(),
                        },
                        env_wide.clone(),
                    )],
                }),
            };
            if matches!(merged.value, Value::Table(_)) && matches!(env_wide.value, Value::Table(_))
            {
                merged = crate::manifest::node::overlay(&merged, &synthetic);
            } else {
                cx.map(env_wide, "environment env");
            }
        }
        if let Some((_, ov)) = overlays.iter().find(|(ok, _)| ok.name == ak.name) {
            let mut ov = ov.clone();
            if let Value::Table(t) = &mut ov.value {
                t.entries
                    .retain(|(k, _)| !NOT_IN_OVERLAY.contains(&k.name.as_str()));
            }
            merged = crate::manifest::node::overlay(&merged, &ov);
        }
        if let Some(a) = decode_app(cx, ak, &merged, dir, Kind::App) {
            secrets.extend(a.secrets.iter().cloned());
            apps.push(a);
        }
    }

    let consul_node = match (base_consul, get(t, "consul")) {
        (Some(b), Some(o)) => Some(crate::manifest::node::overlay(b, o)),
        (b, o) => b.or(o).cloned(),
    };
    let consul = consul_node
        .as_ref()
        .and_then(|c| decode_consul(cx, c, dir))
        .map(|(c, tok)| {
            secrets.extend(tok);
            c
        });
    let edge_node = match (base_edge, get(t, "edge")) {
        (Some(b), Some(o)) => Some(crate::manifest::node::overlay(b, o)),
        (b, o) => b.or(o).cloned(),
    };
    let edge = match &edge_node {
        Some(n) => {
            let (e, s) = decode_edge(cx, n, dir);
            secrets.extend(s);
            e
        }
        None => EdgeDef::default(),
    };
    let role_names: Vec<&str> = hosts
        .iter()
        .flat_map(|h| h.target.roles.iter().map(String::as_str))
        .collect();
    if let Some(Value::Table(et)) = edge_node.as_ref().map(|n| &n.value)
        && let Some(r) = get(et, "roles")
        && let Some(list) = cx.str_list(r)
    {
        for (role, span) in &list {
            unknown_ref(cx, "role", role, span, &role_names);
        }
    }
    if let Some(agent) = consul.as_ref().and_then(|c| c.agent.as_ref()) {
        setup::check_servers(cx, agent, &k.name, &env_hosts);
    }
    if consul_node.is_none() {
        for a in &apps {
            if let Some(p) = &a.public {
                cx.err(
                    &p.span,
                    format!(
                        "app `{}` is public, but environment `{}` has no [consul]",
                        a.name, k.name
                    ),
                    "no upstreams",
                    Some(
                        "the edge routes to the instances Consul lists as passing: add `[consul]`"
                            .into(),
                    ),
                );
            }
        }
        for a in &apps {
            if let Some(span) = &a.dns_consul {
                cx.err(span, format!("app `{}` resolves names through Consul, but environment `{}` has no [consul]", a.name, k.name), "no Consul agent", Some("add `[consul]` with the agent's `address`, or remove `dns`".into()));
            }
        }
    }
    Some(EnvDef {
        name: k.name.clone(),
        span: k.span.clone(),
        hosts: env_hosts,
        apps,
        consul,
        secrets,
        pre_deploy: get(t, "pre_deploy").and_then(|h| hook_commands(cx, h)),
        post_deploy: get(t, "post_deploy").and_then(|h| hook_commands(cx, h)),
        canary: get(t, "canary")
            .and_then(|n| cx.int(n, 0, MAX_CANARY))
            .map_or(0, |n| n as u32),
        edge,
    })
}
