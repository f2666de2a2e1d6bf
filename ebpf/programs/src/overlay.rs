//! `--routing vxlan`: one VXLAN device in collect-metadata mode carries pods'
//! packets to every other node. The host routes another node's pod CIDR to the
//! device; the device's egress program ([`encapsulate`]) tells the kernel
//! where the packet goes (`bpf_skb_set_tunnel_key`: that node's address, the
//! cluster's VNI) from the [`TUNNELS`] map, so one device serves every peer
//! and no forwarding database or ARP is kept. On the receiving node the
//! device's ingress program ([`decapsulated`]) checks the VNI and hands a
//! packet for a local pod straight to its veth, where the pod's programs judge
//! it as they judge one from the underlay: the inner packet keeps the client
//! pod's own address, so NetworkPolicy sees the real peer.

use aya_ebpf::{
    bindings::{BPF_F_TUNINFO_IPV6, TC_ACT_OK, bpf_tunnel_key},
    helpers::{bpf_skb_change_type, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    maps::{LpmTrie, lpm_trie::Key},
    programs::TcContext,
};
use weir_common::{
    AF_INET, AF_INET6, IPCACHE_PREFIX_BITS, IpcacheKey, NODE_F_HOST_STACK, Reason, TunnelEndpoint, maps,
};

use crate::{
    endpoints,
    lb::maps::NODE,
    metrics::Action,
    packet::{Family, V4, V6},
    peer,
};

bpf_map! {
    static TUNNELS: LpmTrie<IpcacheKey, TunnelEndpoint> = LpmTrie::with_max_entries(maps::TUNNELS_ENTRIES, 0);
}

/// `skb->pkt_type` of a packet for this host.
const PACKET_HOST: u32 = 0;
/// The outer header's TTL.
const TUNNEL_TTL: u8 = 64;
const KEY_SIZE: u32 = core::mem::size_of::<bpf_tunnel_key>() as u32;

/// The inner destination, in the maps' 16-byte form, and its family.
#[inline(always)]
fn destination(ctx: &TcContext) -> Result<([u8; 16], u8), Reason> {
    let mut addr = [0u8; 16];
    match crate::packet::ethertype(ctx)? {
        V4::ETH_P => {
            let a: [u8; 4] = ctx.load(V4::DADDR).map_err(|_| Reason::Malformed)?;
            addr[..4].copy_from_slice(&a);
            Ok((addr, AF_INET))
        }
        V6::ETH_P => {
            addr = ctx.load(V6::DADDR).map_err(|_| Reason::Malformed)?;
            Ok((addr, AF_INET6))
        }
        _ => Err(Reason::NoTunnel),
    }
}

/// TC egress on the overlay's device: the packet is given its tunnel (the
/// node with its destination's pod CIDR); without one it could not leave.
#[inline(always)]
pub fn encapsulate(ctx: &TcContext) -> Result<Action, Reason> {
    let (addr, family) = destination(ctx)?;
    // What the kernel itself sends to a link's multicast groups (an MLD report
    // as the device comes up) is nobody's pod traffic: left to the device,
    // which discards what has no tunnel, rather than counted as a drop.
    let multicast = if family == AF_INET {
        addr[0] >= 224
    } else {
        addr[0] == 0xff
    };
    if multicast {
        return Ok(Action::forward(TC_ACT_OK));
    }
    let bits = if family == AF_INET { 32 } else { 128 };
    let key = Key::new(IPCACHE_PREFIX_BITS + bits, IpcacheKey { family, addr });
    let peer = TUNNELS.get(&key).ok_or(Reason::NoTunnel)?;
    let vni = NODE.get(0).map_or(0, |n| n.vni);
    // SAFETY: all-zero is a valid `bpf_tunnel_key` (integers and unions of them).
    let mut tunnel: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    tunnel.tunnel_id = vni;
    tunnel.tunnel_ttl = TUNNEL_TTL;
    let flags = if peer.family == AF_INET {
        // The helper takes the IPv4 address in host order, IPv6 as it is.
        tunnel.__bindgen_anon_1.remote_ipv4 =
            u32::from_be_bytes([peer.addr[0], peer.addr[1], peer.addr[2], peer.addr[3]]);
        0
    } else {
        let a = &peer.addr;
        tunnel.__bindgen_anon_1.remote_ipv6 = [
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
        ];
        u64::from(BPF_F_TUNINFO_IPV6)
    };
    // SAFETY: `tunnel` lives on our stack and is as large as we say.
    let ret = unsafe { bpf_skb_set_tunnel_key(ctx.skb.skb, &raw mut tunnel, KEY_SIZE, flags) };
    if ret != 0 {
        return Err(Reason::NoTunnel);
    }
    Ok(Action::forward(TC_ACT_OK))
}

/// TC ingress on the overlay's device: a packet another node sent through
/// the tunnel, already decapsulated.
#[inline(always)]
pub fn decapsulated(ctx: &TcContext) -> Result<Action, Reason> {
    // SAFETY: all-zero is a valid `bpf_tunnel_key`.
    let mut tunnel: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // The flag must match the outer header's family: try IPv4, then IPv6.
    // SAFETY: `tunnel` lives on our stack and is as large as we say.
    let got = unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, &raw mut tunnel, KEY_SIZE, 0) } == 0
        // SAFETY: as above.
        || unsafe {
            bpf_skb_get_tunnel_key(ctx.skb.skb, &raw mut tunnel, KEY_SIZE, u64::from(BPF_F_TUNINFO_IPV6))
        } == 0;
    let node = NODE.get(0);
    if !got || Some(tunnel.tunnel_id) != node.map(|n| n.vni) {
        return Err(Reason::ForeignVni);
    }
    // The inner frame's destination MAC is the sending device's own (no ARP
    // on the overlay): this host is where it was meant to go.
    // SAFETY: no preconditions.
    unsafe { bpf_skb_change_type(ctx.skb.skb, PACKET_HOST) };
    let host_stack = node.is_some_and(|n| n.flags & NODE_F_HOST_STACK != 0);
    if host_stack {
        return Ok(Action::forward(TC_ACT_OK));
    }
    // A local pod: straight into it (`crate::into_peer` does its veth's
    // `to_pod` work first), or to its veth, as a local pod's packet would go.
    let (addr, family) = destination(ctx)?;
    let ep = if family == AF_INET {
        endpoints::get(&endpoints::key_wide::<V4>(&addr))
    } else {
        endpoints::get(&endpoints::key_wide::<V6>(&addr))
    };
    Ok(match ep {
        Some(ep) if endpoints::peer_ready(ep) => Action::forward(crate::PEER),
        Some(ep) => peer::by_veth(ep.ifindex),
        None => Action::forward(TC_ACT_OK),
    })
}
