//! Protocol numbers of the wire, as the kernel's headers name them.

/// Address families, as in `AF_INET`/`AF_INET6`.
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// IP protocol numbers used in service keys.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

/// `skb->mark` of a packet our programs routed to a node device themselves
/// (`route::forward`): its device's TC egress (`to_netdev`) has nothing to do
/// for it (never a pod's flow to masquerade, never the node's own reply) and
/// passes it at once, clearing the mark; the overlay's (`to_overlay`) clears it
/// before the packet is encapsulated and goes through the host's stack. A
/// whole value compared, not a bit, with none of the bits kube-proxy's rules
/// test (0x4000, 0x8000) or Cilium's 0x0F00 nibble: nothing else sets it
/// between a redirect and the device's egress.
pub const MARK_ROUTED: u32 = 0x5745_0000;
