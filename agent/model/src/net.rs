//! Addresses and protocols, between Kubernetes strings and the map ABI.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Serialize;
use weir_common::{AF_INET, AF_INET6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};

/// A Service port protocol. Kubernetes defaults a missing protocol to TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// Parses a `protocol` field; `None` is TCP (the API server's default).
    pub fn parse(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(_) => None,
        }
    }

    pub const fn ipproto(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
            Protocol::Sctp => IPPROTO_SCTP,
        }
    }

    pub const fn from_ipproto(proto: u8) -> Option<Self> {
        match proto {
            IPPROTO_TCP => Some(Protocol::Tcp),
            IPPROTO_UDP => Some(Protocol::Udp),
            IPPROTO_SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An address family, as the dual-stack rules need it: an IPv4 frontend only ever
/// gets IPv4 backends and vice versa.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Family {
    IPv4,
    IPv6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::IPv4,
            IpAddr::V6(_) => Family::IPv6,
        }
    }

    /// `AF_INET`/`AF_INET6`.
    pub const fn af(self) -> u8 {
        match self {
            Family::IPv4 => AF_INET,
            Family::IPv6 => AF_INET6,
        }
    }

    /// An EndpointSlice `addressType`; `FQDN` (and anything else) is not an IP family.
    pub fn from_address_type(address_type: &str) -> Option<Self> {
        match address_type {
            "IPv4" => Some(Family::IPv4),
            "IPv6" => Some(Family::IPv6),
            _ => None,
        }
    }
}

/// A port number as the API writes it (`int32`), if it is one: 1-65535. Ports
/// of Services, EndpointSlices, containers and NetworkPolicies alike.
pub(crate) fn port_number(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p > 0)
}

/// Parses an IP address as Kubernetes writes them (no brackets, no zone).
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    text.trim().parse().ok()
}

/// The ABI form of an address: network byte order in a 16-byte array, IPv4 in the
/// first 4 bytes with the rest zero (as `EndpointKey::v4`), plus its `AF_*` family.
pub fn to_abi(ip: IpAddr) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(v4) => {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&v4.octets());
            (addr, AF_INET)
        }
        IpAddr::V6(v6) => (v6.octets(), AF_INET6),
    }
}

/// The inverse of [`to_abi`]; `None` for an unknown family.
pub fn from_abi(addr: [u8; 16], family: u8) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(addr))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_addresses_follow_the_endpoint_key_layout() {
        let v4: IpAddr = "10.96.0.10".parse().expect("ip");
        let (addr, family) = to_abi(v4);
        assert_eq!(addr, weir_common::EndpointKey::v4([10, 96, 0, 10]).addr);
        assert_eq!(family, AF_INET);
        assert_eq!(from_abi(addr, family), Some(v4));
        let v6: IpAddr = "fd00::a".parse().expect("ip");
        assert_eq!(from_abi(to_abi(v6).0, AF_INET6), Some(v6));
        assert_eq!(from_abi(addr, 0), None);
    }

    #[test]
    fn protocol_defaults_to_tcp() {
        assert_eq!(Protocol::parse(None), Some(Protocol::Tcp));
        assert_eq!(
            Protocol::parse(Some("SCTP")).map(Protocol::ipproto),
            Some(IPPROTO_SCTP)
        );
        assert_eq!(Protocol::parse(Some("tcp")), None);
    }
}
