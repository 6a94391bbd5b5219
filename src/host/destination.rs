//! Addresses and users ssh could misread as options, refused before any ssh runs.

use crate::desired::HostTarget;

use super::HostError;

/// Why `value` (a host's `address` or `user`) cannot be given to ssh, if it cannot: ssh would
/// read a leading `-` as an option (`-oProxyCommand=...`), and whitespace, control and shell
/// characters have no place in a host name or user (ssh expands both into `ProxyCommand`s
/// through `%h` / `%r`). For an address, the host part of `ssh://[user@]host[:port]` and of
/// `user@host` is checked too.
pub fn destination_problem(value: &str, what: &str) -> Option<String> {
    if value.is_empty() {
        return Some(format!("the {what} is empty"));
    }
    let rest = value.strip_prefix("ssh://").unwrap_or(value);
    let parts = match rest.rsplit_once('@') {
        Some((user, host)) => vec![value, rest, user, host],
        None => vec![value, rest],
    };
    if parts.iter().any(|p| p.starts_with('-')) {
        return Some(format!(
            "the {what} starts with `-`: ssh would read it as an option"
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "'\"`$;&|<>(){}\\*?!#~".contains(*c))
    {
        return Some(format!(
            "the {what} contains {c:?}: no whitespace, control or shell characters"
        ));
    }
    None
}

/// Refuses a target whose address or user ssh could misread ([`destination_problem`]). The
/// manifest already refuses them with a diagnostic; this holds for targets made in code too,
/// since the openssh crate puts the destination on ssh's command line without `--`.
pub fn check_destination(target: &HostTarget) -> Result<(), HostError> {
    let problem = destination_problem(&target.address, "address").or_else(|| {
        target
            .user
            .as_deref()
            .and_then(|u| destination_problem(u, "user"))
    });
    match problem {
        None => Ok(()),
        Some(cause) => Err(HostError::Ssh {
            host: target.name.clone(),
            address: target.address.clone(),
            cause,
        }),
    }
}
