//! `[consul]`: the agent address, token, datacenter, `[consul.agent]`.

use super::*;

pub(super) fn decode_consul(
    cx: &mut Cx,
    n: &Node,
    dir: &Path,
) -> Option<(ConsulTarget, Vec<(SecretRef, Span)>)> {
    let t = cx.table(n, "[consul]", CONSUL_KEYS)?;
    let address = match get(t, "address") {
        Some(a) => {
            let s = cx.text(a)?;
            if !(s.starts_with("http://") || s.starts_with("https://")) {
                cx.err(&a.span, format!("`{s}` is not an http(s) URL"), "not a URL", Some("write the agent's address as seen from each host, e.g. `http://127.0.0.1:8500`".into()));
            }
            Some(s)
        }
        None => {
            cx.err(
                &n.span,
                "[consul] has no `address`",
                "missing `address`",
                Some("add `address = \"http://127.0.0.1:8500\"`".into()),
            );
            None
        }
    };
    let token = get(t, "token").and_then(|p| Some((secret_ref(cx, p, dir)?, p.span.clone())));
    let mut agent_secrets = Vec::new();
    let agent = get(t, "agent").and_then(|a| setup::decode_agent(cx, a, dir, &mut agent_secrets));
    let container_address = get(t, "container_address").and_then(|a| {
        let s = cx.text(a)?;
        if !(s.starts_with("http://") || s.starts_with("https://")) {
            cx.err(&a.span, format!("`{s}` is not an http(s) URL"), "not a URL", Some("write the agent's address as seen from the host's containers, e.g. `http://host.docker.internal:8500` (Docker's bridge gateway)".into()));
        }
        Some(s)
    });
    Some((
        ConsulTarget {
            address: address?,
            token: token.as_ref().map(|(r, _)| r.clone()),
            datacenter: get(t, "datacenter").and_then(|d| cx.text(d)),
            container_address,
            agent,
        },
        token.into_iter().chain(agent_secrets).collect(),
    ))
}

// decode_host returns HostTarget; keep the span with it here.
