//! The node's devices and addresses: where Service traffic from outside the node
//! arrives (the node program is attached there), which addresses serve NodePorts
//! (kube-proxy's `--nodeport-addresses`), and which address external flows to
//! remote endpoints are source-NATed to.
//!
//! Read once at start: a device or address added later needs an agent restart,
//! which the datapath rides through.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use nix::{ifaddrs::getifaddrs, net::if_::if_nametoindex};
use weir_common::{DeviceAddrs, NodeAddrs};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeNet {
    /// (name, ifindex) of each device.
    pub devices: Vec<(String, u32)>,
    /// The addresses NodePorts are served on, in device then address order.
    pub nodeport_addresses: Vec<IpAddr>,
    /// The source of external flows to remote endpoints, per family.
    pub snat: NodeAddrs,
    /// Each device's own first address of each family, by ifindex: the
    /// source pods' flows leaving by it are masqueraded to.
    pub device_addrs: Vec<(u32, DeviceAddrs)>,
    /// Every global address of the node's namespace, devices or not: an
    /// endpoint there is the node itself (hostNetwork).
    pub all_addresses: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeNetError {
    #[error("reading the node's interfaces: {0}")]
    Interfaces(nix::Error),
    #[error("device {0}: no such interface")]
    NoDevice(String),
}

/// Reads the node's interfaces. `devices`: the names given (`--devices`), or, if
/// none, every Ethernet interface with a global address (the node program reads
/// Ethernet frames: tunnels such as WireGuard carry bare IP). `cidrs`: the
/// NodePort address ranges (`--nodeport-addresses`); none means every global
/// address of the devices, as kube-proxy's default.
pub fn discover(devices: &[String], cidrs: &[IpNetwork]) -> Result<NodeNet, NodeNetError> {
    let mut addresses: Vec<(String, IpAddr)> = Vec::new();
    let mut ethernet = std::collections::BTreeSet::new();
    for ifaddr in getifaddrs().map_err(NodeNetError::Interfaces)? {
        let Some(addr) = ifaddr.address else { continue };
        if addr
            .as_link_addr()
            .is_some_and(|link| link.hatype() == ARPHRD_ETHER)
        {
            ethernet.insert(ifaddr.interface_name.clone());
        }
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if is_global(ip) && ifaddr.interface_name != "lo" {
            addresses.push((ifaddr.interface_name, ip));
        }
    }
    plan(
        devices,
        cidrs,
        &addresses,
        |name| ethernet.contains(name),
        |name| if_nametoindex(name).ok(),
    )
}

const ARPHRD_ETHER: u16 = 1;

/// `discover` on a given list of (interface, address): pure, for tests.
fn plan(
    devices: &[String],
    cidrs: &[IpNetwork],
    addresses: &[(String, IpAddr)],
    is_ethernet: impl Fn(&str) -> bool,
    ifindex: impl Fn(&str) -> Option<u32>,
) -> Result<NodeNet, NodeNetError> {
    let names: Vec<String> = if devices.is_empty() {
        addresses
            .iter()
            .map(|(name, _)| name.clone())
            .filter(|name| is_ethernet(name))
            .collect()
    } else {
        devices.to_vec()
    };
    let mut net = NodeNet {
        all_addresses: addresses.iter().map(|(_, ip)| *ip).collect(),
        ..NodeNet::default()
    };
    for name in names {
        let index = ifindex(&name).ok_or_else(|| NodeNetError::NoDevice(name.clone()))?;
        if net.devices.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let mut own = DeviceAddrs::default();
        for (_, ip) in addresses.iter().filter(|(n, _)| *n == name) {
            if cidrs.is_empty() || cidrs.iter().any(|c| c.contains(*ip)) {
                net.nodeport_addresses.push(*ip);
            }
            set_first(&mut own.v4, &mut own.v6, *ip);
        }
        net.device_addrs.push((index, own));
        net.devices.push((name, index));
    }
    // Replies of a source-NATed flow must come back to this node: any of its
    // own addresses does, the first NodePort address of the family by preference.
    let mut own: Vec<IpAddr> = net.nodeport_addresses.clone();
    own.extend(
        addresses
            .iter()
            .filter(|(n, _)| net.devices.iter().any(|(d, _)| d == n))
            .map(|(_, ip)| *ip),
    );
    for ip in own {
        set_first(&mut net.snat.v4, &mut net.snat.v6, ip);
    }
    Ok(net)
}

/// Writes `ip` (maps' form) into the slot of its family, unless that slot
/// holds an address already.
fn set_first(v4: &mut [u8; 16], v6: &mut [u8; 16], ip: IpAddr) {
    match ip {
        IpAddr::V4(a) if *v4 == [0; 16] => v4[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) if *v6 == [0; 16] => *v6 = a.octets(),
        _ => {}
    }
}

/// The interfaces of the calling thread's network namespace, by index.
pub fn interface_names() -> std::collections::BTreeMap<u32, String> {
    nix::net::if_::if_nameindex()
        .map(|all| {
            all.iter()
                .filter_map(|i| Some((i.index(), i.name().to_str().ok()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the calling thread runs in the network namespace of cookie
/// `cookie` (the node's, as the agent wrote it): where the datapath's
/// ifindexes name its interfaces.
pub fn in_netns(cookie: u64) -> bool {
    cookie != 0 && netns_cookie().is_ok_and(|c| c == cookie)
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`), as
/// `bpf_get_netns_cookie` sees it: the socket hooks act only where it matches.
pub fn netns_cookie() -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as nix::libc::socklen_t;
    // SO_NETNS_COOKIE (Linux 5.14): not in every libc binding yet.
    const SO_NETNS_COOKIE: nix::libc::c_int = 71;
    // SAFETY: a live socket, and a buffer of the length passed.
    let rc = unsafe {
        nix::libc::getsockopt(
            socket.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// This network namespace's `net.ipv4.ip_local_port_range` (it applies to IPv6
/// too): the source ports of the node's own connections.
pub fn ephemeral_ports() -> std::io::Result<[u16; 2]> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")?;
    let mut ports = text.split_whitespace().map(str::parse::<u16>);
    match (ports.next(), ports.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Ok([lo, hi]),
        _ => Err(std::io::Error::other(format!(
            "ip_local_port_range: unexpected {text:?}"
        ))),
    }
}

/// Unicast and not loopback or link-local: an address other hosts reach us on.
fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.is_multicast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || v6.is_unicast_link_local())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<(String, IpAddr)> {
        [("eth0", "10.0.0.5"), ("eth0", "fd00::5"), ("eth1", "192.168.9.5")]
            .iter()
            .map(|(n, ip)| ((*n).to_owned(), ip.parse().expect("ip")))
            .collect()
    }

    fn index(name: &str) -> Option<u32> {
        match name {
            "eth0" => Some(2),
            "eth1" => Some(3),
            "eth2" => Some(4),
            _ => None,
        }
    }

    #[test]
    fn by_default_every_device_with_a_global_address_serves_on_all_of_them() {
        let net = plan(&[], &[], &addrs(), |_| true, index).expect("plan");
        assert_eq!(net.devices, [("eth0".to_owned(), 2), ("eth1".to_owned(), 3)]);
        let serving: Vec<String> = net.nodeport_addresses.iter().map(ToString::to_string).collect();
        assert_eq!(serving, ["10.0.0.5", "fd00::5", "192.168.9.5"]);
        assert_eq!(&net.snat.v4[..4], &[10, 0, 0, 5]);
        assert_eq!(IpAddr::from(net.snat.v6).to_string(), "fd00::5");
        // Each device masquerades to its own address: eth1 has no IPv6 one
        // (the datapath then uses the node's).
        let (eth0, eth1) = (&net.device_addrs[0], &net.device_addrs[1]);
        assert_eq!(
            (eth0.0, &eth0.1.v4[..4], eth0.1.v6),
            (2, &[10, 0, 0, 5][..], net.snat.v6)
        );
        assert_eq!(
            (eth1.0, &eth1.1.v4[..4], eth1.1.v6),
            (3, &[192, 168, 9, 5][..], [0; 16])
        );
    }

    #[test]
    fn tunnels_are_no_default_devices() {
        let net = plan(&[], &[], &addrs(), |name| name == "eth1", index).expect("plan");
        assert_eq!(net.devices, [("eth1".to_owned(), 3)]);
        assert_eq!(
            net.all_addresses.len(),
            3,
            "every address is the node's, device or not"
        );
    }

    #[test]
    fn devices_and_nodeport_ranges_narrow_it_down() {
        let cidrs = ["192.168.0.0/16".parse().expect("cidr")];
        let net = plan(
            &["eth1".to_owned(), "eth0".to_owned()],
            &cidrs,
            &addrs(),
            |_| true,
            index,
        )
        .expect("plan");
        assert_eq!(net.devices, [("eth1".to_owned(), 3), ("eth0".to_owned(), 2)]);
        let serving: Vec<String> = net.nodeport_addresses.iter().map(ToString::to_string).collect();
        assert_eq!(serving, ["192.168.9.5"]);
        // A node address outside the NodePort ranges still sources NAT for IPv6.
        assert_eq!(IpAddr::from(net.snat.v6).to_string(), "fd00::5");
        assert!(matches!(
            plan(&["nope".to_owned()], &[], &addrs(), |_| true, index),
            Err(NodeNetError::NoDevice(_))
        ));
        // A device without addresses is attached, and serves nothing.
        let net = plan(&["eth2".to_owned()], &[], &addrs(), |_| true, index).expect("plan");
        assert_eq!((net.devices.len(), net.nodeport_addresses.len()), (1, 0));
    }
}
