//! The network between lab nodes, and the world outside the cluster.
//!
//! [`Underlay`] is a switch (a bridge in a namespace of its own) on the subnet
//! `10.200.n.0/24`: nodes and external hosts plug into it, and each node's pod
//! CIDR is routed via that node's address, by the harness ([`Underlay::join`])
//! or by the agents (`--routing native`, [`Underlay::plug_nodes`]). [`link`] is the smallest case: two nodes on a veth.

use std::net::IpAddr;

use crate::{Node, flood, netns::Netns, netns::run_ok, unique, xdp_pass};

/// A veth between two namespaces: `a_end` in `a`, `b_end` in `b`.
fn veth(a: &Netns, a_end: &str, b: &Netns, b_end: &str) {
    run_ok(
        std::process::Command::new("ip").args(["link", "add", a_end, "type", "veth", "peer", "name", b_end]),
    );
    for (end, ns) in [(a_end, a), (b_end, b)] {
        run_ok(std::process::Command::new("ip").args(["link", "set", end, "netns", ns.name()]));
    }
}

/// Joins two nodes. `n` (0-255) picks the underlay subnet `10.200.n.0/24`: node
/// `a` is `.1`, node `b` is `.2`.
pub fn link(a: &Node, b: &Node, n: u8) {
    let (ip_a, ip_b) = link_plain(a, b, n);
    a.ns.sh(&format!("ip route add {} via {ip_b}", b.pod_cidr()));
    b.ns.sh(&format!("ip route add {} via {ip_a}", a.pod_cidr()));
}

/// [`link`] with no route to the pods (what `weir-agent --routing` installs);
/// the nodes' addresses.
pub fn link_plain(a: &Node, b: &Node, n: u8) -> (IpAddr, IpAddr) {
    let (ea, eb) = (unique("ula"), unique("ulb"));
    veth(&a.ns, &ea, &b.ns, &eb);
    let (ip_a, ip_b) = (format!("10.200.{n}.1"), format!("10.200.{n}.2"));
    a.ns.sh(&format!("ip addr add {ip_a}/24 dev {ea} && ip link set {ea} up"));
    b.ns.sh(&format!("ip addr add {ip_b}/24 dev {eb} && ip link set {eb} up"));
    (
        ip_a.parse().expect("underlay address"),
        ip_b.parse().expect("underlay address"),
    )
}

/// How the agents route other nodes' pods (`--routing`), in a lab whose
/// underlay carries the nodes' own addresses only ([`Underlay::plug_nodes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    Native,
    Vxlan,
}

impl Routing {
    /// The agent's flags.
    pub fn flags(self) -> Vec<String> {
        match self {
            Routing::Native => vec!["--routing".into(), "native".into()],
            Routing::Vxlan => vec!["--routing".into(), "vxlan".into()],
        }
    }

    /// A node whose pods' MTU suits the routing: on the overlay, the
    /// underlay's (1,500) less VXLAN's 50 bytes, as the agent writes it into
    /// the conflist it owns.
    pub fn node(self, pod_cidr: &str) -> Node {
        let mut node = Node::new(pod_cidr);
        if self == Routing::Vxlan {
            node.conf["mtu"] = serde_json::json!(1450);
        }
        node
    }

    /// The next hop `ip route` shows for a pod CIDR of the node at `ip`.
    pub fn hop(self, ip: IpAddr) -> String {
        match self {
            Routing::Native => ip.to_string(),
            Routing::Vxlan => "weir_vxlan".to_owned(),
        }
    }
}

/// A switched underlay `10.200.n.0/24`.
pub struct Underlay {
    switch: Netns,
    n: u8,
}

impl Underlay {
    pub fn new(n: u8) -> Self {
        let switch = Netns::new(&unique("wsw"));
        switch.sh("ip link add br0 type bridge && ip link set br0 up");
        Self { switch, n }
    }

    /// `n` of the subnet `10.200.n.0/24`.
    pub fn n(&self) -> u8 {
        self.n
    }

    /// Plugs `ns` into the switch as `10.200.n.host`; returns that address.
    pub fn plug(&self, ns: &Netns, host: u8) -> IpAddr {
        self.plug_named(ns, host).0
    }

    /// [`Underlay::plug`], and `fd00:200:n::host` too: both addresses.
    pub fn plug_dual(&self, ns: &Netns, host: u8) -> (IpAddr, IpAddr) {
        let (v4, inside) = self.plug_named(ns, host);
        let v6 = format!("fd00:200:{}::{host}", self.n);
        ns.sh(&format!("ip -6 addr add {v6}/64 dev {inside} nodad"));
        (v4, v6.parse().expect("underlay address"))
    }

    fn plug_named(&self, ns: &Netns, host: u8) -> (IpAddr, String) {
        let (inside, port) = (unique("ulp"), unique("uls"));
        veth(ns, &inside, &self.switch, &port);
        self.switch
            .sh(&format!("ip link set {port} master br0 && ip link set {port} up"));
        let ip = format!("10.200.{}.{host}", self.n);
        ns.sh(&format!(
            "ip addr add {ip}/24 dev {inside} && ip link set {inside} up"
        ));
        (ip.parse().expect("underlay address"), inside)
    }

    /// Plugs the nodes in as `.1`, `.2`, ... and nothing more: no route to
    /// their pods (what `weir-agent --routing native` installs). Returns their
    /// addresses.
    pub fn plug_nodes(&self, nodes: &[&Node]) -> Vec<IpAddr> {
        nodes
            .iter()
            .zip(1u8..)
            .map(|(node, host)| self.plug(&node.ns, host))
            .collect()
    }

    /// Plugs the nodes in: with `routing`, as [`Underlay::plug_nodes`] (the
    /// agents route), without, as [`Underlay::join`].
    pub fn connect(&self, nodes: &[&Node], routing: Option<Routing>) -> Vec<IpAddr> {
        match routing {
            Some(_) => self.plug_nodes(nodes),
            None => self.join(nodes),
        }
    }

    /// Plugs the nodes in as `.1`, `.2`, ... and routes each one's pod CIDR via it
    /// on the others. Returns their addresses.
    pub fn join(&self, nodes: &[&Node]) -> Vec<IpAddr> {
        let ips = self.plug_nodes(nodes);
        for (node, _) in nodes.iter().zip(&ips) {
            for (other, via) in nodes.iter().zip(&ips) {
                if other.ns.name() != node.ns.name() {
                    node.ns
                        .sh(&format!("ip route add {} via {via}", other.pod_cidr()));
                }
            }
        }
        ips
    }

    /// Makes the switch's ports behave as a wire towards devices running XDP,
    /// for the ports plugged so far: they take frames sent back by XDP
    /// (`XDP_TX`; a veth hands them to its peer promptly only when the peer
    /// runs an XDP program of its own: a program that passes everything is
    /// attached), and they deliver complete checksums (without transmit
    /// checksum offload the switch finishes what a sender left for offload:
    /// a veth would hand XDP a checksum only half done, as no frame off a
    /// wire is).
    pub fn take_xdp_frames(&self) {
        let pin = xdp_pass::pinned();
        let ports = self
            .switch
            .sh("ip -o link show master br0 | awk -F': ' '{print $2}' | cut -d@ -f1");
        for port in ports.split_whitespace() {
            self.switch.sh(&format!("ethtool -K {port} tx off >/dev/null"));
            xdp_pass::attach(&self.switch, port, &pin);
        }
    }

    /// The switch's end of the cable of the host holding `addr` in `ns`, as
    /// [`flood::Wire`]: frames sent there reach that host as from the wire
    /// (a traffic generator at the far end of its cable, passing nothing but
    /// the host's own device), addressed from `from`'s MAC.
    pub fn wire_to(&self, ns: &Netns, addr: IpAddr, from: &Netns, from_addr: IpAddr) -> flood::Wire {
        let host = ns.link_holding(addr);
        let peer = host["link_index"].as_u64().expect("a veth's peer index");
        let ports: serde_json::Value =
            serde_json::from_str(&self.switch.sh("ip -j link show")).expect("ip -j link");
        let port = ports
            .as_array()
            .and_then(|all| {
                all.iter()
                    .find(|p| p["ifindex"].as_u64() == Some(peer) && p["master"] == "br0")
            })
            .and_then(|p| p["ifname"].as_str())
            .expect("the switch's port of the host");
        flood::Wire {
            ns: Netns::attach(self.switch.name()),
            device: port.to_owned(),
            src_mac: flood::mac(&from.link_holding(from_addr)),
            dst_mac: flood::mac(&host),
        }
    }

    /// A host outside the cluster on the underlay, as `.100`.
    pub fn external(&self) -> (Netns, IpAddr) {
        self.external_at(100)
    }

    /// A host outside the cluster on the underlay, as `.host`.
    pub fn external_at(&self, host: u8) -> (Netns, IpAddr) {
        let ns = Netns::new(&unique("wext"));
        let ip = self.plug(&ns, host);
        (ns, ip)
    }
}
