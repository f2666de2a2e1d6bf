//! `--routing vxlan`: where the overlay sends a packet for another node's pods.

/// Value of [`crate::maps::TUNNELS`], an LPM trie over
/// [`IpcacheKey`](crate::IpcacheKey)s (another node's pod CIDR): the node
/// that has those pods, as the outer destination of the VXLAN packet (its
/// InternalIP; the outer family need not be the inner one's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelEndpoint {
    pub addr: [u8; 16], /* BE, IPv4 in the first 4 bytes */
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<TunnelEndpoint>() == 20);

/// The UDP port of the overlay's VXLAN device by default: Linux's own
/// (`IANA_VXLAN_UDP_PORT` predates 4789), flannel's and Cilium's.
pub const VXLAN_PORT: u16 = 8472;
/// What VXLAN adds to each packet on an IPv4 underlay: outer IPv4 (20), UDP
/// (8), VXLAN (8) and inner Ethernet (14) headers. Pods' MTU is the
/// underlay's minus this (an IPv6 underlay needs 20 more).
pub const VXLAN_OVERHEAD: u32 = 50;

crate::pod!(TunnelEndpoint);
