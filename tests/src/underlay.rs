//! The network between lab nodes: a veth pair from one node to another with an
//! address on each end, and native routing of each node's pod CIDR via the other
//! node's address (what Weir's default cross-node mode programs in a cluster).

use crate::{Node, netns::run_ok, unique};

/// Joins two nodes. `n` (0-255) picks the underlay subnet `10.200.n.0/24`: node
/// `a` is `.1`, node `b` is `.2`.
pub fn link(a: &Node, b: &Node, n: u8) {
    let (ea, eb) = (unique("ula"), unique("ulb"));
    run_ok(std::process::Command::new("ip").args(["link", "add", &ea, "type", "veth", "peer", "name", &eb]));
    for (end, node) in [(&ea, a), (&eb, b)] {
        run_ok(std::process::Command::new("ip").args(["link", "set", end, "netns", node.ns.name()]));
    }
    let (ip_a, ip_b) = (format!("10.200.{n}.1"), format!("10.200.{n}.2"));
    a.ns.sh(&format!("ip addr add {ip_a}/24 dev {ea} && ip link set {ea} up"));
    b.ns.sh(&format!("ip addr add {ip_b}/24 dev {eb} && ip link set {eb} up"));
    a.ns.sh(&format!("ip route add {} via {ip_b}", b.pod_cidr()));
    b.ns.sh(&format!("ip route add {} via {ip_a}", a.pod_cidr()));
}
