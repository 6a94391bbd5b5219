//! `[apps.NAME]` and `[accessories.NAME]`: image or build, env, ports, health, service, limits, public route.

use super::*;

/// A plain string or a secret reference.
pub(super) fn secret_or_text(
    cx: &mut Cx,
    node: &Node,
    secrets: &mut Vec<(SecretRef, Span)>,
    dir: &Path,
) -> Option<EnvValue> {
    match &node.value {
        Value::Table(_) => {
            let r = secret_ref(cx, node, dir)?;
            secrets.push((r.clone(), node.span.clone()));
            Some(EnvValue::Secret(r))
        }
        _ => cx.scalar_text(node).map(EnvValue::Plain),
    }
}

pub(super) fn decode_app(cx: &mut Cx, k: &Key, v: &Node, dir: &Path, kind: Kind) -> Option<AppDef> {
    check_name(cx, kind.word(), &k.name, &k.span, &[]);
    let what = format!("{} `{}`", kind.word(), k.name);
    let keys = match kind {
        Kind::App => APP_KEYS,
        Kind::Accessory => ACCESSORY_KEYS,
    };
    let t = cx.table(v, &what, keys)?;
    let mut secrets = Vec::new();

    let build = get(t, "build").and_then(|b| decode_build(cx, b, dir));
    let build_span = get(t, "build").map(|b| match &b.value {
        Value::Table(bt) => get(bt, "context").map_or(b.span.clone(), |c| c.span.clone()),
        _ => b.span.clone(),
    });
    let image = get(t, "image").and_then(|i| {
        let s = cx.text(i)?;
        Some(parse_image(&s))
    });
    let source = match (get(t, "build"), get(t, "image")) {
        (None, None) if kind == Kind::Accessory => {
            cx.err(&k.span, format!("accessory `{}` has no `image`", k.name), "no image", Some("add `image = \"name:tag\"`: accessories run a prebuilt image (`redis:7`, `mariadb:11`)".into()));
            None
        }
        (None, None) => {
            cx.err(&k.span, format!("app `{}` has neither `build` nor `image`", k.name), "no image source", Some("add `build = { context = \"app\" }` to build it here, or `image = \"name:tag\"` for a prebuilt image".into()));
            None
        }
        (Some(_), Some(i)) => {
            cx.err(
                &i.span,
                format!("app `{}` has both `build` and `image`", k.name),
                "remove one",
                Some(
                    "use `build` for an image fleet builds and pushes, `image` for a prebuilt one"
                        .into(),
                ),
            );
            None
        }
        (Some(_), None) => build.map(Source::Build),
        (None, Some(_)) => image.map(|(reference, tag)| Source::Image { reference, tag }),
    };

    let roles = get(t, "roles")
        .and_then(|r| cx.str_list(r))
        .unwrap_or_default();
    let hosts = get(t, "hosts")
        .and_then(|r| cx.str_list(r))
        .unwrap_or_default();
    if let (Some(_), Some(h)) = (get(t, "roles"), get(t, "hosts")) {
        cx.err(&h.span, format!("app `{}` has both `roles` and `hosts`", k.name), "remove one", Some("place an app by `roles` (every host with one of them) or by `hosts` (names), not both".into()));
    }
    let instances = get(t, "instances")
        // Bounded before anything iterates over the instances.
        .and_then(|n| cx.int(n, 0, MAX_INSTANCES.into()))
        .map_or(1, |n| n as u32);
    let port = get(t, "port").and_then(|p| cx.u16(p, 1));
    let published = match get(t, "published") {
        // An accessory is found at its own port (`db.service.consul:3306`).
        None if kind == Kind::Accessory => port.map_or(Published::Auto, Published::Fixed),
        None => Published::Auto,
        Some(n) => match &n.value {
            Value::Str(s) if s == "auto" => Published::Auto,
            Value::Bool(false) => Published::No,
            Value::Int(_) => cx
                .u16(n, 1)
                .map(Published::Fixed)
                .unwrap_or(Published::Auto),
            _ => {
                cx.err(&n.span, "`published` is \"auto\", a port number, or false", "invalid `published`", Some("\"auto\": Docker picks a free host port per container; 8080: that host port (one instance per host); false: not published".into()));
                Published::Auto
            }
        },
    };
    if let (None, Some(p)) = (get(t, "port"), get(t, "published")) {
        cx.err(
            &p.span,
            "`published` needs `port`",
            "no container port",
            Some("add `port = 8080`, the port the app listens on inside the container".into()),
        );
    }
    let port_span = get(t, "published")
        .or(get(t, "port"))
        .map_or(k.span.clone(), |n| n.span.clone());

    let mut command = get(t, "command").and_then(|c| match &c.value {
        Value::Str(s) => Some(s.split_whitespace().map(str::to_string).collect::<Vec<_>>()),
        _ => cx
            .str_list(c)
            .map(|l| l.into_iter().map(|(s, _)| s).collect()),
    });
    if let Some(a) = get(t, "args").and_then(|a| cx.str_list(a)) {
        command
            .get_or_insert_with(Vec::new)
            .extend(a.into_iter().map(|(s, _)| s));
    }

    let mut env = IndexMap::new();
    if let Some(e) = get(t, "env").and_then(|e| cx.map(e, "env")) {
        for (ek, ev) in &e.entries {
            if !cx.env_var_name(ek) {
                continue;
            }
            if let Some(val) = secret_or_text(cx, ev, &mut secrets, dir) {
                env.insert(ek.name.clone(), val);
            }
        }
    }

    let mut health = None;
    let mut health_deadline = DEFAULT_HEALTH_DEADLINE;
    let mut min_healthy = DEFAULT_MIN_HEALTHY;
    if let Some(h) = get(t, "health") {
        health = decode_health(cx, h, &mut health_deadline, &mut min_healthy);
        if port.is_none() && health.is_some() {
            cx.err(
                &h.span,
                "a health check needs `port`",
                "no port to check",
                Some("add `port = ...`, the port the app listens on".into()),
            );
        }
    }

    let restart = match get(t, "restart") {
        None => RestartPolicy::UnlessStopped,
        Some(r) => cx
            .str(r)
            .and_then(|s| parse_restart(&s))
            .unwrap_or_else(|| {
                if matches!(r.value, Value::Str(_)) {
                    cx.err(
                        &r.span,
                        "invalid restart policy",
                        "unknown policy",
                        Some(
                            "use one of: no, always, unless-stopped, on-failure, on-failure:N"
                                .into(),
                        ),
                    );
                }
                RestartPolicy::UnlessStopped
            }),
    };

    let (mut memory, mut cpus) = (None, None);
    if let Some(l) = get(t, "limits").and_then(|l| cx.table(l, "limits", LIMIT_KEYS)) {
        memory = get(l, "memory").and_then(|m| cx.size(m));
        if let Some(m) = (memory.is_some_and(|m| m < MIN_MEMORY))
            .then(|| get(l, "memory"))
            .flatten()
        {
            cx.err(
                &m.span,
                "Docker needs at least 6MiB of memory for a container",
                "too small",
                Some("memory sizes take a unit: `256MiB`, `1GiB`".into()),
            );
        }
        cpus = get(l, "cpus").and_then(|c| cx.positive(c));
    }
    let stop_timeout = get(t, "stop_timeout")
        .and_then(|d| cx.duration(d))
        .unwrap_or(DEFAULT_STOP_TIMEOUT);

    let service = get(t, "service").and_then(|s| match &s.value {
        Value::Bool(true) => Some(ServiceDef { name: k.name.clone(), tags: vec![], meta: BTreeMap::new() }),
        Value::Bool(false) => None,
        _ => {
            let st = cx.table(s, "service", SERVICE_KEYS)?;
            let name = get(st, "name").and_then(|n| {
                let s = cx.text(n)?;
                check_name(cx, "service", &s, &n.span, &[]).then_some(s)
            });
            let tags = get(st, "tags").and_then(|t| cx.str_list(t)).unwrap_or_default();
            let mut meta = BTreeMap::new();
            if let Some(m) = get(st, "meta") {
                for (mk, mv, mspan) in cx.string_map(m, "service meta") {
                    if mk.is_empty() || mk.len() > 64 || !mk.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                        cx.err(&mspan, format!("`{mk}` is not a valid Consul meta key"), "invalid meta key", Some("Consul meta keys take letters, digits, `-` and `_`, at most 64 characters".into()));
                    } else if mk.starts_with("fleet-") {
                        cx.err(&mspan, format!("`{mk}` is reserved"), "reserved by fleet", Some("fleet sets the `fleet-*` meta keys itself".into()));
                    } else {
                        meta.insert(mk, mv);
                    }
                }
            }
            Some(ServiceDef { name: name.unwrap_or_else(|| k.name.clone()), tags: tags.into_iter().map(|(s, _)| s).collect(), meta })
        }
    });
    if service.is_some()
        && port.is_none()
        && let Some(s) = get(t, "service")
    {
        cx.err(
            &s.span,
            "a Consul service needs `port`",
            "no port to register",
            Some("add `port = ...`, the port the app listens on".into()),
        );
    }

    let mut config = BTreeMap::new();
    if let Some(c) = get(t, "config") {
        for (ck, cv, cspan) in cx.string_map(c, "config") {
            if ck.is_empty()
                || ck.starts_with('/')
                || ck.split('/').any(|p| p.is_empty() || p == "." || p == "..")
            {
                cx.err(&cspan, format!("`{ck}` is not a valid config key"), "invalid key", Some("keys are relative KV paths such as `db/pool`: no leading `/`, no empty, `.` or `..` parts".into()));
            } else {
                config.insert(ck, cv);
            }
        }
        if config.len() > crate::consul::TXN_MAX_OPS {
            cx.err(
                &c.span,
                format!(
                    "{} config keys; at most {}",
                    config.len(),
                    crate::consul::TXN_MAX_OPS
                ),
                "too many keys",
                Some(format!(
                    "an app's config is written in one Consul transaction, which holds at most {} \
                     operations: move some of it into another app, or into fewer keys",
                    crate::consul::TXN_MAX_OPS
                )),
            );
        }
    }
    let config_order = match get(t, "config_order") {
        None => ConfigOrder::default(),
        Some(n) => match cx.str(n).as_deref() {
            Some("first") => ConfigOrder::First,
            Some("last") => ConfigOrder::Last,
            Some(other) => {
                cx.err(&n.span, format!("`config_order = \"{other}\"` is not known"), "unknown order", Some("`\"first\"` (the default: config, then containers) or `\"last\"` (containers, then config)".into()));
                ConfigOrder::default()
            }
            None => ConfigOrder::default(),
        },
    };

    let volumes = get(t, "volumes")
        .and_then(|v| cx.str_list(v))
        .unwrap_or_default();
    for (vol, span) in &volumes {
        let parts: Vec<&str> = vol.split(':').collect();
        let ok = (2..=3).contains(&parts.len())
            && !parts[0].is_empty()
            && parts[1].starts_with('/')
            && parts.get(2).is_none_or(|m| matches!(*m, "ro" | "rw"));
        if !ok {
            cx.err(span, format!("`{vol}` is not a volume"), "invalid volume", Some("write `name:/path/in/container` (named) or `/host/path:/path/in/container[:ro]` (bind)".into()));
        }
    }
    let mut labels = BTreeMap::new();
    if let Some(l) = get(t, "labels") {
        for (lk, lv, lspan) in cx.string_map(l, "labels") {
            if lk.starts_with("fleet.") {
                cx.err(
                    &lspan,
                    format!("`{lk}` is reserved"),
                    "reserved by fleet",
                    Some("fleet sets the `fleet.*` labels itself".into()),
                );
            } else {
                labels.insert(lk, lv);
            }
        }
    }
    let batch = get(t, "batch").and_then(|b| cx.u32(b, 1)).unwrap_or(1);
    let dns_consul = get(t, "dns").and_then(|d| {
        let s = cx.str(d)?;
        if s != "consul" {
            cx.err(&d.span, format!("`dns = \"{s}\"` is not known"), "unknown DNS", Some("`dns = \"consul\"`: the containers resolve `<service>.service.consul` through their host's Consul agent".into()));
            return None;
        }
        Some(d.span.clone())
    });

    if kind == Kind::Accessory && get(t, "hosts").is_none() && get(t, "roles").is_none() {
        cx.err(&k.span, format!("accessory `{}` has neither `hosts` nor `roles`", k.name), "runs nowhere", Some("say where it runs: `hosts = [\"db1\"]`, or `roles = [\"db\"]` (one container on each such host)".into()));
    }

    Some(AppDef {
        name: k.name.clone(),
        span: k.span.clone(),
        kind,
        source,
        build_span,
        roles,
        hosts,
        instances,
        port,
        published,
        port_span,
        command,
        env,
        secrets,
        health,
        health_deadline,
        min_healthy,
        pm2: get(t, "pm2").and_then(|p| cx.bool(p)),
        restart,
        memory,
        cpus,
        stop_timeout,
        service,
        config,
        config_order,
        volumes: volumes.into_iter().map(|(s, _)| s).collect(),
        labels,
        network: get(t, "network").and_then(|n| cx.text(n)),
        user: get(t, "user").and_then(|n| cx.text(n)),
        workdir: get(t, "workdir").and_then(|n| cx.text(n)),
        batch,
        dns_consul,
        public: get(t, "public").and_then(|p| decode_public(cx, p)),
    })
}

pub(super) fn decode_public(cx: &mut Cx, p: &Node) -> Option<PublicDef> {
    let t = cx.table(p, "public", PUBLIC_KEYS)?;
    let Some(h) = get(t, "host") else {
        cx.err(
            &p.span,
            "a public route needs `host`",
            "no host name",
            Some("add `host = \"app.example.com\"` (or a list of names)".into()),
        );
        return None;
    };
    let hosts: Vec<String> = match &h.value {
        Value::Array(_) => cx.str_list(h)?.into_iter().map(|(s, _)| s).collect(),
        _ => vec![cx.text(h)?],
    };
    for name in &hosts {
        let ok = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*'));
        if !ok {
            cx.err(
                &h.span,
                format!("`{name}` is not a host name"),
                "not a host name",
                Some("write a DNS name, e.g. `app.example.com` (no scheme, port or path)".into()),
            );
        }
    }
    let path = match get(t, "path") {
        Some(n) => {
            let s = cx.text(n)?;
            if !s.starts_with('/') || s.contains('*') || s.contains('?') {
                cx.err(
                    &n.span,
                    format!("`{s}` is not a path prefix"),
                    "not a path",
                    Some("write a prefix that starts with `/`, e.g. `/api`".into()),
                );
            }
            let trimmed = s.trim_end_matches('/');
            if trimmed.is_empty() {
                "/".to_string()
            } else {
                trimmed.to_string()
            }
        }
        None => "/".into(),
    };
    let timeout = get(t, "timeout")
        .and_then(|d| cx.duration(d))
        .unwrap_or(DEFAULT_ROUTE_TIMEOUT);
    Some(PublicDef {
        hosts: hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect(),
        path,
        timeout,
        span: p.span.clone(),
    })
}

pub(super) fn decode_build(cx: &mut Cx, b: &Node, dir: &Path) -> Option<BuildSpec> {
    let (context, t) = match &b.value {
        Value::Str(_) => (cx.text(b)?, None),
        _ => {
            let t = cx.table(b, "build", BUILD_KEYS)?;
            let c = match get(t, "context") {
                Some(c) => cx.text(c)?,
                None => ".".to_string(),
            };
            (c, Some(t))
        }
    };
    let args = t
        .and_then(|t| get(t, "args"))
        .map(|a| {
            cx.string_map(a, "build args")
                .into_iter()
                .map(|(k, v, _)| (k, v))
                .collect()
        })
        .unwrap_or_default();
    Some(BuildSpec {
        context: normalize(&dir.join(context)),
        dockerfile: t
            .and_then(|t| get(t, "dockerfile"))
            .and_then(|d| cx.text(d))
            .unwrap_or_else(|| "Dockerfile".into()),
        args,
        target: t.and_then(|t| get(t, "target")).and_then(|d| cx.text(d)),
    })
}

pub(super) fn decode_health(
    cx: &mut Cx,
    h: &Node,
    deadline: &mut Duration,
    min_healthy: &mut Duration,
) -> Option<HealthSpec> {
    let t = cx.table(h, "health", HEALTH_KEYS)?;
    let check = match (get(t, "http"), get(t, "tcp")) {
        (Some(p), None) => {
            let path = cx.text(p)?;
            if !path.starts_with('/') {
                cx.err(
                    &p.span,
                    format!("`{path}` is not a path"),
                    "must start with `/`",
                    Some("write the path of the health endpoint, e.g. `/health`".into()),
                );
            }
            Some(HealthCheck::Http(path))
        }
        (None, Some(b)) => cx.bool(b).filter(|b| *b).map(|_| HealthCheck::Tcp),
        (Some(_), Some(b)) => {
            cx.err(
                &b.span,
                "a health check is `http` or `tcp`, not both",
                "remove one",
                None,
            );
            None
        }
        (None, None) => {
            cx.err(
                &h.span,
                "a health check needs `http` or `tcp`",
                "no check",
                Some("add `http = \"/health\"` or `tcp = true`".into()),
            );
            None
        }
    };
    let interval = get(t, "interval")
        .and_then(|d| cx.duration(d))
        .unwrap_or(DEFAULT_HEALTH_INTERVAL);
    let timeout = get(t, "timeout")
        .and_then(|d| cx.duration(d))
        .unwrap_or(DEFAULT_HEALTH_TIMEOUT);
    let deregister_after = get(t, "deregister_after").and_then(|d| {
        let v = cx.duration(d)?;
        if v < MIN_DEREGISTER_AFTER {
            cx.err(
                &d.span,
                "Consul's minimum for deregister_after is 1m",
                "too short",
                Some("use `1m` or more".into()),
            );
        }
        Some(v)
    });
    if let Some(d) = get(t, "deadline").and_then(|d| cx.duration(d)) {
        *deadline = d;
    }
    if let Some(n) = get(t, "min_healthy")
        && let Some(d) = cx.duration(n)
    {
        *min_healthy = d;
        if d >= *deadline {
            cx.err(
                &n.span,
                format!(
                    "min_healthy ({}) is not shorter than the deadline ({})",
                    humantime::format_duration(d),
                    humantime::format_duration(*deadline)
                ),
                "the gate could never pass",
                Some("pm2 workers must stay up for `min_healthy` within `deadline`: shorten it, or raise `deadline`".into()),
            );
        }
    }
    Some(HealthSpec {
        check: check?,
        interval,
        timeout,
        deregister_after,
    })
}
