//! `fleet import pm2`: a pm2 ecosystem file (JSON) to a fleet manifest (TOML).
//!
//! Mapping (docs/manifest.md, "Importing from pm2"): each pm2 app becomes an app built from
//! its `cwd` (or `.`); `script` (+ `interpreter`, `args`) becomes `command`; `instances`
//! stays per host; `env` is the app's env; every `env_<name>` block becomes environment
//! `<name>` overriding that app's env (with no `env_<name>` at all, one environment
//! `production`); `deploy.<name>.host` gives hosts. Every key without an equivalent is
//! reported, key by key, as a warning.
//!
//! The result always validates: what fleet cannot take as it is (an empty `script`, a name too
//! long for a container name, a memory limit below Docker's minimum, remote hosts without a
//! registry to ship images through, ...) is refused with a diagnostic at its line in the
//! ecosystem file, every such problem at once. A `null` is taken as a key left out.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use miette::NamedSource;
use toml_edit::{Array, DocumentMut, InlineTable, Item, value};

use super::diag::{self, Cx, Problem};
use super::model::{self, MAX_INSTANCES, MIN_MEMORY};
use super::node::{self, Node, Span, Table, Value};

/// Why an ecosystem file cannot be imported: every problem, at its place in the file.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("cannot import {path}: {} problem{} found", problems.len(), if problems.len() == 1 { "" } else { "s" })]
#[diagnostic(code(fleet::import::pm2), help("{}", diag::see("fleet::import::pm2")))]
pub struct Pm2Error {
    pub path: String,
    #[source_code]
    pub src: NamedSource<Arc<str>>,
    #[related]
    pub problems: Vec<Problem>,
}

/// What the ecosystem file cannot say.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `host:port` of the registry built images go through (`[registry] server`); needed as
    /// soon as a `deploy` section names a remote host.
    pub registry: Option<String>,
}

/// The generated manifest and what could not be carried over.
#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    pub manifest: String,
    pub warnings: Vec<String>,
}

/// Checks an import the way `fleet validate` does: it loads, and every environment resolves
/// (built apps at a placeholder version). `dir` anchors the build contexts.
pub fn check(
    i: &Import,
    name: &str,
    dir: &std::path::Path,
) -> Result<super::Loaded, super::ManifestError> {
    let loaded = super::load_str(&i.manifest, super::Format::Toml, name, dir)?;
    let versions = loaded.placeholder_versions();
    for env in loaded.environments() {
        loaded.resolve(&env, &versions)?;
    }
    Ok(loaded)
}

/// Longest app, environment and project name (they go into container names and Consul IDs).
const MAX_NAME: usize = 63;

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

/// A TOML table that is only a parent: `hosts` in `[hosts.local]` (no `[hosts]` header of its
/// own), or with `dotted`, `apps` in `apps.api.env = { ... }`.
fn parent_table(dotted: bool) -> toml_edit::Table {
    let mut t = toml_edit::Table::new();
    t.set_implicit(true);
    t.set_dotted(dotted);
    t
}

/// A value followed on its line by `comment` (with the spaces before its `#`).
fn commented(v: impl Into<toml_edit::Value>, comment: &str) -> Item {
    let mut v = v.into();
    v.decor_mut().set_suffix(comment);
    Item::Value(v)
}

/// Env variables as an inline table, `{ NAME = "value", ... }` (toml_edit quotes what needs it).
fn env_table(env: &[(String, String)]) -> Item {
    value(InlineTable::from_iter(
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ))
}

/// A string, number or boolean as text (as pm2 passes them to the process).
fn scalar(n: &Node) -> Option<String> {
    match &n.value {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The first character of `n` (a label on a whole object would cover the whole file).
fn head(n: &Node) -> Span {
    n.span.start..(n.span.start + 1).min(n.span.end)
}

/// A fleet name from a pm2 name: lowercase, `-` for anything else; empty if nothing is left.
fn fleet_name(name: &str) -> String {
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
    s.trim_matches('-').to_string()
}

/// A fleet app name from a pm2 name (`app` if nothing is left).
fn app_name(name: &str) -> String {
    let s = fleet_name(name);
    if s.is_empty() { "app".into() } else { s }
}

/// Whether `name` (an app or environment name, from `raw`) is short enough; if not, a problem.
fn fits(cx: &mut Cx, what: &str, name: &str, span: &Span) -> bool {
    if name.len() <= MAX_NAME {
        return true;
    }
    cx.err(
        span,
        format!("the {what} name `{name}` is longer than {MAX_NAME} characters"),
        "name too long",
        Some(format!(
            "{what} names go into container names and Consul IDs: shorten it in the ecosystem file"
        )),
    );
    false
}

/// The environment named by `raw` (an `env_<name>` suffix or a `deploy` key), or a problem.
fn env_name(cx: &mut Cx, raw: &str, span: &Span) -> Option<String> {
    let name = fleet_name(raw);
    if name.is_empty() {
        cx.err(
            span,
            format!("`{raw}` names no environment"),
            "no environment name",
            Some("name environments with letters and digits, e.g. `env_production`".into()),
        );
        return None;
    }
    fits(cx, "environment", &name, span).then_some(name)
}

/// pm2 memory (`300M`, `1G`, `512K`, bytes): the fleet size to write (`300MiB`) and its bytes
/// (saturated, as fleet reads it).
fn memory(s: &str) -> Option<(String, u64)> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    let (unit, shift) = match unit.trim().to_ascii_uppercase().as_str() {
        "" => ("B", 0),
        "K" | "KB" => ("KiB", 10),
        "M" | "MB" => ("MiB", 20),
        "G" | "GB" => ("GiB", 30),
        _ => return None,
    };
    Some((format!("{n}{unit}"), n.saturating_mul(1 << shift)))
}

/// The variables of an `env` / `env_<name>` object; a name the process environment cannot
/// hold is a problem, a value that is not a scalar a warning.
fn env_vars(
    cx: &mut Cx,
    n: &Node,
    at: &str,
    key: &str,
    warnings: &mut Vec<String>,
) -> Vec<(String, String)> {
    let Value::Table(e) = &n.value else {
        warnings.push(format!("{at}.{key}: not an object; left out"));
        return Vec::new();
    };
    let mut vars = Vec::new();
    for (k, v) in &e.entries {
        if !cx.env_var_name(k) {
            continue;
        }
        match scalar(v) {
            Some(s) => vars.push((k.name.clone(), s)),
            None => warnings.push(format!(
                "{at}.{key}.{}: not a string, number or boolean; left out",
                k.name
            )),
        }
    }
    vars
}

/// The `apps` array of the ecosystem file (or the file itself, when it is an array).
fn apps_of<'a>(cx: &mut Cx, doc: &'a Node) -> Option<(&'a [Node], Option<&'a Table>, Span)> {
    let help = || {
        Some(
            "an ecosystem file is `{ \"apps\": [{ \"name\": \"api\", \"script\": \"app.js\" }] }`"
                .into(),
        )
    };
    match &doc.value {
        Value::Table(t) => match t.get("apps") {
            Some(Node {
                value: Value::Array(a),
                span,
            }) => Some((a, Some(t), span.start..span.start + 1)),
            Some(n) => {
                cx.err(&n.span, "`apps` is not an array", "not an array", help());
                None
            }
            None => {
                cx.err(
                    &head(doc),
                    "the ecosystem file has no `apps` array",
                    "no `apps`",
                    help(),
                );
                None
            }
        },
        Value::Array(a) => Some((a, None, head(doc))),
        v => {
            cx.err(
                &doc.span,
                format!(
                    "an ecosystem file is an object with `apps`, not {}",
                    v.type_name()
                ),
                "not an ecosystem file",
                help(),
            );
            None
        }
    }
}

/// Imports the ecosystem file `json`; `name` labels diagnostics.
pub fn import(json: &str, name: &str, opts: &Options) -> Result<Import, Pm2Error> {
    let mut cx = Cx::default();
    let imported = match node::parse_json_dropping_nulls(json) {
        Ok(doc) => convert(&mut cx, &doc, opts),
        Err(errs) => {
            for e in errs {
                cx.err(
                    &e.span,
                    format!("not a JSON ecosystem file: {}", e.message),
                    "here",
                    Some("for ecosystem.config.js, print it as JSON first: `node -e 'console.log(JSON.stringify(require(\"./ecosystem.config.js\")))'`".into()),
                );
            }
            None
        }
    };
    match imported {
        Some(i) if cx.problems.is_empty() => Ok(i),
        // `convert` gives nothing only after a problem, and a JSON error is one.
        _ => {
            let mut problems = cx.problems;
            problems.sort_by_key(|p| p.span.offset());
            diag::fit(json, &mut problems);
            Err(Pm2Error {
                path: name.to_string(),
                src: NamedSource::new(name, Arc::from(json)).with_language("JSON"),
                problems,
            })
        }
    }
}

fn convert(cx: &mut Cx, doc: &Node, opts: &Options) -> Option<Import> {
    let (apps, top, apps_span) = apps_of(cx, doc)?;
    let mut warnings = Vec::new();
    // Environments in first-seen order, with per app env overrides.
    let mut envs: Vec<(String, Vec<AppEnv>)> = Vec::new();
    // `[apps.<name>]`, one table per app, in the ecosystem file's order.
    let mut apps_out = parent_table(false);
    let mut taken: HashSet<String> = HashSet::new();
    // The first app's name also names the project.
    let mut project: Option<String> = None;

    for (i, app) in apps.iter().enumerate() {
        let Value::Table(obj) = &app.value else {
            warnings.push(format!("apps[{i}]: not an object, skipped"));
            continue;
        };
        let name_node = obj.get("name");
        let raw_name = name_node
            .and_then(scalar)
            .unwrap_or_else(|| format!("app{}", i + 1));
        let base = app_name(&raw_name);
        let mut name = base.clone();
        let mut k = 2;
        while taken.contains(&name) {
            name = format!("{base}-{k}");
            k += 1;
        }
        taken.insert(name.clone());
        project.get_or_insert_with(|| name.clone());
        let at = format!("apps[{i}] ({raw_name})");
        let name_span = name_node.map_or_else(|| head(app), |n| n.span.clone());
        if fits(cx, "app", &name, &name_span) && name != raw_name {
            warnings.push(format!(
                "{at}.name: renamed to `{name}` (app names are lowercase letters, digits and `-`)"
            ));
        }
        let mut a = toml_edit::Table::new();
        let context = match obj.get("cwd") {
            None => Some(".".to_string()),
            Some(
                n @ Node {
                    value: Value::Str(_),
                    ..
                },
            ) => cx.text(n),
            Some(_) => {
                warnings.push(format!("{at}.cwd: not a string; built from `.`"));
                Some(".".to_string())
            }
        };
        let build = InlineTable::from_iter([("context", context.as_deref().unwrap_or("."))]);
        a.insert(
            "build",
            commented(
                build,
                "   # a Dockerfile there; `fleet init --template node` writes one",
            ),
        );
        let mut handled = vec!["name", "cwd"];

        // script (+ interpreter) + args -> command
        if let Some(sn) = obj.get("script") {
            handled.extend(["script", "interpreter", "exec_interpreter", "args"]);
            let script = cx.text(sn).unwrap_or_default();
            let interp = match obj.get("interpreter").or(obj.get("exec_interpreter")) {
                None => None,
                Some(n) => cx.text(n),
            };
            let mut cmd: Vec<String> = match interp.as_deref() {
                Some("none") => vec![script.clone()],
                Some(i) => vec![i.into(), script.clone()],
                None if script.ends_with(".js")
                    || script.ends_with(".mjs")
                    || script.ends_with(".cjs") =>
                {
                    vec!["node".into(), script.clone()]
                }
                None => vec![script.clone()],
            };
            match obj.get("args").map(|n| (n, &n.value)) {
                Some((_, Value::Str(s))) => cmd.extend(s.split_whitespace().map(str::to_string)),
                Some((_, Value::Array(v))) => {
                    for item in v {
                        match scalar(item) {
                            Some(s) if s.trim().is_empty() => cx.err(
                                &item.span,
                                "an empty argument",
                                "empty",
                                Some("fleet's `command` takes no empty words: leave it out".into()),
                            ),
                            Some(s) => cmd.push(s),
                            None => warnings.push(format!(
                                "{at}.args: an item that is not a string, number or boolean; left out"
                            )),
                        }
                    }
                }
                Some(_) => warnings.push(format!("{at}.args: not a string or an array; left out")),
                None => {}
            }
            a.insert("command", value(Array::from_iter(&cmd)));
        } else {
            warnings.push(format!("{at}: no `script`; the image's own command runs"));
        }

        handled.push("instances");
        if let Some(n) = obj.get("instances")
            && let Some(count) = instances(cx, n, &at, &mut warnings)
            && count != 1
        {
            a.insert("instances", value(count));
        }

        handled.push("exec_mode");
        if let Some(Value::Str(m)) = obj.get("exec_mode").map(|n| &n.value)
            && m.contains("cluster")
        {
            warnings.push(format!("{at}.exec_mode: `cluster` has no equivalent: each instance is its own container with its own host port (published = \"auto\")"));
        }

        handled.push("env");
        let env = obj
            .get("env")
            .map(|e| env_vars(cx, e, &at, "env", &mut warnings))
            .unwrap_or_default();
        if let Some((_, p)) = env.iter().find(|(k, _)| k == "PORT") {
            match p.trim().parse::<u16>() {
                Ok(port) if port > 0 => {
                    a.insert(
                        "port",
                        commented(i64::from(port), "                 # from env.PORT"),
                    );
                }
                _ => warnings.push(format!(
                    "{at}.env.PORT: `{p}` is not a port (1-65535); no `port` written"
                )),
            }
        }
        if !env.is_empty() {
            a.insert("env", env_table(&env));
        }
        for (k, v) in &obj.entries {
            let Some(raw_env) = k.name.strip_prefix("env_") else {
                continue;
            };
            handled.push(&k.name);
            let vars = env_vars(cx, v, &at, &k.name, &mut warnings);
            let Some(env_key) = env_name(cx, raw_env, &k.span) else {
                continue;
            };
            let slot = match envs.iter_mut().position(|(n, _)| *n == env_key) {
                Some(p) => &mut envs[p],
                None => {
                    envs.push((env_key, Vec::new()));
                    envs.last_mut().expect("just pushed")
                }
            };
            // `env_Prod` and `env_prod` are one environment: later values win.
            match slot.1.iter_mut().find(|(app, _)| *app == name) {
                Some((_, have)) => {
                    for (vk, vv) in vars {
                        match have.iter_mut().find(|(hk, _)| *hk == vk) {
                            Some(h) => h.1 = vv,
                            None => have.push((vk, vv)),
                        }
                    }
                }
                None => slot.1.push((name.clone(), vars)),
            }
        }

        handled.push("max_memory_restart");
        if let Some(v) = obj.get("max_memory_restart") {
            let given = scalar(v).unwrap_or_default();
            match memory(&given) {
                Some((m, bytes)) if bytes >= MIN_MEMORY => {
                    let limits = InlineTable::from_iter([("memory", m.as_str())]);
                    a.insert("limits", value(limits));
                    warnings.push(format!("{at}.max_memory_restart: became a hard memory limit: Docker stops the container at {m} and the restart policy starts it again"));
                }
                Some(_) => cx.err(
                    &v.span,
                    format!("`{given}` is less than the 6MiB Docker needs for a container"),
                    "not a usable memory limit",
                    Some("write at least `6M` (pm2 sizes: `300M`, `1G`), or leave it out".into()),
                ),
                None => warnings.push(format!(
                    "{at}.max_memory_restart: `{given}` is not a size; left out"
                )),
            }
        }
        handled.extend(["autorestart", "max_restarts"]);
        let autorestart = !matches!(
            obj.get("autorestart").map(|n| &n.value),
            Some(Value::Bool(false))
        );
        let max_restarts = obj.get("max_restarts").and_then(|n| {
            match scalar(n).and_then(|s| s.trim().parse::<i64>().ok()) {
                Some(r) if (0..=u32::MAX as i64).contains(&r) => Some(r),
                Some(r) => {
                    cx.err(
                        &n.span,
                        format!("max_restarts {r} is out of range"),
                        format!("must be between 0 and {}", u32::MAX),
                        None,
                    );
                    None
                }
                None => {
                    warnings.push(format!("{at}.max_restarts: not a whole number; left out"));
                    None
                }
            }
        });
        match (autorestart, max_restarts) {
            (false, _) => {
                a.insert("restart", value("no"));
            }
            (true, Some(n)) => {
                a.insert("restart", value(format!("on-failure:{n}")));
            }
            (true, None) => {}
        }
        handled.push("kill_timeout");
        if let Some(n) = obj.get("kill_timeout") {
            match n.value {
                Value::Int(ms) if ms >= 0 => {
                    let d = Duration::from_millis(ms as u64);
                    let text = humantime::format_duration(d).to_string();
                    if humantime::parse_duration(&text).ok() == Some(d) {
                        a.insert("stop_timeout", value(text));
                    } else {
                        cx.err(
                            &n.span,
                            format!("kill_timeout {ms} ms is too long"),
                            "too long",
                            None,
                        );
                    }
                }
                _ => warnings.push(format!(
                    "{at}.kill_timeout: not a number of milliseconds; left out"
                )),
            }
        }
        handled.extend(["user", "uid"]);
        if let Some(n) = obj.get("user").or(obj.get("uid")) {
            // A numeric uid is written as a string, as `user` takes it.
            let user = match &n.value {
                Value::Int(_) | Value::Float(_) => scalar(n),
                _ => cx.text(n),
            };
            if let Some(u) = user {
                a.insert("user", value(u));
            }
        }
        for (k, _) in &obj.entries {
            if handled.contains(&k.name.as_str()) {
                continue;
            }
            let why = UNSUPPORTED
                .iter()
                .find(|(u, _)| *u == k.name)
                .map(|(_, w)| *w)
                .filter(|w| !w.is_empty())
                .unwrap_or("no fleet equivalent");
            warnings.push(format!("{at}.{}: not imported: {why}", k.name));
        }
        apps_out.insert(&name, Item::Table(a));
    }
    let Some(project) = project else {
        cx.err(
            &apps_span,
            "the ecosystem file has no app to import",
            "no apps",
            Some("each app is an object with at least `name` and `script`".into()),
        );
        return None;
    };

    // Hosts: from pm2's deploy section when it names some, else this machine.
    let mut hosts: Vec<(String, String, Option<String>)> = Vec::new();
    let mut env_hosts: Vec<(String, Vec<String>)> = Vec::new();
    let mut first_remote: Option<(Span, String)> = None;
    match top.and_then(|t| t.get("deploy")) {
        None => {}
        Some(Node {
            value: Value::Table(deploy),
            ..
        }) => {
            for (ek, d) in &deploy.entries {
                let env_key = env_name(cx, &ek.name, &ek.span);
                let Value::Table(dt) = &d.value else {
                    warnings.push(format!("deploy.{}: not an object; left out", ek.name));
                    continue;
                };
                let user = dt.get("user").and_then(|u| model::ssh_word(cx, u, "user"));
                let list: Vec<&Node> = match dt.get("host") {
                    Some(
                        h @ Node {
                            value: Value::Str(_),
                            ..
                        },
                    ) => vec![h],
                    Some(Node {
                        value: Value::Array(hs),
                        ..
                    }) => hs.iter().collect(),
                    Some(h) => {
                        cx.err(
                            &h.span,
                            "`host` is a host name or a list of them",
                            "not a host",
                            None,
                        );
                        continue;
                    }
                    None => Vec::new(),
                };
                let mut names = Vec::new();
                for hn in list {
                    let Some(h) = model::ssh_word(cx, hn, "address") else {
                        continue;
                    };
                    if h != "local" && first_remote.is_none() {
                        first_remote = Some((hn.span.clone(), h.clone()));
                    }
                    let existing = hosts
                        .iter()
                        .find(|(_, a, _)| *a == h)
                        .map(|(n, _, _)| n.clone());
                    let n = existing.unwrap_or_else(|| {
                        let n = format!("host{}", hosts.len() + 1);
                        hosts.push((n.clone(), h.clone(), user.clone()));
                        n
                    });
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
                let Some(env_key) = env_key else { continue };
                if names.is_empty() {
                    cx.err(
                        &ek.span,
                        format!("deploy.{} names no host", ek.name),
                        "no `host`",
                        Some("add `\"host\": \"10.0.0.1\"` (or a list), or leave this deploy target out".into()),
                    );
                    continue;
                }
                match env_hosts.iter_mut().find(|(n, _)| *n == env_key) {
                    Some((_, have)) => {
                        for n in names {
                            if !have.contains(&n) {
                                have.push(n);
                            }
                        }
                    }
                    None => env_hosts.push((env_key.clone(), names)),
                }
                if !envs.iter().any(|(n, _)| *n == env_key) {
                    envs.push((env_key, Vec::new()));
                }
                warnings.push(format!("deploy.{}: hosts imported; repo/ref/path/post-deploy are not (fleet ships images, not git checkouts)", ek.name));
            }
        }
        Some(_) => warnings.push("deploy: not an object; left out".into()),
    }
    if let (Some((span, h)), None) = (&first_remote, &opts.registry) {
        cx.err(
            span,
            format!("`{h}` is a remote host: it pulls the apps' images from a registry, and none is given"),
            "needs a registry",
            Some("pm2 deploys git checkouts; fleet builds images and ships them through a registry: import again with `--registry HOST:PORT`".into()),
        );
    }
    if envs.is_empty() {
        envs.push(("production".into(), Vec::new()));
    }

    // The document, section by section; toml_edit writes the tables in insertion order, each
    // header after a blank line, and quotes keys and strings as needed.
    let mut doc = DocumentMut::new();
    let mut project_t = toml_edit::Table::new();
    project_t.decor_mut().set_prefix(
        "# Imported from a pm2 ecosystem file by `fleet import pm2`. Review the hosts and\n\
         # each app's `build`, then run `fleet validate`.\n\n",
    );
    project_t.insert("name", value(&project));
    doc.insert("project", Item::Table(project_t));
    if let Some(r) = &opts.registry {
        let mut registry = toml_edit::Table::new();
        registry.insert("server", value(r));
        doc.insert("registry", Item::Table(registry));
    }
    let mut hosts_out = parent_table(false);
    if hosts.is_empty() {
        warnings.push("hosts: pm2 names none; a `local` host (this machine) was written: replace it with your servers".into());
        let mut local = toml_edit::Table::new();
        local.insert(
            "address",
            commented("local", "          # this machine; add your servers here"),
        );
        hosts_out.insert("local", Item::Table(local));
    } else {
        for (n, addr, user) in &hosts {
            let mut host = toml_edit::Table::new();
            host.insert("address", value(addr));
            if let Some(u) = user {
                host.insert("user", value(u));
            }
            hosts_out.insert(n, Item::Table(host));
        }
    }
    doc.insert("hosts", Item::Table(hosts_out));
    doc.insert("apps", Item::Table(apps_out));
    let mut envs_out = parent_table(false);
    for (env_name, overrides) in &envs {
        let mut env = toml_edit::Table::new();
        if let Some((_, hs)) = env_hosts.iter().find(|(n, _)| n == env_name) {
            env.insert("hosts", value(Array::from_iter(hs)));
        }
        // `apps.<app>.env = { ... }` lines: dotted keys, not `[environments.<env>.apps.<app>]`.
        let mut apps = parent_table(true);
        for (app, vars) in overrides {
            if !vars.is_empty() {
                let mut app_t = parent_table(true);
                app_t.insert("env", env_table(vars));
                apps.insert(app, Item::Table(app_t));
            }
        }
        if !apps.is_empty() {
            env.insert("apps", Item::Table(apps));
        }
        envs_out.insert(env_name, Item::Table(env));
    }
    doc.insert("environments", Item::Table(envs_out));
    Some(Import {
        manifest: doc.to_string(),
        warnings,
    })
}

/// pm2 `instances` to fleet's per-host count: `max`, `0` and negative numbers (per CPU in
/// pm2) become 1 with a warning; more than fleet's maximum is a problem.
fn instances(cx: &mut Cx, n: &Node, at: &str, warnings: &mut Vec<String>) -> Option<i64> {
    let Some(s) = scalar(n) else {
        warnings.push(format!("{at}.instances: not a number; set to 1"));
        return Some(1);
    };
    let s = s.trim();
    match s.parse::<i64>() {
        _ if s == "max" => {
            warnings.push(format!("{at}.instances: `max` (one per CPU) has no equivalent: fleet runs a fixed number per host; set to 1"));
            Some(1)
        }
        Ok(0) | Ok(-1) => {
            warnings.push(format!("{at}.instances: `{s}` (one per CPU) has no equivalent: fleet runs a fixed number per host; set to 1"));
            Some(1)
        }
        Ok(c) if c > MAX_INSTANCES as i64 => {
            cx.err(
                &n.span,
                format!("{c} instances per host is more than fleet's maximum of {MAX_INSTANCES}"),
                format!("at most {MAX_INSTANCES}"),
                None,
            );
            None
        }
        Ok(c) if c > 0 => Some(c),
        Ok(c) => {
            warnings.push(format!(
                "{at}.instances: `{c}` means \"CPUs minus {}\" in pm2; set to 1",
                c.unsigned_abs()
            ));
            Some(1)
        }
        Err(_) => {
            warnings.push(format!("{at}.instances: `{s}` is not a number; set to 1"));
            Some(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn imp(json: &str) -> Result<Import, Pm2Error> {
        import(json, "eco.json", &Options::default())
    }

    /// The manifest passes [`check`]: it loads and every environment resolves.
    fn validates(i: &Import) {
        if let Err(e) = check(i, "m.toml", Path::new("/p")) {
            panic!("{}\n{}", i.manifest, super::super::render_plain(&e));
        }
    }

    /// Refused, with a problem whose span is exactly `at` in `json`.
    fn refused_at(json: &str, at: &str) -> Pm2Error {
        let e = match imp(json) {
            Ok(i) => panic!("imported:\n{}", i.manifest),
            Err(e) => e,
        };
        let start = json
            .find(at)
            .unwrap_or_else(|| panic!("{at} not in {json}"));
        assert!(
            e.problems
                .iter()
                .any(|p| p.span.offset() == start && p.span.len() == at.len()),
            "no problem at {at}: {:?}",
            e.problems
        );
        let _ = super::super::render_plain(&e);
        e
    }

    #[test]
    fn memory_units() {
        let sized = |s: &str| {
            Some((
                s.to_string(),
                s.parse::<bytesize::ByteSize>().unwrap().as_u64(),
            ))
        };
        assert_eq!(memory("300M"), sized("300MiB"));
        assert_eq!(memory("1G"), sized("1GiB"));
        assert_eq!(memory("512kb"), sized("512KiB"));
        assert_eq!(memory("1024"), sized("1024B"));
        assert_eq!(memory("99999999999G"), sized("99999999999GiB"));
        assert_eq!(memory("lots"), None);
    }

    #[test]
    fn env_blocks_become_environments_and_unknown_keys_warn() {
        let r = imp(r#"{"apps":[{"name":"My App","script":"server.js","args":"--x 1","env":{"A":"1"},"env_staging":{"A":"2"},"watch":true,"instances":"max","max_memory_restart":"200M","args2":null}]}"#).unwrap();
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
        validates(&r);
    }

    #[test]
    fn bad_input_is_a_diagnostic_not_a_panic() {
        assert!(imp("{").is_err());
        refused_at("{}", "{");
        refused_at(r#"{"apps": 3}"#, "3");
        refused_at(r#"{"apps": [1, "x"]}"#, "[");
        let dup = r#"{"apps": [{"script": "a.js"}], "x": 1, "x": 2}"#;
        let e = imp(dup).unwrap_err();
        assert_eq!(e.problems[0].span.offset(), dup.rfind("\"x\"").unwrap());
    }

    /// Each output the issue found invalid is now refused at its line, or imported valid.
    #[test]
    fn what_would_not_validate_is_refused_at_its_line() {
        // deploy hosts are remote: they need a registry.
        let remote = r#"{"apps": [{"name": "a", "script": "a.js"}],
            "deploy": {"production": {"user": "node", "host": ["10.0.0.1", "10.0.0.2"]}}}"#;
        refused_at(remote, "\"10.0.0.1\"");
        let with = import(
            remote,
            "eco.json",
            &Options {
                registry: Some("10.0.0.5:5000".into()),
            },
        )
        .unwrap();
        assert!(
            with.manifest
                .contains("[registry]\nserver = \"10.0.0.5:5000\""),
            "{}",
            with.manifest
        );
        assert!(
            with.manifest.contains("hosts = [\"host1\", \"host2\"]"),
            "{}",
            with.manifest
        );
        validates(&with);
        refused_at(
            r#"{"apps": [{"name": "a", "script": "a.js", "user": ""}]}"#,
            "\"\"",
        );
        refused_at(r#"{"apps": [{"name": "a", "script": " "}]}"#, "\" \"");
        let long = "n".repeat(64);
        refused_at(
            &format!(r#"{{"apps": [{{"name": "{long}", "script": "a.js"}}]}}"#),
            &format!("\"{long}\""),
        );
        refused_at(
            r#"{"apps": [{"name": "a", "script": "a.js", "max_memory_restart": "1M"}]}"#,
            "\"1M\"",
        );
        let r = imp(r#"{"apps": [{"name": "a", "script": "a.js", "max_memory_restart": "99999999999999999999G"}]}"#).unwrap();
        assert!(!r.manifest.contains("limits"), "{}", r.manifest);
        validates(&r);
        refused_at(
            r#"{"apps": [{"name": "a", "script": "a.js", "max_restarts": 4294967296}]}"#,
            "4294967296",
        );
        refused_at(
            r#"{"apps": [{"name": "a", "script": "a.js", "env": {"A=B": "1"}}]}"#,
            "\"A=B\"",
        );
        refused_at(
            r#"{"apps": [{"name": "a", "script": "a.js", "env_prod": {"": "1"}}]}"#,
            "\"\"",
        );
        refused_at(
            r#"{"apps": [{"name": "a", "script": "a.js", "instances": 1001}]}"#,
            "1001",
        );
        // A deploy host or user is checked as the manifest checks it (so the import never
        // prints one that `fleet validate` refuses), and kept: its target still names a host.
        let e = refused_at(
            r#"{"apps": [{"name": "a", "script": "a.js", "deploy": 1}], "deploy": {"x": {"host": "-oProxyCommand=x"}}}"#,
            "\"-oProxyCommand=x\"",
        );
        assert!(
            !e.problems
                .iter()
                .any(|p| p.message.contains("names no host")),
            "{:?}",
            e.problems
        );
        refused_at(
            r#"{"apps": [{"name": "a", "script": "a.js"}], "deploy": {"x": {"user": "a b", "host": "local"}}}"#,
            "\"a b\"",
        );
        refused_at(
            r#"{"apps": [{"name": "a", "script": "a.js"}], "deploy": {"x": {"host": []}}}"#,
            "\"x\"",
        );
        // Negative instances: no overflow, one instance with a warning.
        for n in ["-9223372036854775808", "-5", "\"-3\""] {
            let r = imp(&format!(
                r#"{{"apps": [{{"name": "a", "script": "a.js", "instances": {n}}}]}}"#
            ))
            .unwrap();
            assert!(!r.manifest.contains("instances ="), "{}", r.manifest);
            assert!(r.warnings.join("\n").contains("instances"));
            validates(&r);
        }
        // Only local deploy hosts need no registry; max_restarts at u32::MAX is fine; PORT 0
        // writes no port; `env_Prod` and `env_prod` are one environment.
        let r = imp(r#"{"apps": [{"name": "a", "script": "a.js", "max_restarts": 4294967295, "env": {"PORT": "0"},
            "env_Prod": {"A": "1"}, "env_prod": {"A": "2", "B": "3"}, "kill_timeout": 1600, "user": 1000}],
            "deploy": {"prod": {"host": "local"}}}"#).unwrap();
        assert!(
            r.manifest.contains("on-failure:4294967295"),
            "{}",
            r.manifest
        );
        assert!(
            r.manifest.contains("apps.a.env = { A = \"2\", B = \"3\" }"),
            "{}",
            r.manifest
        );
        assert!(!r.manifest.contains("port ="), "{}", r.manifest);
        validates(&r);
    }

    /// Names and values that need quoting in TOML come back from the written manifest as they
    /// were in the ecosystem file.
    #[test]
    fn quoted_names_and_values_round_trip() {
        let odd_name = "a'b\"c\\ d";
        let odd_value = r#"say "hi" \ 'bye'"#;
        let json = serde_json::json!({
            "apps": [{
                "name": "my.app v2",
                "script": "run",
                "interpreter": "none",
                "cwd": r#"dir "x"\y"#,
                "args": [odd_value],
                "env": {"a.b": r#"x"y\z"#, "c d": "1", (odd_name): odd_value},
                "env_prod": {"a.b": "line\nbreak", (odd_name): "2"},
            }],
        })
        .to_string();
        let r = imp(&json).unwrap();
        let doc: toml::Table = r
            .manifest
            .parse()
            .unwrap_or_else(|e| panic!("{e}\n{}", r.manifest));
        let app = &doc["apps"]["my-app-v2"];
        assert_eq!(app["build"]["context"].as_str(), Some(r#"dir "x"\y"#));
        assert_eq!(
            app["command"],
            toml::Value::Array(vec!["run".into(), odd_value.into()])
        );
        let env = &app["env"];
        assert_eq!(env["a.b"].as_str(), Some(r#"x"y\z"#), "{}", r.manifest);
        assert_eq!(env["c d"].as_str(), Some("1"), "{}", r.manifest);
        assert_eq!(env[odd_name].as_str(), Some(odd_value), "{}", r.manifest);
        let prod = &doc["environments"]["prod"]["apps"]["my-app-v2"]["env"];
        assert_eq!(prod["a.b"].as_str(), Some("line\nbreak"), "{}", r.manifest);
        assert_eq!(prod[odd_name].as_str(), Some("2"), "{}", r.manifest);
        validates(&r);
    }
}
