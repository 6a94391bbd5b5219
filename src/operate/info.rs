//! `fleet info`: the details of one instance, like `pm2 info`.
//!
//! Secrets stay masked: an environment variable whose manifest value is a secret reference
//! prints as the reference (`(secret from env DB_PW)`), never the value the container holds.
//! The manifest says which values are secrets only for a container made from its spec (the
//! `fleet.spec` label matches): after a secret is renamed or made plain, the container still
//! holds the old secret's value under a name the manifest now calls plain. For every other
//! container fleet cannot tell which values were secrets, so every value of it is hidden.

use std::fmt::Write;

use bollard::query_parameters::InspectContainerOptions;

use super::status::{WorkerRow, compact_bytes, compact_duration, labels_of, unix_seconds};
use super::{Selector, instance_label, managed_services};
use crate::desired::{EnvValue, InstanceSpec};
use crate::manifest::resolve::spec_hash_with_image;
use crate::observe::Connected;
use crate::observe::pm2::{self, Worker};
use crate::observe::read::list_containers;

/// `spec`, the manifest's spec for a container's slot, only if the container was made from it:
/// its `fleet.spec` label `made_with` is the spec's hash, or the hash the spec has with the
/// container's `image` (another version of the same spec; the image does not decide which
/// values are secrets).
pub fn made_from<'a>(
    spec: Option<&'a InstanceSpec>,
    made_with: Option<&str>,
    image: &str,
) -> Option<&'a InstanceSpec> {
    let (spec, made_with) = (spec?, made_with?);
    (made_with == spec.spec_hash || made_with == spec_hash_with_image(spec, image)).then_some(spec)
}

/// `NAME=value` pairs of a container's environment, with every secret of `spec` replaced by
/// its reference. `spec` must be the one the container was made from (`made_from`): with none
/// every value is hidden.
pub fn masked_env(env: &[String], spec: Option<&InstanceSpec>) -> Vec<(String, String)> {
    env.iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let shown = match spec {
                None => "(hidden: not made from the manifest's spec)".to_string(),
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

/// The `pm2 workers` section: one line per worker, as `pm2 list` shows it, read at unix second
/// `now`; or why they could not be read.
pub fn workers_section(workers: &Result<Vec<Worker>, String>, now: i64) -> Vec<(String, String)> {
    let workers = match workers {
        Ok(w) => w,
        Err(e) => return vec![("pm2".into(), format!("unknown: {e}"))],
    };
    workers
        .iter()
        .map(|w| {
            let r = WorkerRow::of(w, now);
            let mut parts = vec![
                r.pid
                    .map_or_else(|| "no pid".into(), |p| format!("pid {p}")),
                r.status.clone(),
                match r.restarts {
                    1 => "1 restart".into(),
                    n => format!("{n} restarts"),
                },
            ];
            if let Some(u) = r.uptime_s {
                parts.push(format!("up {}", compact_duration(u)));
            }
            if let Some(c) = r.cpu {
                parts.push(format!("cpu {c:.1}%"));
            }
            if let Some(m) = r.memory {
                parts.push(format!("mem {}", compact_bytes(m)));
            }
            (format!("{} {}", r.pm_id, r.name), parts.join(", "))
        })
        .collect()
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
            let made = c.spec_hash.as_deref();
            match (made, spec) {
                (Some(h), Some(s)) if h != s.spec_hash => general.push((
                    "spec hash".into(),
                    format!("{h} (the manifest's: {})", s.spec_hash),
                )),
                (Some(h), _) => general.push(("spec hash".into(), h.to_string())),
                (None, Some(s)) => general.push((
                    "spec hash".into(),
                    format!("- (the manifest's: {})", s.spec_hash),
                )),
                (None, None) => {}
            }
            let env = masked_env(
                &cfg.env.clone().unwrap_or_default(),
                made_from(spec, made, &c.image),
            );
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
            let pm2_setting = d.apps.iter().find(|a| a.name == app).and_then(|a| a.pm2);
            let workers = match pm2::jlist_command(&i, pm2_setting)
                .filter(|_| c.state == crate::observe::ContainerState::Running)
            {
                Some(cmd) => Some(
                    pm2::read_workers(&docker, &c.id, &cmd)
                        .await
                        .map_err(|e| e.to_string()),
                ),
                None => None,
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let mut sections = vec![("general".into(), general)];
            if let Some(w) = &workers {
                sections.push(("pm2 workers".into(), workers_section(w, now)));
            }
            views.push(InfoView {
                title: instance_label(app, c.instance, &t.name),
                sections: [
                    sections,
                    vec![
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
                ]
                .concat(),
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

    /// A secret renamed (or made plain) in the manifest after the container was made: the
    /// container still holds the value, under a name the manifest no longer calls a secret.
    #[test]
    fn only_the_spec_a_container_was_made_from_masks_it() {
        let old = fixtures::instance("h1", "api", 1, "v1");
        let env = vec!["LOG=info".to_string(), "DB_PASSWORD=hunter2".to_string()];
        let shown = |spec: Option<&InstanceSpec>| {
            masked_env(
                &env,
                made_from(spec, Some(&old.spec_hash), &old.container.image),
            )
        };
        let mut renamed = old.clone();
        renamed.container.env.shift_remove("DB_PASSWORD");
        renamed
            .container
            .env
            .insert("DB_PASSWORD".into(), EnvValue::Plain("now plain".into()));
        fixtures::rehash(&mut renamed);
        assert_ne!(renamed.spec_hash, old.spec_hash);
        let got = shown(Some(&renamed));
        assert!(
            got.iter()
                .all(|(_, v)| !v.contains("hunter2") && v.starts_with("(hidden")),
            "{got:?}"
        );
        // No label at all: hidden too.
        let got = masked_env(&env, made_from(Some(&old), None, &old.container.image));
        assert!(got.iter().all(|(_, v)| v.starts_with("(hidden")), "{got:?}");
        // The spec it was made from masks the secret and shows the rest.
        let got = shown(Some(&old));
        assert_eq!(got[0].1, "info");
        assert_eq!(got[1].1, "(secret from env SHOP_DB_PASSWORD)");
    }

    /// The manifest now wants another version of the same spec: the container's env is
    /// still the manifest's, so its masking holds.
    #[test]
    fn another_version_of_the_same_spec_still_masks() {
        let resolve = |image: &str| {
            let src = format!(
                "[project]\nname = \"p\"\n[hosts.h1]\naddress = \"local\"\n[apps.api]\nimage = \"{image}\"\nenv = {{ PW = {{ env = \"PW\" }} }}\n[environments.production]\n"
            );
            let m = crate::manifest::load_str(
                &src,
                crate::manifest::Format::Toml,
                "m.toml",
                std::path::Path::new("/p"),
            )
            .unwrap();
            let state = m.resolve("production", &Default::default()).unwrap();
            state.hosts[0].instances[0].clone()
        };
        let (old, new) = (resolve("nginx:1.27"), resolve("nginx:1.28"));
        assert_ne!(new.spec_hash, old.spec_hash);
        let spec = made_from(Some(&new), Some(&old.spec_hash), &old.container.image);
        assert!(spec.is_some());
        let got = masked_env(&["PW=hunter2".to_string()], spec);
        assert_eq!(got[0].1, "(secret from env PW)");
    }

    #[test]
    fn workers_section_reads_like_pm2_list() {
        let w = crate::observe::pm2::parse_jlist(include_str!(
            "../observe/fixtures/pm2-jlist-errored.json"
        ))
        .unwrap();
        // 100 s after worker 0 started.
        let now = 1_796_486_368 + 100;
        assert_eq!(
            workers_section(&Ok(w), now),
            vec![
                (
                    "0 app".to_string(),
                    "pid 16, online, 0 restarts, up 1m, cpu 1.1%, mem 58.7MiB".to_string()
                ),
                (
                    "1 app".to_string(),
                    "no pid, errored, 15 restarts".to_string()
                ),
            ]
        );
        assert_eq!(
            workers_section(&Err("pm2 jlist did not answer within 10s".into()), now),
            vec![(
                "pm2".to_string(),
                "unknown: pm2 jlist did not answer within 10s".to_string()
            )]
        );
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
