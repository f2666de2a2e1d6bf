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
/// passes it at once, clearing the mark. A whole 32-bit value, not a bit: the
/// node's netfilter (kube-proxy's 0x4000 and 0x8000 during a migration) reads
/// marks by their bits, and nothing else sets this value between a redirect
/// and the device's egress.
pub const MARK_ROUTED: u32 = 0x5745_4952;
