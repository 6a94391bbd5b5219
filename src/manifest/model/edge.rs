//! `[edge]`: the edge proxy (image, ports, TLS).

use super::*;

pub(super) fn decode_edge(cx: &mut Cx, n: &Node, dir: &Path) -> (EdgeDef, Vec<(SecretRef, Span)>) {
    let mut e = EdgeDef::default();
    let mut secrets = Vec::new();
    let Some(t) = cx.table(n, "[edge]", EDGE_KEYS) else {
        return (e, secrets);
    };
    if let Some(r) = get(t, "roles").and_then(|r| cx.str_list(r)) {
        e.roles = r.into_iter().map(|(s, _)| s).collect();
    }
    if let Some(i) = get(t, "image").and_then(|i| cx.text(i)) {
        e.image = i;
    }
    if let Some(p) = get(t, "http").and_then(|p| cx.u16(p, 1)) {
        e.http = p;
    }
    if let Some(p) = get(t, "https").and_then(|p| cx.u16(p, 1)) {
        e.https = p;
    }
    let email = get(t, "email").and_then(|m| cx.text(m));
    e.tls = match get(t, "tls") {
        None => EdgeTls::Auto { email },
        Some(tn) => match &tn.value {
            Value::Table(_) => {
                let mut files = None;
                if let Some(ft) = cx.table(tn, "tls", EDGE_TLS_KEYS) {
                    let cert = get(ft, "cert")
                        .and_then(|c| secret_ref(cx, c, dir).map(|r| (r, c.span.clone())));
                    let key = get(ft, "key")
                        .and_then(|c| secret_ref(cx, c, dir).map(|r| (r, c.span.clone())));
                    if cert.is_none() || key.is_none() {
                        cx.err(&tn.span, "`tls` as a table needs `cert` and `key`", "incomplete", Some("write `tls = { cert = { file = \"site.crt\" }, key = { file = \"site.key\" } }`".into()));
                    }
                    if let (Some(c), Some(k)) = (cert, key) {
                        secrets.push(c.clone());
                        secrets.push(k.clone());
                        files = Some(EdgeTls::Files {
                            cert: c.0,
                            key: k.0,
                        });
                    }
                }
                files.unwrap_or(EdgeTls::Off)
            }
            _ => match cx.str(tn).as_deref() {
                Some("auto") | None => EdgeTls::Auto { email },
                Some("acme") => EdgeTls::Acme { email },
                Some("internal") => EdgeTls::Internal,
                Some("off") => EdgeTls::Off,
                Some(other) => {
                    cx.err(
                        &tn.span,
                        format!("`tls = \"{other}\"` is not known"),
                        "unknown TLS mode",
                        Some("`auto`, `acme`, `internal`, `off`, or `{ cert, key }`".into()),
                    );
                    EdgeTls::Auto { email }
                }
            },
        },
    };
    (e, secrets)
}
