//! Every key a manifest may have, written once: the decoder's unknown-key check (`Cx::table`)
//! and the JSON Schema (`fleet schema`, docs/fleet.schema.json) both read these tables, so what
//! `fleet validate` accepts and what an editor completes cannot drift apart.
//!
//! A new key is one line in its table: `Field::new(key, type, description)`, with `.or(default)`
//! when it has one and `.required()` when the decoder insists on it. The description is the
//! one-line meaning docs/manifest.md gives the key. Then `cargo run -q -- schema >
//! docs/fleet.schema.json` (the test in tests/testsuite/editors.rs says so when it was forgotten).

use serde_json::{Map, Value, json};

/// The keys of one table, and the section of docs/manifest.md that explains them.
#[derive(Debug)]
pub struct Keys {
    pub section: &'static str,
    pub fields: &'static [Field],
}

/// One key of a table.
#[derive(Debug)]
pub struct Field {
    pub key: &'static str,
    pub ty: Ty,
    pub default: Option<Lit>,
    pub required: bool,
    pub doc: &'static str,
}

/// A default value, as the manifest writes it.
#[derive(Debug, Clone, Copy)]
pub enum Lit {
    Str(&'static str),
    Int(i64),
    Bool(bool),
}

/// What a key's value may be.
#[derive(Debug)]
pub enum Ty {
    /// A string that is not empty (nor only spaces).
    Str,
    Bool,
    /// Exactly this boolean (`tcp = true`, `published = false`).
    Exactly(bool),
    /// An integer in `min..=max`.
    Int(i64, i64),
    /// A number greater than 0.
    Positive,
    /// A humantime duration: `500ms`, `5s`, `1h 30m`.
    Duration,
    /// A size: `256MiB`, `1GB`, or an integer of bytes.
    Size,
    /// An `http://` or `https://` URL.
    Url,
    /// `{ env = "VAR" }` or `{ file = "/path" }`.
    Secret,
    /// A string, number or boolean (written as text, as in an environment variable).
    Scalar,
    /// An array of strings.
    List,
    /// One of these strings.
    Word(&'static [&'static str]),
    /// A string matching this regular expression.
    Pattern(&'static str),
    /// Any of these.
    AnyOf(&'static [Ty]),
    /// A table of names chosen by the user (`[hosts.NAME]`, `env`, `config`), each value this.
    Map(&'static Ty),
    /// A table of exactly these keys.
    Table(&'static Keys),
    /// An environment's override of a table: its keys (none required) but `NOT_IN_OVERLAY`.
    Overlay(&'static Keys),
}

impl Field {
    pub const fn new(key: &'static str, ty: Ty, doc: &'static str) -> Field {
        Field {
            key,
            ty,
            default: None,
            required: false,
            doc,
        }
    }

    /// The value when the key is left out.
    pub const fn or(self, default: Lit) -> Field {
        Field {
            default: Some(default),
            ..self
        }
    }

    /// The table is refused without this key.
    pub const fn required(self) -> Field {
        Field {
            required: true,
            ..self
        }
    }
}

/// App keys an environment cannot override (docs/manifest.md, "Merge rules").
/// The engine's socket on a host, unless the manifest says otherwise.
pub const DEFAULT_DOCKER_SOCKET: &str = "/run/docker.sock";
/// The most instances of one app on one host. Far more than one host runs well, and low
/// enough that validating, resolving and planning stay fast (each instance is a container
/// spec, a Consul service and a host port to check).
pub const MAX_INSTANCES: u32 = 1000;
/// The official image fleet runs when `[consul.agent] image` is not given: a pinned version.
pub const DEFAULT_AGENT_IMAGE: &str = "hashicorp/consul:1.20.1";
/// The edge proxy's image in production: Caddy 2's official image.
pub const DEFAULT_EDGE_IMAGE: &str = "caddy:2";
/// The largest `canary` (hosts converged first) an environment may ask for.
pub const MAX_CANARY: i64 = 1000;

pub const NOT_IN_OVERLAY: &[&str] = &["build"];

const PORT: Ty = Ty::Int(1, 65535);
const COMMANDS: Ty = Ty::AnyOf(&[Ty::Str, Ty::List]);
const VALUES: Ty = Ty::Map(&Ty::Scalar);
const ENV_VALUES: Ty = Ty::Map(&Ty::AnyOf(&[Ty::Scalar, Ty::Secret]));

#[rustfmt::skip]
pub const TOP_KEYS: &Keys = &Keys { section: "The fleet manifest", fields: &[
    Field::new("project", Ty::Table(PROJECT_KEYS), "The project: its name and deploy hooks.").required(),
    Field::new("registry", Ty::Table(REGISTRY_KEYS), "Where built images are pushed and pulled from."),
    Field::new("consul", Ty::Table(CONSUL_KEYS), "The Consul agent of each host."),
    Field::new("hosts", Ty::Map(&Ty::Table(HOST_KEYS)), "The hosts, by name.").required(),
    Field::new("apps", Ty::Map(&Ty::Table(APP_KEYS)), "The apps, by name.").required(),
    Field::new("accessories", Ty::Map(&Ty::Table(ACCESSORY_KEYS)), "Services the apps use (a database, a cache), by name: one container per host, replaced only when their own spec changes."),
    Field::new("environments", Ty::Map(&Ty::Table(ENV_KEYS)), "The environments, by name: hosts and overrides of the apps."),
    Field::new("builder", Ty::Table(BUILDER_KEYS), "The host whose Docker engine builds and pushes the images."),
    Field::new("edge", Ty::Table(EDGE_KEYS), "The edge proxy (Caddy 2) that serves the apps' `public` routes on fixed ports."),
    Field::new("$schema", Ty::Str, "The JSON Schema of this file, for editors; fleet ignores it."),
]};

#[rustfmt::skip]
pub const PROJECT_KEYS: &Keys = &Keys { section: "[project]", fields: &[
    Field::new("name", Ty::Str, "The project. Prefix of container names, Consul IDs and KV keys.").required(),
    Field::new("pre_deploy", COMMANDS, "Commands run locally (`sh -c`) before a deploy changes anything; a failure stops the deploy."),
    Field::new("post_deploy", COMMANDS, "Commands run locally after a deploy."),
]};

#[rustfmt::skip]
pub const REGISTRY_KEYS: &Keys = &Keys { section: "[registry] (optional)", fields: &[
    Field::new("server", Ty::Str, "`host:port` as used in image references, e.g. `10.200.1.1:5000`.").required(),
    Field::new("username", Ty::AnyOf(&[Ty::Str, Ty::Secret]), "Registry user. `{ env = \"VAR\" }` is read when the manifest is loaded (a user name is not a secret)."),
    Field::new("password", Ty::Secret, "`{ env = \"VAR\" }` or `{ file = \"/path\" }`. A plain string is refused."),
    Field::new("insecure", Ty::Bool, "Allow plain HTTP, as Docker's `insecure-registries` does (each host's engine must list it too).").or(Lit::Bool(false)),
]};

#[rustfmt::skip]
pub const BUILDER_KEYS: &Keys = &Keys { section: "[builder] (optional)", fields: &[
    Field::new("host", Ty::Str, "One of `[hosts]`: its Docker engine, reached over SSH like any host, builds and pushes the images.").required(),
]};

#[rustfmt::skip]
pub const CONSUL_KEYS: &Keys = &Keys { section: "[consul] (optional)", fields: &[
    Field::new("address", Ty::Url, "The agent as seen *from each host*, e.g. `http://127.0.0.1:8500`. fleet reaches it over SSH.").required(),
    Field::new("token", Ty::Secret, "ACL token."),
    Field::new("datacenter", Ty::Str, "The Consul datacenter."),
    Field::new("container_address", Ty::Url, "The agent as seen *from the host's containers*, given to them as `CONSUL_HTTP_ADDR`."),
    Field::new("agent", Ty::Table(CONSUL_AGENT_KEYS), "The Consul agent `fleet setup` runs on every host, as a container."),
]};

#[rustfmt::skip]
pub const CONSUL_AGENT_KEYS: &Keys = &Keys { section: "[consul.agent] (optional)", fields: &[
    Field::new("image", Ty::Str, "The agent's image; `fleet setup` runs it with `consul agent` flags.").or(Lit::Str(DEFAULT_AGENT_IMAGE)),
    Field::new("servers", Ty::List, "The hosts that run Consul servers (`-server -bootstrap-expect` their count); every agent joins them.").required(),
    Field::new("datacenter", Ty::Str, "The agents' datacenter (default: `[consul] datacenter`, else `dc1`)."),
    Field::new("encrypt", Ty::Secret, "The gossip encryption key (`-encrypt`), a secret reference."),
    Field::new("token", Ty::Secret, "The agent's ACL token (`acl.tokens.agent`), a secret reference."),
    Field::new("args", Ty::List, "More `consul agent` flags, e.g. `[\"-ui\"]`."),
]};

#[rustfmt::skip]
pub const HOST_KEYS: &Keys = &Keys { section: "[hosts.NAME]", fields: &[
    Field::new("address", Ty::Str, "IP, DNS name or ssh_config alias; `local` is this machine (no SSH).").required(),
    Field::new("user", Ty::Str, "SSH user (default: ssh's)."),
    Field::new("port", PORT, "SSH port (default: ssh's)."),
    Field::new("identity_file", Ty::Str, "SSH private key (default: ssh's)."),
    Field::new("docker_socket", Ty::Str, "The engine's socket on the host.").or(Lit::Str(DEFAULT_DOCKER_SOCKET)),
    Field::new("roles", Ty::List, "What the host is for; apps choose hosts by role."),
]};

#[rustfmt::skip]
pub const APP_KEYS: &Keys = &Keys { section: "[apps.NAME]", fields: &[
    Field::new("build", Ty::AnyOf(&[Ty::Str, Ty::Table(BUILD_KEYS)]), "Build the image here: `{ context, dockerfile, args, target }`. A string is the context."),
    Field::new("image", Ty::Str, "A prebuilt image, `name:tag` (no tag means `latest`). Its tag is the version. Exactly one of `build` / `image`."),
    Field::new("roles", Ty::List, "Run on every host (of the environment) that has one of these roles (default: every host)."),
    Field::new("hosts", Ty::List, "Run on these hosts (by name). Not together with `roles`."),
    Field::new("instances", Ty::Int(0, MAX_INSTANCES as i64), "Containers **per host**, like pm2's `instances`. `0` leaves the app out.").or(Lit::Int(1)),
    Field::new("port", PORT, "The port the app listens on inside the container."),
    Field::new("published", Ty::AnyOf(&[Ty::Word(&["auto"]), PORT, Ty::Exactly(false)]), "Host port: Docker-picked (`\"auto\"`), fixed (a port), or none (`false`).").or(Lit::Str("auto")),
    Field::new("command", COMMANDS, "Replaces the image's `CMD` (a string is split on spaces)."),
    Field::new("args", Ty::List, "Appended to `command` (or, alone, the `CMD`)."),
    Field::new("env", ENV_VALUES, "Environment variables: strings (numbers and booleans are written as text) or secret references."),
    Field::new("health", Ty::Table(HEALTH_KEYS), "The health check of each instance. Needs `port`."),
    Field::new("restart", Ty::AnyOf(&[Ty::Word(&["no", "always", "unless-stopped", "on-failure"]), Ty::Pattern("^on-failure:[0-9]+$")]), "`no`, `always`, `unless-stopped`, `on-failure`, `on-failure:N`.").or(Lit::Str("unless-stopped")),
    Field::new("limits", Ty::Table(LIMIT_KEYS), "Memory and CPU limits of each container."),
    Field::new("stop_timeout", Ty::Duration, "Time between SIGTERM and SIGKILL.").or(Lit::Str("10s")),
    Field::new("service", Ty::AnyOf(&[Ty::Bool, Ty::Table(SERVICE_KEYS)]), "The Consul service of each instance: `{ name, tags, meta }`, or `true`. Needs `port`."),
    Field::new("config", VALUES, "Consul KV: key `db/pool` is written at `<project>/<env>/<app>/db/pool`."),
    Field::new("config_order", Ty::Word(&["first", "last"]), "When a deploy writes the app's config: before its containers are replaced, or after every host passed.").or(Lit::Str("first")),
    Field::new("volumes", Ty::List, "`name:/path` (named volume) or `/host/path:/path[:ro]` (bind)."),
    Field::new("labels", VALUES, "Docker labels (`fleet.*` reserved)."),
    Field::new("network", Ty::Str, "Network to attach to (default: Docker's)."),
    Field::new("user", Ty::Str, "`user` or `uid:gid` (default: the image's)."),
    Field::new("workdir", Ty::Str, "Working directory (default: the image's)."),
    Field::new("batch", Ty::Int(1, u32::MAX as i64), "How many instances a rollout replaces at once.").or(Lit::Int(1)),
    Field::new("dns", Ty::Word(&["consul"]), "The containers resolve names through their host's Consul agent. Needs `[consul]`."),
    Field::new("pm2", Ty::Bool, "Whether the containers run pm2 (default: detected from the main process, `pm2-runtime`)."),
    Field::new("public", Ty::Table(PUBLIC_KEYS), "A route from the edge proxy to the app: `{ host, path }`. Needs `service`, `health` and a published port."),
]};

#[rustfmt::skip]
pub const ACCESSORY_KEYS: &Keys = &Keys { section: "[accessories.NAME]", fields: &[
    Field::new("image", Ty::Str, "The image, `name:tag` (no tag means `latest`): accessories are never built.").required(),
    Field::new("hosts", Ty::List, "Run on these hosts (by name). Exactly one of `hosts` / `roles`."),
    Field::new("roles", Ty::List, "Run on every host (of the environment) that has one of these roles."),
    Field::new("port", PORT, "The port it listens on inside the container."),
    Field::new("published", Ty::AnyOf(&[Ty::Word(&["auto"]), PORT, Ty::Exactly(false)]), "Host port: the same as `port` unless given; `\"auto\"` or `false` as for apps."),
    Field::new("command", COMMANDS, "Replaces the image's `CMD` (a string is split on spaces)."),
    Field::new("args", Ty::List, "Appended to `command` (or, alone, the `CMD`)."),
    Field::new("env", ENV_VALUES, "Environment variables: strings or secret references (`{ env }`, `{ file }`)."),
    Field::new("health", Ty::Table(HEALTH_KEYS), "Its health check. Needs `port`."),
    Field::new("restart", Ty::AnyOf(&[Ty::Word(&["no", "always", "unless-stopped", "on-failure"]), Ty::Pattern("^on-failure:[0-9]+$")]), "`no`, `always`, `unless-stopped`, `on-failure`, `on-failure:N`.").or(Lit::Str("unless-stopped")),
    Field::new("limits", Ty::Table(LIMIT_KEYS), "Memory and CPU limits of its container."),
    Field::new("stop_timeout", Ty::Duration, "Time between SIGTERM and SIGKILL.").or(Lit::Str("10s")),
    Field::new("service", Ty::AnyOf(&[Ty::Bool, Ty::Table(SERVICE_KEYS)]), "Its Consul service, `{ name, tags, meta }` or `true`: apps find it as `<name>.service.consul`. Needs `port`."),
    Field::new("volumes", Ty::List, "`name:/path` (a named volume, kept by `fleet destroy` unless `--volumes`) or `/host/path:/path[:ro]`."),
    Field::new("labels", VALUES, "Docker labels (`fleet.*` reserved)."),
    Field::new("network", Ty::Str, "Network to attach to (default: Docker's)."),
    Field::new("user", Ty::Str, "`user` or `uid:gid` (default: the image's)."),
    Field::new("workdir", Ty::Str, "Working directory (default: the image's)."),
    Field::new("dns", Ty::Word(&["consul"]), "The container resolves names through its host's Consul agent. Needs `[consul]`."),
]};

#[rustfmt::skip]
pub const PUBLIC_KEYS: &Keys = &Keys { section: "Public routes", fields: &[
    Field::new("host", Ty::AnyOf(&[Ty::Str, Ty::List]), "The host name(s) the route answers (the request's `Host`).").required(),
    Field::new("path", Ty::Pattern("^/"), "A path prefix: `/api` routes `/api` and `/api/...`.").or(Lit::Str("/")),
    Field::new("timeout", Ty::Duration, "How long the edge waits for the app's response headers; a GET or HEAD with none by then is tried on another instance.").or(Lit::Str("30s")),
]};

#[rustfmt::skip]
pub const EDGE_KEYS: &Keys = &Keys { section: "[edge] (optional)", fields: &[
    Field::new("roles", Ty::List, "The hosts that run the edge proxy (default: every host of the environment that runs a public app)."),
    Field::new("image", Ty::Str, "The proxy's image: Caddy 2 (its binary at /usr/bin/caddy).").or(Lit::Str(DEFAULT_EDGE_IMAGE)),
    Field::new("http", PORT, "The HTTP port of the edge on each host.").or(Lit::Int(80)),
    Field::new("https", PORT, "The HTTPS port of the edge on each host.").or(Lit::Int(443)),
    Field::new("tls", Ty::AnyOf(&[Ty::Word(&["auto", "acme", "internal", "off"]), Ty::Table(EDGE_TLS_KEYS)]), "Certificates: `auto` (ACME, the internal CA for localhost and IPs), `acme`, `internal` (the proxy's own CA), `off` (HTTP only), or `{ cert, key }`.").or(Lit::Str("auto")),
    Field::new("email", Ty::Str, "The ACME account's e-mail (Let's Encrypt)."),
]};

#[rustfmt::skip]
pub const EDGE_TLS_KEYS: &Keys = &Keys { section: "[edge] (optional)", fields: &[
    Field::new("cert", Ty::Secret, "The certificate chain (PEM), `{ file = \"..\" }`.").required(),
    Field::new("key", Ty::Secret, "Its private key (PEM), `{ file = \"..\" }`.").required(),
]};

#[rustfmt::skip]
pub const BUILD_KEYS: &Keys = &Keys { section: "[apps.NAME]", fields: &[
    Field::new("context", Ty::Str, "Directory, relative to the manifest.").or(Lit::Str(".")),
    Field::new("dockerfile", Ty::Str, "Relative to the context.").or(Lit::Str("Dockerfile")),
    Field::new("args", VALUES, "Build arguments."),
    Field::new("target", Ty::Str, "Multi-stage target."),
]};

#[rustfmt::skip]
pub const HEALTH_KEYS: &Keys = &Keys { section: "Health", fields: &[
    Field::new("http", Ty::Pattern("^/"), "GET this path on the instance's published port; 2xx is healthy."),
    Field::new("tcp", Ty::Exactly(true), "Connect to the published port. Exactly one of `http` / `tcp`."),
    Field::new("interval", Ty::Duration, "How often the check runs.").or(Lit::Str("5s")),
    Field::new("timeout", Ty::Duration, "How long one check may take.").or(Lit::Str("2s")),
    Field::new("deregister_after", Ty::Duration, "Consul's `DeregisterCriticalServiceAfter`; at least `1m` (Consul's minimum)."),
    Field::new("deadline", Ty::Duration, "How long a new instance may take to become healthy before the deploy fails.").or(Lit::Str("60s")),
    Field::new("min_healthy", Ty::Duration, "For a pm2 container: how long every worker must stay online, without a restart, before it counts as healthy.").or(Lit::Str("3s")),
]};

#[rustfmt::skip]
pub const LIMIT_KEYS: &Keys = &Keys { section: "[apps.NAME]", fields: &[
    Field::new("memory", Ty::Size, "`256MiB`, `1GiB`, `512MB`, or bytes. At least 6MiB (Docker's minimum)."),
    Field::new("cpus", Ty::Positive, "CPU cores, e.g. `0.5`."),
]};

#[rustfmt::skip]
pub const SERVICE_KEYS: &Keys = &Keys { section: "[apps.NAME]", fields: &[
    Field::new("name", Ty::Str, "The Consul service name (default: the app name)."),
    Field::new("tags", Ty::List, "Consul tags."),
    Field::new("meta", VALUES, "Consul meta: letters, digits, `-`, `_` (`fleet-*` reserved)."),
]};

#[rustfmt::skip]
pub const SECRET_KEYS: &Keys = &Keys { section: "Secrets", fields: &[
    Field::new("env", Ty::Str, "Read from this environment variable of the machine running fleet."),
    Field::new("file", Ty::Str, "Read from this file (relative to the manifest's directory); one trailing newline is dropped."),
]};

#[rustfmt::skip]
pub const ENV_KEYS: &Keys = &Keys { section: "[environments.NAME]", fields: &[
    Field::new("hosts", Ty::List, "The hosts of this environment (default: every host)."),
    Field::new("env", ENV_VALUES, "Variables for every app of the environment."),
    Field::new("apps", Ty::Map(&Ty::Overlay(APP_KEYS)), "Overrides of any app key except `build`, by app name."),
    Field::new("consul", Ty::Overlay(CONSUL_KEYS), "Overrides of `[consul]`, merged key by key."),
    Field::new("edge", Ty::Overlay(EDGE_KEYS), "Overrides of `[edge]`, merged key by key."),
    Field::new("pre_deploy", COMMANDS, "Replaces the project's `pre_deploy` for this environment (`[]` turns it off)."),
    Field::new("post_deploy", COMMANDS, "Replaces the project's `post_deploy` for this environment (`[]` turns it off)."),
    Field::new("canary", Ty::Int(0, MAX_CANARY), "Hosts a deploy converges first; the others start only after all of them pass.").or(Lit::Int(0)),
]};

impl Keys {
    /// The key names, for "takes: ..." and "did you mean" hints.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.fields.iter().map(|f| f.key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.fields.iter().any(|f| f.key == key)
    }
}

/// The JSON Schema (draft 2020-12) of a manifest, TOML or JSON: what `fleet schema` prints.
pub fn schema() -> Value {
    let mut root = table(TOP_KEYS, false);
    let top = root.as_object_mut().expect("a table is an object");
    top.insert(
        "$schema".into(),
        "https://json-schema.org/draft/2020-12/schema".into(),
    );
    top.insert("title".into(), "fleet manifest".into());
    top.insert(
        "description".into(),
        "fleet.toml or fleet.json. Made by `fleet schema` from the tables `fleet validate` checks keys with; the reference is docs/manifest.md."
            .into(),
    );
    root
}

fn table(keys: &Keys, overlay: bool) -> Value {
    let properties: Map<String, Value> = keys
        .fields
        .iter()
        .filter(|f| !(overlay && NOT_IN_OVERLAY.contains(&f.key)))
        .map(|f| (f.key.to_string(), field(f)))
        .collect();
    let mut t = json!({
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
    });
    let required: Vec<&str> = keys
        .fields
        .iter()
        .filter(|f| f.required && !overlay)
        .map(|f| f.key)
        .collect();
    if !required.is_empty() {
        t["required"] = json!(required);
    }
    t
}

fn field(f: &Field) -> Value {
    let mut v = ty(&f.ty);
    v["description"] = f.doc.into();
    if let Some(d) = f.default {
        v["default"] = match d {
            Lit::Str(s) => s.into(),
            Lit::Int(n) => n.into(),
            Lit::Bool(b) => b.into(),
        };
    }
    v
}

fn ty(t: &Ty) -> Value {
    match t {
        Ty::Str => json!({ "type": "string", "pattern": "\\S" }),
        Ty::Bool => json!({ "type": "boolean" }),
        Ty::Exactly(b) => json!({ "const": b }),
        Ty::Int(min, max) => json!({ "type": "integer", "minimum": min, "maximum": max }),
        Ty::Positive => json!({ "type": "number", "exclusiveMinimum": 0 }),
        Ty::Duration => json!({
            "type": "string",
            "pattern": "^\\s*([0-9]+\\s*[a-zA-Zµ]+\\s*)+$",
            "examples": ["500ms", "5s", "2m", "1h 30m"],
        }),
        Ty::Size => json!({
            "anyOf": [
                { "type": "integer", "minimum": 1 },
                { "type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*[a-zA-Z]*\\s*$" },
            ],
            "examples": ["256MiB", "1GiB", "512MB"],
        }),
        Ty::Url => json!({ "type": "string", "pattern": "^https?://" }),
        Ty::Secret => {
            let mut s = table(SECRET_KEYS, false);
            s["minProperties"] = 1.into();
            s["maxProperties"] = 1.into();
            s
        }
        Ty::Scalar => json!({ "type": ["string", "number", "boolean"] }),
        Ty::List => json!({ "type": "array", "items": ty(&Ty::Str) }),
        Ty::Word(words) => json!({ "enum": words }),
        Ty::Pattern(p) => json!({ "type": "string", "pattern": p }),
        Ty::AnyOf(tys) => json!({ "anyOf": tys.iter().map(ty).collect::<Vec<_>>() }),
        Ty::Map(value) => json!({ "type": "object", "additionalProperties": ty(value) }),
        Ty::Table(fields) => table(fields, false),
        Ty::Overlay(fields) => table(fields, true),
    }
}

/// `schema()` as `fleet schema` prints it and docs/fleet.schema.json holds it (without the
/// final newline).
pub fn schema_text() -> String {
    serde_json::to_string_pretty(&schema()).expect("a JSON value serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::model;

    fn tables() -> Vec<(&'static str, &'static Keys)> {
        vec![
            ("top", TOP_KEYS),
            ("project", PROJECT_KEYS),
            ("registry", REGISTRY_KEYS),
            ("builder", BUILDER_KEYS),
            ("consul", CONSUL_KEYS),
            ("consul.agent", CONSUL_AGENT_KEYS),
            ("host", HOST_KEYS),
            ("app", APP_KEYS),
            ("accessory", ACCESSORY_KEYS),
            ("build", BUILD_KEYS),
            ("health", HEALTH_KEYS),
            ("limits", LIMIT_KEYS),
            ("service", SERVICE_KEYS),
            ("secret", SECRET_KEYS),
            ("environment", ENV_KEYS),
            ("public", PUBLIC_KEYS),
            ("edge", EDGE_KEYS),
            ("edge tls", EDGE_TLS_KEYS),
        ]
    }

    /// docs/manifest.md names every key (the tables and the reference are kept together) and has
    /// the section each table points at; each description is one sentence on one line.
    #[test]
    fn the_reference_names_every_key() {
        let doc = include_str!("../../docs/manifest.md");
        for (table, keys) in tables() {
            assert!(
                crate::manifest::diag::has_heading(doc, keys.section),
                "docs/manifest.md has no heading \"{}\" ({table})",
                keys.section
            );
            for f in keys.fields {
                let k = f.key;
                assert!(
                    [
                        format!("`{k}`"),
                        format!(".{k}`"),
                        format!("`\"{k}\"`"),
                        format!("`[{k}]"),
                        format!("`[{k}."),
                    ]
                    .iter()
                    .any(|written| doc.contains(written.as_str())),
                    "docs/manifest.md does not name `{k}` ({table})"
                );
                assert!(
                    !f.doc.contains('\n') && f.doc.ends_with('.'),
                    "{k}: {}",
                    f.doc
                );
            }
        }
    }

    /// The defaults the schema shows are the ones the decoder applies.
    #[test]
    fn defaults_are_the_decoders() {
        let default = |keys: &Keys, key: &str| match keys.fields.iter().find(|f| f.key == key) {
            Some(Field {
                default: Some(Lit::Str(s)),
                ..
            }) => humantime::parse_duration(s).unwrap(),
            _ => panic!("{key} has no duration default"),
        };
        assert_eq!(
            default(APP_KEYS, "stop_timeout"),
            model::DEFAULT_STOP_TIMEOUT
        );
        assert_eq!(
            default(HEALTH_KEYS, "interval"),
            model::DEFAULT_HEALTH_INTERVAL
        );
        assert_eq!(
            default(HEALTH_KEYS, "timeout"),
            model::DEFAULT_HEALTH_TIMEOUT
        );
        assert_eq!(
            default(HEALTH_KEYS, "deadline"),
            model::DEFAULT_HEALTH_DEADLINE
        );
        // Integers and words: a manifest that leaves the key out resolves like one that writes
        // the default.
        let base = "[project]\nname = \"p\"\n[hosts.h1]\naddress = \"local\"\n[apps.web]\nimage = \"nginx:1.27\"\nport = 80\n[environments.production]\n";
        let show = |src: &str| {
            let m = crate::manifest::load_str(
                src,
                crate::manifest::Format::Toml,
                "m.toml",
                std::path::Path::new("/p"),
            )
            .unwrap();
            format!(
                "{:?}",
                m.resolve("production", &m.placeholder_versions()).unwrap()
            )
        };
        for f in APP_KEYS.fields {
            let written = match f.default {
                Some(Lit::Int(n)) => n.to_string(),
                Some(Lit::Str(s)) => format!("{s:?}"),
                Some(Lit::Bool(b)) => b.to_string(),
                None => continue,
            };
            let with = base.replace(
                "port = 80\n",
                &format!("port = 80\n{} = {written}\n", f.key),
            );
            assert_eq!(show(base), show(&with), "{}", f.key);
        }
    }
}
