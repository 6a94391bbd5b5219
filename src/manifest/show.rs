//! The human rendering of a desired state (`fleet show`). Secrets print as their reference,
//! never a value (fleet does not know values before apply).

use std::fmt::Write;

use crate::desired::{DesiredState, EnvValue, HealthCheck, RestartPolicy};

pub fn render(s: &DesiredState) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "project {} / environment {}", s.project, s.environment);
    if let Some(r) = &s.registry {
        let _ = writeln!(o, "registry {}", r.server);
    }
    if let Some(c) = &s.consul {
        let dc = c
            .datacenter
            .as_deref()
            .map(|d| format!(" (datacenter {d})"))
            .unwrap_or_default();
        let _ = writeln!(o, "consul {}{dc}", c.address);
    }
    for a in &s.apps {
        let image = if a.build.is_some() {
            format!("{}:{}", a.image, a.version)
        } else {
            a.image.clone()
        };
        let _ = writeln!(o, "\napp {}  image {}  batch {}", a.name, image, a.batch);
        for (k, v) in &a.config {
            let _ = writeln!(o, "  kv {k} = {v}");
        }
    }
    for h in &s.hosts {
        let _ = writeln!(o, "\nhost {} ({})", h.target.name, h.target.address);
        if h.instances.is_empty() {
            let _ = writeln!(o, "  (nothing runs here)");
        }
        for i in &h.instances {
            let c = &i.container;
            let _ = writeln!(
                o,
                "  {}  {}  spec {}",
                i.container_name(&s.project, &s.environment),
                c.image,
                i.spec_hash
            );
            for p in &c.ports {
                let _ = writeln!(o, "    port {}:{}/{}", p.host, p.container, p.protocol);
            }
            for (k, v) in &c.env {
                let v = match v {
                    EnvValue::Plain(p) => p.clone(),
                    EnvValue::Secret(r) => r.to_string(),
                };
                let _ = writeln!(o, "    env {k}={v}");
            }
            if let Some(cmd) = &c.command {
                let _ = writeln!(o, "    command {}", cmd.join(" "));
            }
            let restart = match &c.restart {
                RestartPolicy::No => "no".to_string(),
                RestartPolicy::Always => "always".into(),
                RestartPolicy::UnlessStopped => "unless-stopped".into(),
                RestartPolicy::OnFailure { max_retries: None } => "on-failure".into(),
                RestartPolicy::OnFailure {
                    max_retries: Some(n),
                } => format!("on-failure:{n}"),
            };
            let mut limits = String::new();
            if let Some(m) = c.memory {
                let _ = write!(limits, "  memory {}", bytesize::ByteSize(m).display().iec());
            }
            if let Some(cpu) = c.cpus {
                let _ = write!(limits, "  cpus {cpu}");
            }
            let _ = writeln!(
                o,
                "    restart {restart}  stop {}{limits}",
                humantime::format_duration(c.stop_timeout)
            );
            for v in &c.volumes {
                let _ = writeln!(o, "    volume {v}");
            }
            if let Some(hc) = &c.health {
                let what = match &hc.check {
                    HealthCheck::Http(p) => format!("http {p}"),
                    HealthCheck::Tcp => "tcp".into(),
                };
                let _ = writeln!(
                    o,
                    "    health {what} every {} (timeout {})",
                    humantime::format_duration(hc.interval),
                    humantime::format_duration(hc.timeout)
                );
            }
            if let Some(sv) = &i.service {
                let _ = writeln!(
                    o,
                    "    service {} id {} at {}:{} tags [{}]",
                    sv.name,
                    sv.id,
                    sv.address,
                    sv.port,
                    sv.tags.join(", ")
                );
            }
        }
    }
    o
}
