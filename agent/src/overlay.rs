//! `--routing vxlan`: the overlay's one VXLAN device, created and owned by the
//! agent, and the tunnel map its programs read.
//!
//! The device is in collect-metadata ("external") mode: it has no remote of its
//! own and no forwarding database. Its egress program sets each packet's
//! tunnel (the node that has the destination's pod CIDR, the cluster's VNI)
//! from [`weir_common::maps::TUNNELS`], which follows the Node objects; the
//! routes to other nodes' pod CIDRs lead into it ([`crate::node_routes`]). It
//! takes no ARP (its peers are picked per packet, not per neighbour), no
//! multicast and no IPv6 link-local address: it has nothing of its own to say
//! to anyone (an MLD report would only be dropped for want of a tunnel).

use std::{collections::BTreeMap, net::IpAddr};

use futures::TryStreamExt as _;
use ipnetwork::IpNetwork;
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo,
    LinkMessage,
};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVxlan};
use tracing::info;
use weir_common::{IPCACHE_PREFIX_BITS, VXLAN_OVERHEAD};
use weir_model::{nodes::NodeRoute, policy::IpcacheEntry};

use crate::{
    netlink::{Netlink, NetlinkError},
    node_routes::Hop,
    sync::SharedDatapath,
};

/// The overlay's device (IFNAMSIZ allows 15 bytes).
pub const DEVICE: &str = "weir_vxlan";

/// What an IPv6 outer header adds beyond an IPv4 one.
const IPV6_EXTRA: u32 = 20;

/// The device as the agent made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    pub ifindex: u32,
    /// Its MTU, which is the pods' too: the underlay's less the tunnel's
    /// overhead.
    pub mtu: u32,
}

/// The pods' MTU on an underlay of `underlay_mtu`, tunnelled over IPv4
/// (`ipv6_underlay`: over IPv6, 20 bytes more of header).
pub fn pod_mtu(underlay_mtu: u32, ipv6_underlay: bool) -> u32 {
    underlay_mtu - VXLAN_OVERHEAD - if ipv6_underlay { IPV6_EXTRA } else { 0 }
}

/// Makes [`DEVICE`] a collect-metadata VXLAN device on UDP `port`, with
/// `mtu`, up. One left by an earlier agent is kept if it is such a device on
/// that port, replaced otherwise (a restart with another `--vxlan-port`).
pub fn ensure_device(netlink: &Netlink, port: u16, mtu: u32) -> Result<Device, NetlinkError> {
    let existing = find(netlink)?;
    let ifindex = match existing {
        Some(link) if is_ours(&link, port) => link.header.index,
        other => {
            if let Some(link) = other {
                let index = link.header.index;
                info!(
                    device = DEVICE,
                    port, "replacing an overlay device of other settings"
                );
                netlink.run(
                    || format!("deleting {DEVICE}"),
                    |h| async move { h.link().del(index).execute().await },
                )?;
            }
            let msg = LinkMessageBuilder::<LinkVxlan>::new(DEVICE)
                .append_info_data(InfoVxlan::CollectMetadata(true))
                .append_info_data(InfoVxlan::Learning(false))
                .port(port)
                .mtu(mtu)
                .arp(false)
                .multicast(false)
                .build();
            netlink.run(
                || format!("creating {DEVICE} (vxlan external dstport {port})"),
                |h| async move { h.link().add(msg).execute().await },
            )?;
            let link = find(netlink)?.ok_or_else(|| NetlinkError::Request {
                op: format!("finding {DEVICE} after creating it"),
                source: rtnetlink::Error::RequestFailed,
            })?;
            info!(device = DEVICE, port, mtu, "overlay device created");
            link.header.index
        }
    };
    let no_link_local = LinkUnspec::new_with_index(ifindex)
        .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![
            AfSpecInet6::AddrGenMode(In6AddrGenMode::None),
        ])]))
        .build();
    netlink.run(
        || format!("setting {DEVICE}'s addrgenmode none"),
        |h| async move { h.link().set(no_link_local).execute().await },
    )?;
    let up = LinkUnspec::new_with_index(ifindex)
        .mtu(mtu)
        .arp(false)
        .multicast(false)
        .up()
        .build();
    netlink.run(
        || format!("bringing {DEVICE} up"),
        |h| async move { h.link().set(up).execute().await },
    )?;
    Ok(Device { ifindex, mtu })
}

/// Removes [`DEVICE`] if an earlier agent made it (the routing mode changed).
pub fn remove_device(netlink: &Netlink) -> Result<(), NetlinkError> {
    if let Some(link) = find(netlink)? {
        let index = link.header.index;
        netlink.run(
            || format!("deleting {DEVICE}"),
            |h| async move { h.link().del(index).execute().await },
        )?;
        info!(device = DEVICE, "overlay device removed (not --routing vxlan)");
    }
    Ok(())
}

/// The MTU of the link `ifindex` (the underlay's device).
pub fn link_mtu(netlink: &Netlink, ifindex: u32) -> Result<Option<u32>, NetlinkError> {
    let links: Vec<LinkMessage> = netlink.run(
        || format!("reading link #{ifindex}"),
        |h| async move { h.link().get().match_index(ifindex).execute().try_collect().await },
    )?;
    Ok(links.iter().flat_map(|l| &l.attributes).find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    }))
}

fn find(netlink: &Netlink) -> Result<Option<LinkMessage>, NetlinkError> {
    let found = netlink.run(
        || format!("looking up {DEVICE}"),
        |h| async move {
            h.link()
                .get()
                .match_name(DEVICE.to_owned())
                .execute()
                .try_collect::<Vec<_>>()
                .await
        },
    );
    match found {
        Ok(links) => Ok(links.into_iter().next()),
        Err(NetlinkError::Request {
            source: rtnetlink::Error::NetlinkError(e),
            ..
        }) if e.raw_code().abs() == libc::ENODEV => Ok(None),
        Err(e) => Err(e),
    }
}

/// A VXLAN device in collect-metadata mode on `port`.
fn is_ours(link: &LinkMessage, port: u16) -> bool {
    let infos = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => Some(infos),
        _ => None,
    });
    let Some(infos) = infos else { return false };
    let vxlan = infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)));
    let data = infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(data)) => Some(data),
        _ => None,
    });
    vxlan
        && data.is_some_and(|d| {
            d.contains(&InfoVxlan::CollectMetadata(true)) && d.contains(&InfoVxlan::Port(port))
        })
}

/// The overlay in the sync loop: where routes lead, and the tunnel map.
pub struct Overlay {
    pub device: Device,
    /// This node's addresses, the source of what the node itself sends into
    /// the overlay (its NodePort source NAT, its processes).
    pub sources: Vec<IpAddr>,
    pub maps: SharedDatapath,
}

impl Overlay {
    /// The route of `cidr` into the device.
    pub fn hop(&self, cidr: &IpNetwork) -> Hop {
        Hop::Device {
            ifindex: self.device.ifindex,
            src: self
                .sources
                .iter()
                .find(|a| a.is_ipv4() == cidr.is_ipv4())
                .copied(),
        }
    }

    /// Makes the tunnel map lead exactly `routes`' CIDRs to their Nodes'
    /// addresses; how many entries changed.
    pub fn sync_tunnels(&self, routes: &BTreeMap<IpNetwork, NodeRoute>) -> Result<usize, String> {
        let desired = weir_model::nodes::tunnels(routes);
        let mut dp = self.maps.lock();
        let mut current = BTreeMap::new();
        for entry in dp.tunnels.iter() {
            let (k, v) = entry.map_err(|e| format!("reading the tunnel map: {e}"))?;
            current.insert(
                IpcacheEntry {
                    prefix_len: k.prefix_len(),
                    key: k.data(),
                },
                v,
            );
        }
        let mut changed = 0;
        for (k, v) in &desired {
            if current.get(k) != Some(v) {
                let key = aya::maps::lpm_trie::Key::new(k.prefix_len, k.key);
                dp.tunnels
                    .insert(&key, *v, 0)
                    .map_err(|e| format!("writing the tunnel of {}: {e}", describe(k)))?;
                changed += 1;
            }
        }
        for k in current.keys().filter(|k| !desired.contains_key(k)) {
            let key = aya::maps::lpm_trie::Key::new(k.prefix_len, k.key);
            dp.tunnels
                .remove(&key)
                .map_err(|e| format!("removing the tunnel of {}: {e}", describe(k)))?;
            changed += 1;
        }
        Ok(changed)
    }
}

fn describe(k: &IpcacheEntry) -> String {
    let bits = k.prefix_len.saturating_sub(IPCACHE_PREFIX_BITS);
    match weir_model::net::from_abi(k.key.addr, k.key.family) {
        Some(ip) => format!("{ip}/{bits}"),
        None => format!("{:?}/{bits}", k.key.addr),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pods_mtu_leaves_room_for_the_tunnel() {
        assert_eq!(super::pod_mtu(1500, false), 1450);
        assert_eq!(super::pod_mtu(1500, true), 1430);
        assert_eq!(super::pod_mtu(9001, false), 8951);
    }
}
