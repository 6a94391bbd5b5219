//! The hosts' network: a veth pair per namespace on 10.200.N.0/24, and the iptables chains
//! that cut a host's link (tests/faults, tests/edge) and must go with the testbed.

use super::*;

pub(super) fn setup_network(n: u32) -> Result<()> {
    let (ns, veth, inner, outer) = (
        layout::netns(n),
        layout::veth(n),
        layout::address(n),
        layout::gateway(n),
    );
    if !Path::new(&format!("/var/run/netns/{ns}")).exists() {
        sh::run(&format!("ip netns add {ns}"))?;
    }
    if !sh::ok(&format!("ip link show {veth}")) {
        sh::run(&format!(
            "ip link add {veth} type veth peer name eth0 netns {ns}"
        ))?;
    }
    sh::run(&format!(
        "ip addr replace {outer}/24 dev {veth} && ip link set {veth} up && \
         ip -n {ns} link set lo up && ip -n {ns} addr replace {inner}/24 dev eth0 && \
         ip -n {ns} link set eth0 up && ip -n {ns} route replace default via {outer}"
    ))?;
    // Hosts (and their containers) reach each other through this namespace, as machines on a
    // network do: packets that arrive on a host's link are forwarded, but only by a routing
    // table of our own that knows the test hosts' networks and nothing else (an unreachable
    // default), so nothing a test host sends can leave this machine. The machine's own
    // forwarding setting is not touched. Containers send from their bridge address (dockerd
    // runs without iptables, so without the NAT that would hide it): the table routes the
    // answers back to the host that owns that bridge.
    let bridge = format!("10.210.{n}.0/24");
    let inner_net = format!("10.200.{n}.0/24");
    sh::run(&format!(
        "sysctl -qw net.ipv4.conf.{veth}.forwarding=1 && \
         ip route replace {inner_net} dev {veth} table {TABLE} && \
         ip route replace {bridge} via {inner} dev {veth} table {TABLE} && \
         ip route replace {bridge} via {inner} dev {veth} && \
         ip route replace unreachable default table {TABLE} && \
         {{ ip rule show | grep -q 'iif {veth} lookup {TABLE}' || ip rule add iif {veth} lookup {TABLE} priority {TABLE}; }}"
    ))
}

/// The routing table (and rule priority) that carries traffic between test hosts.
pub(super) const TABLE: u32 = 4200;

/// The iptables chains `FLEET-CUT-hN` with which tests/testsuite/faults.rs cuts a host's link (each
/// test removes its own; a killed test run leaves one).
pub(super) fn cut_chains() -> Vec<String> {
    sh::output("iptables -S 2>/dev/null")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("-N FLEET-CUT-"))
        .map(|h| format!("FLEET-CUT-{h}"))
        .collect()
}

pub(super) fn remove_cut_chain(chain: &str) {
    if let Ok(rules) = sh::output("iptables -S") {
        for rule in rules
            .lines()
            .filter(|r| r.ends_with(&format!("-j {chain}")))
        {
            if let Some(spec) = rule.strip_prefix("-A ") {
                let _ = sh::run(&format!("iptables -D {spec}"));
            }
        }
    }
    let _ = sh::run(&format!("iptables -F {chain} && iptables -X {chain}"));
}
