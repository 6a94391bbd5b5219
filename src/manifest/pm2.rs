//! `fleet import pm2`: a pm2 ecosystem file (JSON) to a fleet manifest (TOML).
//!
//! Mapping (docs/manifest.md, "Importing from pm2"): each pm2 app becomes an app built from
//! its `cwd` (or `.`); `script` (+ `interpreter`, `args`) becomes `command`; `instances`
//! stays per host; `env` is the app's env; every `env_<name>` block becomes environment
//! `<name>` overriding that app's env (with no `env_<name>` at all, one environment
//! `production`); `deploy.<name>.host` gives hosts. Every key without an equivalent is
//! reported, key by key, as a warning.

use std::fmt::Write;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum Pm2Error {
    #[error("not a JSON ecosystem file (line {line}, column {column}): {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("the ecosystem file has no `apps` array")]
    NoApps,
}

/// The generated manifest and what could not be carried over.
#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    pub manifest: String,
    pub warnings: Vec<String>,
}

/// Keys with no fleet equivalent, and why: said once per key and app.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "watch",
        "fleet deploys images; rebuild and redeploy instead of watching files",
    ),
    ("ignore_watch", "fleet does not watch files"),
    ("watch_options", "fleet does not watch files"),
    (
        "log_file",
        "container logs go to Docker's log driver (`docker logs`)",
    ),
    (
        "out_file",
        "container logs go to Docker's log driver (`docker logs`)",
    ),
    (
        "error_file",
        "container logs go to Docker's log driver (`docker logs`)",
    ),
    ("merge_logs", "container logs go to Docker's log driver"),
    ("combine_logs", "container logs go to Docker's log driver"),
    (
        "log_date_format",
        "container logs go to Docker's log driver",
    ),
    ("log_type", "container logs go to Docker's log driver"),
    ("pid_file", "each instance is a container; Docker tracks it"),
    (
        "cron_restart",
        "no scheduled restarts; use a cron job running `fleet deploy`",
    ),
    (
        "min_uptime",
        "Docker's restart policy has no minimum uptime",
    ),
    (
        "listen_timeout",
        "use `health.deadline` for how long an instance may take to become healthy",
    ),
    (
        "restart_delay",
        "Docker's restart policy sets its own backoff",
    ),
    (
        "exp_backoff_restart_delay",
        "Docker's restart policy sets its own backoff",
    ),
    (
        "wait_ready",
        "use `health` (an HTTP check) to gate rollouts",
    ),
    (
        "shutdown_with_message",
        "containers are stopped with SIGTERM",
    ),
    ("source_map_support", "set it in the image (NODE_OPTIONS)"),
    ("node_args", "put node flags in the image or in `command`"),
    ("interpreter_args", "put interpreter flags in `command`"),
    ("vizion", "fleet does not track git metadata at run time"),
    ("automation", "no keymetrics integration"),
    ("pmx", "no keymetrics integration"),
    ("treekill", "containers are stopped as a whole"),
    ("force", "each instance is a separate container"),
    (
        "increment_var",
        "set per-instance values in env per environment",
    ),
    (
        "instance_var",
        "fleet puts the instance number in the `fleet.instance` label",
    ),
    ("namespace", "group apps by project and environment"),
    (
        "append_env_to_name",
        "container names carry the environment already",
    ),
    ("time", "container logs go to Docker's log driver"),
    ("disable_logs", "container logs go to Docker's log driver"),
    (
        "filter_env",
        "the container gets only the env the manifest gives it",
    ),
    (
        "stop_exit_codes",
        "Docker's restart policy does not filter exit codes",
    ),
    ("max_restarts", ""),
];

/// One app's env overrides in one environment: (app, [(name, value)]).
type AppEnv = (String, Vec<(String, String)>);

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_key(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        s.to_string()
    } else {
        toml_str(s)
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn inline_env(env: &[(String, String)]) -> String {
    let parts: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{} = {}", toml_key(k), toml_str(v)))
        .collect();
    format!("{{ {} }}", parts.join(", "))
}

/// A fleet app name from a pm2 name: lowercase, `-` for anything else.
fn app_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() { "app".into() } else { s }
}

/// pm2 memory (`300M`, `1G`, `512K`, bytes) to a fleet size.
fn memory(v: &Value) -> Option<String> {
    let s = scalar(v)?;
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    Some(match unit.trim().to_ascii_uppercase().as_str() {
        "" => format!("{n}B"),
        "K" | "KB" => format!("{n}KiB"),
        "M" | "MB" => format!("{n}MiB"),
        "G" | "GB" => format!("{n}GiB"),
        _ => return None,
    })
}

pub fn import(json: &str) -> Result<Import, Pm2Error> {
    let doc: Value = serde_json::from_str(json).map_err(|e| Pm2Error::Json {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let apps = match &doc {
        Value::Object(o) => o
            .get("apps")
            .and_then(Value::as_array)
            .ok_or(Pm2Error::NoApps)?,
        Value::Array(a) => a,
        _ => return Err(Pm2Error::NoApps),
    };
    let mut warnings = Vec::new();
    let mut out = String::new();
    // Environments in first-seen order, with per app env overrides.
    let mut envs: Vec<(String, Vec<AppEnv>)> = Vec::new();
    let mut apps_toml = String::new();
    let mut used = Vec::new();

    for (i, app) in apps.iter().enumerate() {
        let Some(obj) = app.as_object() else {
            warnings.push(format!("apps[{i}]: not an object, skipped"));
            continue;
        };
        let raw_name = obj
            .get("name")
            .and_then(scalar)
            .unwrap_or_else(|| format!("app{}", i + 1));
        let mut name = app_name(&raw_name);
        while used.contains(&name) {
            name.push_str("-2");
        }
        used.push(name.clone());
        let at = format!("apps[{i}] ({raw_name})");
        if name != raw_name {
            warnings.push(format!(
                "{at}.name: renamed to `{name}` (app names are lowercase letters, digits and `-`)"
            ));
        }
        let mut a = String::new();
        let _ = writeln!(a, "\n[apps.{name}]");
        let cwd = obj.get("cwd").and_then(Value::as_str);
        let _ = writeln!(
            a,
            "build = {{ context = {} }}   # a Dockerfile there; `fleet init --template node` writes one",
            toml_str(cwd.unwrap_or("."))
        );
        let mut handled = vec!["name", "cwd"];

        // script (+ interpreter) + args -> command
        if let Some(script) = obj.get("script").and_then(Value::as_str) {
            handled.extend(["script", "interpreter", "exec_interpreter"]);
            let interp = obj
                .get("interpreter")
                .or(obj.get("exec_interpreter"))
                .and_then(Value::as_str);
            let mut cmd: Vec<String> = match interp {
                Some("none") => vec![script.into()],
                Some(i) => vec![i.into(), script.into()],
                None if script.ends_with(".js")
                    || script.ends_with(".mjs")
                    || script.ends_with(".cjs") =>
                {
                    vec!["node".into(), script.into()]
                }
                None => vec![script.into()],
            };
            handled.push("args");
            match obj.get("args") {
                Some(Value::String(s)) => cmd.extend(s.split_whitespace().map(str::to_string)),
                Some(Value::Array(v)) => cmd.extend(v.iter().filter_map(scalar)),
                _ => {}
            }
            let parts: Vec<String> = cmd.iter().map(|c| toml_str(c)).collect();
            let _ = writeln!(a, "command = [{}]", parts.join(", "));
        } else {
            warnings.push(format!("{at}: no `script`; the image's own command runs"));
        }

        handled.push("instances");
        let instances = match obj.get("instances") {
            None => Some(1),
            Some(v) => match scalar(v).as_deref().map(str::trim) {
                Some("max") | Some("-1") | Some("0") => {
                    warnings.push(format!("{at}.instances: `{}` (per CPU) has no equivalent: fleet runs a fixed number per host; set to 1", scalar(v).unwrap_or_default()));
                    Some(1)
                }
                Some(s) => match s.parse::<i64>() {
                    Ok(n) if n > 0 => Some(n),
                    Ok(n) => {
                        warnings.push(format!(
                            "{at}.instances: `{n}` means \"CPUs minus {}\" in pm2; set to 1",
                            -n
                        ));
                        Some(1)
                    }
                    Err(_) => {
                        warnings.push(format!("{at}.instances: `{s}` is not a number; set to 1"));
                        Some(1)
                    }
                },
                None => None,
            },
        };
        if let Some(n) = instances.filter(|n| *n != 1) {
            let _ = writeln!(a, "instances = {n}");
        }

        handled.push("exec_mode");
        if let Some(m) = obj.get("exec_mode").and_then(Value::as_str)
            && m.contains("cluster")
        {
            warnings.push(format!("{at}.exec_mode: `cluster` has no equivalent: each instance is its own container with its own host port (published = \"auto\")"));
        }

        handled.push("env");
        let mut env: Vec<(String, String)> = Vec::new();
        if let Some(Value::Object(e)) = obj.get("env") {
            for (k, v) in e {
                match scalar(v) {
                    Some(s) => env.push((k.clone(), s)),
                    None => warnings.push(format!(
                        "{at}.env.{k}: not a string, number or boolean; left out"
                    )),
                }
            }
        }
        if let Some((_, p)) = env.iter().find(|(k, _)| k == "PORT")
            && let Ok(port) = p.parse::<u16>()
        {
            let _ = writeln!(a, "port = {port}                 # from env.PORT");
        }
        if !env.is_empty() {
            let _ = writeln!(a, "env = {}", inline_env(&env));
        }
        for (k, v) in obj {
            if let Some(env_name) = k.strip_prefix("env_") {
                handled.push(k);
                let Value::Object(e) = v else {
                    warnings.push(format!("{at}.{k}: not an object; left out"));
                    continue;
                };
                let vars: Vec<(String, String)> = e
                    .iter()
                    .filter_map(|(k2, v2)| match scalar(v2) {
                        Some(s) => Some((k2.clone(), s)),
                        None => {
                            warnings.push(format!(
                                "{at}.{k}.{k2}: not a string, number or boolean; left out"
                            ));
                            None
                        }
                    })
                    .collect();
                let env_key = app_name(env_name);
                let slot = match envs.iter_mut().find(|(n, _)| *n == env_key) {
                    Some(s) => s,
                    None => {
                        envs.push((env_key, Vec::new()));
                        envs.last_mut().expect("just pushed")
                    }
                };
                slot.1.push((name.clone(), vars));
            }
        }

        handled.push("max_memory_restart");
        if let Some(v) = obj.get("max_memory_restart") {
            match memory(v) {
                Some(m) => {
                    let _ = writeln!(a, "limits = {{ memory = {} }}", toml_str(&m));
                    warnings.push(format!("{at}.max_memory_restart: became a hard memory limit: Docker stops the container at {m} and the restart policy starts it again"));
                }
                None => warnings.push(format!(
                    "{at}.max_memory_restart: `{}` is not a size; left out",
                    scalar(v).unwrap_or_default()
                )),
            }
        }
        handled.extend(["autorestart", "max_restarts"]);
        let autorestart = obj
            .get("autorestart")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let max_restarts = obj.get("max_restarts").and_then(Value::as_u64);
        match (autorestart, max_restarts) {
            (false, _) => {
                let _ = writeln!(a, "restart = \"no\"");
            }
            (true, Some(n)) => {
                let _ = writeln!(a, "restart = \"on-failure:{n}\"");
            }
            (true, None) => {}
        }
        handled.push("kill_timeout");
        if let Some(ms) = obj.get("kill_timeout").and_then(Value::as_u64) {
            let _ = writeln!(
                a,
                "stop_timeout = {}",
                toml_str(
                    &humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
                )
            );
        }
        handled.extend(["user", "uid"]);
        if let Some(u) = obj.get("user").or(obj.get("uid")).and_then(scalar) {
            let _ = writeln!(a, "user = {}", toml_str(&u));
        }
        for (k, _) in obj {
            if handled.contains(&k.as_str()) {
                continue;
            }
            let why = UNSUPPORTED
                .iter()
                .find(|(u, _)| u == k)
                .map(|(_, w)| *w)
                .filter(|w| !w.is_empty())
                .unwrap_or("no fleet equivalent");
            warnings.push(format!("{at}.{k}: not imported: {why}"));
        }
        apps_toml.push_str(&a);
    }

    // Hosts: from pm2's deploy section when it names some, else this machine.
    let mut hosts: Vec<(String, String, Option<String>)> = Vec::new();
    let mut env_hosts: Vec<(String, Vec<String>)> = Vec::new();
    if let Some(Value::Object(deploy)) = doc.get("deploy") {
        for (env_name, d) in deploy {
            let user = d.get("user").and_then(Value::as_str).map(str::to_string);
            let list: Vec<String> = match d.get("host") {
                Some(Value::String(h)) => vec![h.clone()],
                Some(Value::Array(hs)) => hs
                    .iter()
                    .filter_map(|h| h.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            };
            let mut names = Vec::new();
            for h in list {
                let existing = hosts
                    .iter()
                    .find(|(_, a, _)| *a == h)
                    .map(|(n, _, _)| n.clone());
                let n = existing.unwrap_or_else(|| {
                    let n = format!("host{}", hosts.len() + 1);
                    hosts.push((n.clone(), h.clone(), user.clone()));
                    n
                });
                names.push(n);
            }
            env_hosts.push((app_name(env_name), names));
            if !envs.iter().any(|(n, _)| *n == app_name(env_name)) {
                envs.push((app_name(env_name), Vec::new()));
            }
            warnings.push(format!("deploy.{env_name}: hosts imported; repo/ref/path/post-deploy are not (fleet ships images, not git checkouts)"));
        }
    }
    if envs.is_empty() {
        envs.push(("production".into(), Vec::new()));
    }

    let project = used.first().cloned().unwrap_or_else(|| "app".into());
    let _ = writeln!(
        out,
        "# Imported from a pm2 ecosystem file by `fleet import pm2`. Review the hosts and\n# each app's `build`, then run `fleet validate`.\n"
    );
    let _ = writeln!(out, "[project]\nname = {}\n", toml_str(&project));
    if hosts.is_empty() {
        warnings.push("hosts: pm2 names none; a `local` host (this machine) was written: replace it with your servers".into());
        let _ = writeln!(
            out,
            "[hosts.local]\naddress = \"local\"          # this machine; add your servers here"
        );
    } else {
        for (n, addr, user) in &hosts {
            let _ = writeln!(out, "[hosts.{n}]\naddress = {}", toml_str(addr));
            if let Some(u) = user {
                let _ = writeln!(out, "user = {}", toml_str(u));
            }
            out.push('\n');
        }
    }
    out.push_str(&apps_toml);
    for (env_name, overrides) in &envs {
        let _ = writeln!(out, "\n[environments.{env_name}]");
        if let Some((_, hs)) = env_hosts.iter().find(|(n, _)| n == env_name) {
            let parts: Vec<String> = hs.iter().map(|h| toml_str(h)).collect();
            let _ = writeln!(out, "hosts = [{}]", parts.join(", "));
        }
        for (app, vars) in overrides {
            if !vars.is_empty() {
                let _ = writeln!(out, "apps.{app}.env = {}", inline_env(vars));
            }
        }
    }
    Ok(Import {
        manifest: out,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units() {
        assert_eq!(memory(&Value::from("300M")).as_deref(), Some("300MiB"));
        assert_eq!(memory(&Value::from("1G")).as_deref(), Some("1GiB"));
        assert_eq!(memory(&Value::from(1024)).as_deref(), Some("1024B"));
        assert_eq!(memory(&Value::from("lots")), None);
    }

    #[test]
    fn env_blocks_become_environments_and_unknown_keys_warn() {
        let r = import(r#"{"apps":[{"name":"My App","script":"server.js","args":"--x 1","env":{"A":"1"},"env_staging":{"A":"2"},"watch":true,"instances":"max","max_memory_restart":"200M"}]}"#).unwrap();
        assert!(r.manifest.contains("[apps.my-app]"), "{}", r.manifest);
        assert!(
            r.manifest
                .contains(r#"command = ["node", "server.js", "--x", "1"]"#)
        );
        assert!(
            r.manifest
                .contains("[environments.staging]\napps.my-app.env = { A = \"2\" }")
        );
        assert!(!r.manifest.contains("[environments.production]"));
        let w = r.warnings.join("\n");
        for key in ["name", "watch", "instances", "max_memory_restart", "hosts"] {
            assert!(w.contains(key), "no warning about {key}: {w}");
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(import("{"), Err(Pm2Error::Json { .. })));
        assert!(matches!(import("{}"), Err(Pm2Error::NoApps)));
    }
}
