//! `fleet info`: the details of one instance, like `pm2 info`.
//!
//! Secrets stay masked: an environment variable whose manifest value is a secret reference
//! prints as the reference (`(secret from env DB_PW)`), never the value the container holds.
//! For a container the manifest no longer describes fleet cannot tell which values were
//! secrets, so every value of it is hidden.

use std::fmt::Write;

use bollard::query_parameters::InspectContainerOptions;

use super::status::{labels_of, unix_seconds};
use super::{Connected, Selector, instance_label, managed_services};
use crate::desired::{EnvValue, InstanceSpec};
use crate::observe::read::list_containers;

/// `NAME=value` pairs of a container's environment, with every secret of `spec` replaced by
/// its reference; with no spec every value is hidden.
pub fn masked_env(env: &[String], spec: Option<&InstanceSpec>) -> Vec<(String, String)> {
    env.iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let shown = match spec {
                None => "(hidden: not described by the manifest)".to_string(),
                Some(s) => match s.container.env.get(k) {
                    Some(EnvValue::Secret(r)) => r.to_string(),
                    _ => v.to_string(),
                },
            };
            (k.to_string(), shown)
        })
        .collect()
}

/// Sections of `key: value` lines, aligned per section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InfoView {
    pub title: String,
    pub sections: Vec<(String, Vec<(String, String)>)>,
}

impl InfoView {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.title);
        for (name, rows) in &self.sections {
            let _ = writeln!(s, "  {name}");
            if rows.is_empty() {
                let _ = writeln!(s, "    (none)");
            }
            let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (k, v) in rows {
                let _ = writeln!(s, "    {k:<w$}  {v}");
            }
        }
        s
    }
}

fn time_text(t: Option<&str>) -> String {
    match t.and_then(unix_seconds) {
        Some(_) => t.unwrap_or_default().to_string(),
        None => "-".into(),
    }
}

/// One view per matching container (every host, unless `sel` names one), plus one message per
/// host that could not be read.
pub async fn views(cx: &Connected, sel: &Selector) -> (Vec<InfoView>, Vec<String>) {
    let d = &cx.desired;
    let mut views = Vec::new();
    let mut errors = Vec::new();
    for (t, s) in cx.hosts() {
        if sel.host.as_deref().is_some_and(|h| h != t.name) {
            continue;
        }
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let list = match list_containers(s, &d.project, &d.environment).await {
            Ok(l) => l,
            Err(f) => {
                errors.push(format!("{} ({}): {}", f.host, f.address, f.message));
                continue;
            }
        };
        let docker = match s.docker().await {
            Ok(d) => d,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let (services, checks) = match cx.consul(s).await {
            Some(Ok(c)) => (
                managed_services(&c, &d.project, &d.environment).await.ok(),
                c.agent_checks().await.ok(),
            ),
            _ => (None, None),
        };
        for c in list
            .iter()
            .filter(|c| sel.matches(c.app.as_deref(), c.instance, &t.name))
        {
            let i = match docker
                .inspect_container(&c.id, None::<InspectContainerOptions>)
                .await
            {
                Ok(i) => i,
                Err(e) => {
                    errors.push(format!("{}: inspect {}: {e}", t.name, c.name));
                    continue;
                }
            };
            let app = c.app.as_deref().unwrap_or("?");
            let spec = c
                .instance
                .and_then(|n| cx.desired_instance(&t.name, app, n));
            let digest = docker
                .inspect_image(&c.image)
                .await
                .ok()
                .and_then(|im| im.repo_digests)
                .and_then(|v| v.into_iter().next())
                .unwrap_or_else(|| i.image.clone().unwrap_or_default());
            let state = i.state.clone().unwrap_or_default();
            let cfg = i.config.clone().unwrap_or_default();
            let hc = i.host_config.clone().unwrap_or_default();
            let mut general = vec![
                ("container".into(), format!("{} ({})", c.name, c.id)),
                ("host".into(), format!("{} ({})", t.name, t.address)),
                (
                    "status".into(),
                    state
                        .status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| c.state.as_str().into()),
                ),
                ("version".into(), c.version.clone().unwrap_or_default()),
                ("image".into(), c.image.clone()),
                ("digest".into(), digest),
                (
                    "command".into(),
                    std::iter::once(i.path.clone().unwrap_or_default())
                        .chain(i.args.clone().unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                (
                    "restart policy".into(),
                    hc.restart_policy
                        .as_ref()
                        .and_then(|r| r.name.map(|n| n.to_string()))
                        .unwrap_or_else(|| "-".into()),
                ),
                ("restarts".into(), i.restart_count.unwrap_or(0).to_string()),
                ("created".into(), time_text(i.created.as_deref())),
                ("started".into(), time_text(state.started_at.as_deref())),
                (
                    "last stopped".into(),
                    time_text(state.finished_at.as_deref()),
                ),
                (
                    "last exit code".into(),
                    state
                        .exit_code
                        .map_or_else(|| "-".into(), |c| c.to_string()),
                ),
            ];
            if let Some(e) = state.error.filter(|e| !e.is_empty()) {
                general.push(("error".into(), e));
            }
            if let Some(spec) = spec {
                general.push(("spec hash".into(), spec.spec_hash.clone()));
            }
            let env = masked_env(&cfg.env.clone().unwrap_or_default(), spec);
            let mut ports: Vec<(String, String)> = i
                .network_settings
                .as_ref()
                .and_then(|n| n.ports.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| {
                    let host = v
                        .unwrap_or_default()
                        .iter()
                        .map(|b| {
                            format!(
                                "{}:{}",
                                b.host_ip.clone().unwrap_or_default(),
                                b.host_port.clone().unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    (
                        k,
                        if host.is_empty() {
                            "not published".into()
                        } else {
                            host
                        },
                    )
                })
                .collect();
            ports.sort();
            let mounts: Vec<(String, String)> = i
                .mounts
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|m| {
                    (
                        m.destination.unwrap_or_default(),
                        format!(
                            "{} ({})",
                            m.name.or(m.source).unwrap_or_default(),
                            if m.rw.unwrap_or(true) { "rw" } else { "ro" }
                        ),
                    )
                })
                .collect();
            let mut consul_rows = Vec::new();
            for svc in services.iter().flatten().filter(|svc| svc.belongs_to(c)) {
                consul_rows.push((
                    "service".into(),
                    format!(
                        "{} (name {}, {}:{})",
                        svc.id, svc.name, svc.address, svc.port
                    ),
                ));
                consul_rows.push(("tags".into(), svc.tags.join(", ")));
                for ch in checks
                    .iter()
                    .flat_map(|m| m.values())
                    .filter(|ch| ch.service_id == svc.id)
                {
                    consul_rows.push((
                        format!("check {}", ch.check_id),
                        format!("{}: {}", ch.status, ch.output.trim()),
                    ));
                }
            }
            if consul_rows.is_empty() {
                consul_rows.push(("service".into(), "not registered".into()));
            }
            let labels = labels_of(&i);
            let logs = vec![
                (
                    "engine log file".into(),
                    i.log_path
                        .clone()
                        .filter(|p| !p.is_empty())
                        .unwrap_or_else(|| "-".into()),
                ),
                (
                    "read with".into(),
                    format!(
                        "fleet logs {} {app}{} --host {}",
                        d.environment,
                        c.instance
                            .map(|n| format!(" --instance {n}"))
                            .unwrap_or_default(),
                        t.name
                    ),
                ),
            ];
            views.push(InfoView {
                title: instance_label(app, c.instance, &t.name),
                sections: vec![
                    ("general".into(), general),
                    ("environment".into(), env),
                    ("ports".into(), ports),
                    ("mounts".into(), mounts),
                    ("consul".into(), consul_rows),
                    (
                        "labels".into(),
                        labels
                            .into_iter()
                            .filter(|(k, _)| k.starts_with("fleet."))
                            .collect(),
                    ),
                    ("logs".into(), logs),
                ],
            });
        }
    }
    (views, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures;

    #[test]
    fn secrets_print_as_their_reference_never_the_value() {
        let spec = fixtures::instance("h1", "api", 1, "v1");
        let env = vec![
            "LOG=info".to_string(),
            "DB_PASSWORD=hunter2".to_string(),
            "PATH=/bin".to_string(),
        ];
        let got = masked_env(&env, Some(&spec));
        assert_eq!(got[0], ("LOG".into(), "info".into()));
        assert_eq!(
            got[1],
            (
                "DB_PASSWORD".into(),
                "(secret from env SHOP_DB_PASSWORD)".into()
            )
        );
        assert_eq!(got[2].1, "/bin");
        let hidden = masked_env(&env, None);
        assert!(hidden.iter().all(|(_, v)| !v.contains("hunter2")));
    }

    #[test]
    fn view_renders_aligned_sections() {
        let v = InfoView {
            title: "api#1@h1".into(),
            sections: vec![(
                "general".into(),
                vec![("a".into(), "1".into()), ("long key".into(), "2".into())],
            )],
        };
        assert_eq!(
            v.render(),
            "api#1@h1\n  general\n    a         1\n    long key  2\n"
        );
    }
}
