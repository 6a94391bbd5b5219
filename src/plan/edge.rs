//! The edge part of a plan (pure): the proxy container on each edge host, the shared config
//! (ports, listeners, this environment's TLS policy), and this environment's routes, compared
//! without their upstreams (which follow Consul, and every deploy pushes).

use std::collections::BTreeMap;

use super::{EdgeAction, EdgeChange, EdgeKind};
use crate::desired::DesiredState;
use crate::edge::caddy;
use crate::observe::ObservedState;

pub fn diff(desired: &DesiredState, observed: &ObservedState) -> Vec<EdgeChange> {
    let (project, env) = (&desired.project, &desired.environment);
    let prefix = caddy::owner_prefix(project, env);
    // (action, kind, subject, app, detail) -> hosts
    let mut out: BTreeMap<(u8, EdgeAction, EdgeKind, String, Option<String>, String), Vec<String>> =
        BTreeMap::new();
    let mut add = |order: u8,
                   action: EdgeAction,
                   kind: EdgeKind,
                   subject: String,
                   app: Option<String>,
                   detail: String,
                   host: &str| {
        out.entry((order, action, kind, subject, app, detail))
            .or_default()
            .push(host.to_string());
    };
    for oh in &observed.hosts {
        if oh.fault.is_some() {
            continue;
        }
        let host = oh.name.as_str();
        let want = desired
            .edge
            .as_ref()
            .filter(|e| e.hosts.iter().any(|h| h == host));
        let config = oh.edge.as_ref().and_then(|e| e.config.as_ref());
        let container = oh.edge.as_ref().and_then(|e| e.container.as_ref());
        let routes = config.map(caddy::routes_of).unwrap_or_default();
        if let Some(edge) = want {
            match container {
                None => add(
                    0,
                    EdgeAction::Create,
                    EdgeKind::Container,
                    edge.image.clone(),
                    None,
                    String::new(),
                    host,
                ),
                Some(c) if c.spec != crate::edge::container_spec(&edge.image) => add(
                    0,
                    EdgeAction::Update,
                    EdgeKind::Container,
                    edge.image.clone(),
                    None,
                    format!("{} -> {}", c.image, edge.image),
                    host,
                ),
                Some(c) if !c.running => add(
                    0,
                    EdgeAction::Update,
                    EdgeKind::Container,
                    edge.image.clone(),
                    None,
                    "not running".into(),
                    host,
                ),
                Some(_) => {}
            }
            if let Some(cfg) = config {
                let server = cfg.pointer(&format!("/apps/http/servers/{}", caddy::SERVER));
                let ports_ok = caddy::http_settings(edge)
                    .iter()
                    .all(|(k, v)| cfg.pointer(&format!("/apps/http/{k}")) == Some(v));
                let settings_ok =
                    server.is_some_and(|s| caddy::settings_of(s) == caddy::server_settings(edge));
                let tls_ok = crate::edge::find_id(cfg, &caddy::tls_id(project, env))
                    == caddy::tls_policy(project, env, edge);
                if !(ports_ok && settings_ok && tls_ok) {
                    add(
                        1,
                        EdgeAction::Update,
                        EdgeKind::Config,
                        String::new(),
                        None,
                        String::new(),
                        host,
                    );
                }
            }
            for r in &edge.routes {
                let id = caddy::route_id(project, env, &r.app);
                let want = caddy::without_upstreams(&caddy::route(project, env, r, &[]));
                match routes
                    .iter()
                    .find(|x| x.get("@id").and_then(|v| v.as_str()) == Some(id.as_str()))
                    .map(caddy::without_upstreams)
                {
                    None => add(
                        2,
                        EdgeAction::Create,
                        EdgeKind::Route,
                        r.label(),
                        Some(r.app.clone()),
                        String::new(),
                        host,
                    ),
                    Some(have) if have != want => add(
                        2,
                        EdgeAction::Update,
                        EdgeKind::Route,
                        r.label(),
                        Some(r.app.clone()),
                        String::new(),
                        host,
                    ),
                    Some(_) => {}
                }
            }
        }
        // This environment's routes that are no longer wanted here.
        for have in &routes {
            let Some(id) = have.get("@id").and_then(|v| v.as_str()) else {
                continue;
            };
            let Some(app) = id.strip_prefix(&prefix) else {
                continue;
            };
            let wanted = want.is_some_and(|e| e.routes.iter().any(|r| r.app == app));
            if !wanted {
                let hosts: Vec<String> = have
                    .pointer("/match/0/host")
                    .and_then(|h| h.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let path = caddy::path_of(have);
                add(
                    3,
                    EdgeAction::Remove,
                    EdgeKind::Route,
                    format!("{}{path}", hosts.join(",")),
                    Some(app.to_string()),
                    String::new(),
                    host,
                );
            }
        }
    }
    out.into_iter()
        .map(
            |((_, action, kind, subject, app, detail), hosts)| EdgeChange {
                action,
                kind,
                hosts,
                subject,
                app,
                detail,
            },
        )
        .collect()
}

/// `+ route koa.localhost/ -> app (h1, h2)`, `~ edge h1: config`, `+ edge h1: container (caddy:2)`.
pub fn line(c: &EdgeChange) -> String {
    let sym = match c.action {
        EdgeAction::Create => "+",
        EdgeAction::Remove => "-",
        EdgeAction::Update => "~",
    };
    match c.kind {
        EdgeKind::Route => format!(
            "{sym} route {} -> {} ({})",
            c.subject,
            c.app.as_deref().unwrap_or("?"),
            c.hosts.join(", ")
        ),
        EdgeKind::Container => format!(
            "{sym} edge {}: container ({})",
            c.hosts.join(", "),
            if c.detail.is_empty() {
                &c.subject
            } else {
                &c.detail
            }
        ),
        EdgeKind::Config => format!("{sym} edge {}: config", c.hosts.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{DesiredEdge, EdgeTls, Route};
    use crate::edge::{EdgeContainer, ObservedEdge};
    use std::time::Duration;

    fn desired() -> DesiredState {
        let mut d = crate::plan::fixtures::desired();
        let hosts: Vec<String> = d.hosts.iter().map(|h| h.target.name.clone()).collect();
        d.edge = Some(DesiredEdge {
            hosts,
            image: "caddy:2".into(),
            http_port: 80,
            https_port: 443,
            tls: EdgeTls::Internal,
            routes: vec![Route {
                app: "web".into(),
                service: "web".into(),
                hosts: vec!["shop.localhost".into()],
                path: "/".into(),
                health_path: Some("/health".into()),
                health_interval: Duration::from_secs(5),
                health_timeout: Duration::from_secs(2),
                timeout: Duration::from_secs(30),
            }],
        });
        d
    }

    #[test]
    fn a_new_edge_is_a_container_and_a_route_per_host() {
        let d = desired();
        let o = crate::plan::fixtures::deployed(&d);
        let p = diff(&d, &o);
        let lines: Vec<String> = p.iter().map(line).collect();
        assert_eq!(
            lines,
            vec![
                "+ edge h1, h2: container (caddy:2)".to_string(),
                format!("+ route shop.localhost/ -> web (h1, h2)"),
            ]
        );
    }

    #[test]
    fn a_converged_edge_plans_nothing_and_another_projects_routes_are_not_ours() {
        let d = desired();
        let edge = d.edge.clone().unwrap();
        let mut o = crate::plan::fixtures::deployed(&d);
        let mut cfg = caddy::skeleton(&edge);
        let mut other = edge.routes[0].clone();
        other.app = "api".into();
        cfg["apps"]["http"]["servers"]["fleet"]["routes"] = serde_json::json!([
            caddy::route(
                &d.project,
                &d.environment,
                &edge.routes[0],
                &["10.0.0.1:1".into()]
            ),
            caddy::route("other", &d.environment, &other, &[]),
        ]);
        let p = caddy::tls_policy(&d.project, &d.environment, &edge).unwrap();
        cfg["apps"]["tls"]["automation"]["policies"] = serde_json::json!([p]);
        for h in &mut o.hosts {
            h.edge = Some(ObservedEdge {
                container: Some(EdgeContainer {
                    id: "e".into(),
                    image: "caddy:2".into(),
                    spec: crate::edge::container_spec("caddy:2"),
                    running: true,
                }),
                config: Some(cfg.clone()),
                error: None,
            });
        }
        assert_eq!(diff(&d, &o), vec![]);
        // A route of an older fleet (one proxy, no retry of a failed GET) is changed.
        let mut o2 = o.clone();
        for h in &mut o2.hosts {
            let c = h.edge.as_mut().unwrap().config.as_mut().unwrap();
            let r = &mut c["apps"]["http"]["servers"]["fleet"]["routes"][0];
            r["handle"] = serde_json::json!([r["handle"][0]["routes"][0]["handle"][0].clone()]);
        }
        let lines: Vec<String> = diff(&d, &o2).iter().map(line).collect();
        assert_eq!(
            lines,
            vec!["~ route shop.localhost/ -> web (h1, h2)".to_string()]
        );
        // No public app any more: our route goes, the other project's stays.
        let mut d2 = d.clone();
        d2.edge = None;
        let lines: Vec<String> = diff(&d2, &o).iter().map(line).collect();
        assert_eq!(
            lines,
            vec!["- route shop.localhost/ -> web (h1, h2)".to_string()]
        );
    }
}
