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
