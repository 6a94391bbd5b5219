//! `consul agent FLAGS`: the flags of Consul's own command (`command/agent/agent.go`,
//! `agent/config/flags.go`), so the image `fleet-test/consul:standin` runs exactly as fleet
//! runs `hashicorp/consul`. Go's flag package takes `-flag value`, `-flag=value` and `--flag`.
//!
//! What each flag does here: `-node` (node name), `-bind` / `-advertise` (the catalog address),
//! `-client` (space-separated addresses the HTTP API, on `-http-port` (8500), and DNS, on
//! `-dns-port` (8600), listen on), `-server`, `-bootstrap-expect`, `-retry-join` (repeatable),
//! `-datacenter` (membership), `-data-dir` (the agent's own services and checks). `-encrypt`,
//! `-ui`, `-log-level`, `-config-dir`, `-config-file`, `-hcl` are accepted and ignored (no
//! gossip here). The store every agent forwards to is `CONSUL_STANDIN_STORE` (the image sets it).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::Config;
use crate::members::MemberRole;

/// The store agents forward to when `CONSUL_STANDIN_STORE` is not set.
pub const DEFAULT_STORE: &str = "http://10.201.1.1:8300";

const WITH_VALUE: &[&str] = &[
    "node",
    "bind",
    "advertise",
    "client",
    "http-port",
    "dns-port",
    "bootstrap-expect",
    "retry-join",
    "join",
    "datacenter",
    "data-dir",
    "encrypt",
    "log-level",
    "config-dir",
    "config-file",
    "hcl",
    "node-id",
];
const BOOLS: &[&str] = &["server", "ui", "dev", "bootstrap", "disable-host-node-id"];

/// `args` after `agent`; `store`: the server URL.
pub fn parse(args: &[String], store: &str, host_name: &str) -> Result<Config, String> {
    let mut node = None;
    let (mut bind, mut advertise) = (None::<String>, None::<String>);
    let mut client = vec!["127.0.0.1".to_string()];
    let (mut http_port, mut dns_port) = (8500u16, 8600u16);
    let mut role = MemberRole::default();
    let mut data_dir = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let flag = a
            .strip_prefix("--")
            .or_else(|| a.strip_prefix('-'))
            .ok_or_else(|| format!("unexpected argument {a:?}"))?;
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        if BOOLS.contains(&name) {
            let on = inline.as_deref().is_none_or(|v| v == "true");
            if name == "server" {
                role.server = on;
            }
            continue;
        }
        if !WITH_VALUE.contains(&name) {
            return Err(format!("flag provided but not defined: -{name}"));
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("flag needs an argument: -{name}"))?,
        };
        let port = |v: &str| {
            v.parse::<u16>()
                .map_err(|_| format!("-{name}: bad port {v:?}"))
        };
        match name {
            "node" => node = Some(value),
            "bind" => bind = Some(value),
            "advertise" => advertise = Some(value),
            "client" => client = value.split_whitespace().map(str::to_string).collect(),
            "http-port" => http_port = port(&value)?,
            "dns-port" => dns_port = port(&value)?,
            "bootstrap-expect" => {
                role.bootstrap_expect = value
                    .parse()
                    .map_err(|_| format!("-bootstrap-expect: bad number {value:?}"))?
            }
            "retry-join" | "join" => role.retry_join.push(value),
            "datacenter" => role.datacenter = value,
            "data-dir" => data_dir = Some(PathBuf::from(value)),
            _ => {}
        }
    }
    if role.bootstrap_expect > 0 && !role.server {
        return Err("-bootstrap-expect needs -server".into());
    }
    let ips: Vec<IpAddr> = client
        .iter()
        .map(|c| {
            c.parse()
                .map_err(|_| format!("-client: {c:?} is not an IP address"))
        })
        .collect::<Result<_, _>>()?;
    let first = ips.first().ok_or("-client is empty")?;
    let mut config = Config::new(SocketAddr::new(*first, http_port));
    config.extra_listen = ips[1..]
        .iter()
        .map(|ip| SocketAddr::new(*ip, http_port))
        .collect();
    config.dns_listen = ips
        .iter()
        .map(|ip| SocketAddr::new(*ip, dns_port))
        .collect();
    config.server = Some(store.to_string());
    config.advertise = advertise.or(bind).filter(|a| a.parse::<IpAddr>().is_ok());
    config.data_dir = data_dir;
    config.node = node.unwrap_or_else(|| host_name.to_string());
    config.member = Some(role);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn the_flags_fleet_gives_hashicorp_consul() {
        let c = parse(
            &args("-node=b1 -server -bootstrap-expect=3 -retry-join=10.201.2.2 -retry-join 10.201.3.2 -bind=10.201.1.2 -advertise=10.201.1.2 -client=127.0.0.1 -dns-port=53 -datacenter=dc1 -data-dir=/consul/data -encrypt=abc"),
            "http://s:8300",
            "x",
        )
        .unwrap();
        assert_eq!(c.node, "b1");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8500");
        assert_eq!(c.dns_listen[0].to_string(), "127.0.0.1:53");
        assert_eq!(c.advertise.as_deref(), Some("10.201.1.2"));
        let m = c.member.unwrap();
        assert!(m.server);
        assert_eq!(m.bootstrap_expect, 3);
        assert_eq!(m.retry_join, ["10.201.2.2", "10.201.3.2"]);
        let mut a = args("-client");
        a.push("127.0.0.1 10.211.1.1".into());
        let c = parse(&a, "s", "h").unwrap();
        assert_eq!(c.extra_listen[0].to_string(), "10.211.1.1:8500");
        assert_eq!(c.node, "h");
        assert!(parse(&args("-bogus"), "s", "h").is_err());
        assert!(parse(&args("-bootstrap-expect=3"), "s", "h").is_err());
    }
}
