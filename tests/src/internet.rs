//! The world beyond the cluster's network: a router on the underlay (`.254`)
//! with a second link to an "internet" host (`192.0.2.10` and `.11`, TEST-NET-1)
//! whose only route is a default one to the router. It never learns of pods
//! except through the addresses it sees, and it answers pod addresses only
//! once the router is told where they are ([`Internet::route_pods`]).

use std::net::IpAddr;

use crate::{Node, netns::Netns, underlay::Underlay, unique};

/// The internet host's addresses.
pub const HOST: &str = "192.0.2.10";
pub const HOST2: &str = "192.0.2.11";

pub struct Internet {
    pub host: Netns,
    pub router: Netns,
    pub router_ip: IpAddr,
}

impl Internet {
    /// Builds the router and the host, and routes the internet from `nodes`
    /// via the router.
    pub fn new(underlay: &Underlay, nodes: &[&Node]) -> Self {
        let (router, router_ip) = underlay.external_at(254);
        router.sh("sysctl -qw net.ipv4.ip_forward=1");
        let host = Netns::new(&unique("wnet"));
        let (r_end, h_end) = (unique("wrt"), unique("win"));
        router.sh(&format!(
            "ip link add {r_end} type veth peer name {h_end} netns {} && ip addr add 192.0.2.1/24 dev {r_end} && ip link set {r_end} up",
            host.name()
        ));
        host.sh(&format!(
            "ip link set lo up && ip addr add {HOST}/24 dev {h_end} && ip addr add {HOST2}/24 dev {h_end} && ip link set {h_end} up && ip route add default via 192.0.2.1"
        ));
        for node in nodes {
            node.ns.sh(&format!("ip route add 192.0.2.0/24 via {router_ip}"));
        }
        Self {
            host,
            router,
            router_ip,
        }
    }

    /// The router forwards packets of at most `mtu` bytes to the host, and
    /// tells senders of larger ones to fragment less (ICMP "fragmentation
    /// needed"; path MTU discovery). The host's end keeps its MTU, so that
    /// the MSS it offers does not spare the senders the lesson.
    pub fn narrow_link(&self, mtu: u32) {
        self.router.sh(&format!(
            "ip link set mtu {mtu} dev $(ip -o -4 addr show | awk '$4 ~ /^192.0.2.1\\// {{print $2; exit}}')"
        ));
    }

    /// The router learns each node's pod CIDR via its address (a network that
    /// routes pod addresses): replies to flows that keep a pod's address.
    pub fn route_pods(&self, nodes: &[&Node], node_ips: &[IpAddr]) {
        for (node, ip) in nodes.iter().zip(node_ips) {
            self.router
                .sh(&format!("ip route add {} via {ip}", node.pod_cidr()));
        }
    }
}
