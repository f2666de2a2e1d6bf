//! Address ranges in host-local's shape, and the arithmetic over them.

use std::{fmt, net::IpAddr};

use ipnetwork::IpNetwork;

/// One contiguous range inside a subnet. `start..=end` never includes the
/// network address, the IPv4 broadcast address or the gateway (the allocator
/// skips the gateway; the bounds exclude the other two).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

/// Ranges that together give one address to each attachment (one per family
/// in a dual-stack setup); tried in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl Range {
    /// First and last addresses an allocation may use by default: host-local's
    /// `.1` upwards, IPv4's broadcast excluded.
    pub fn default_bounds(subnet: IpNetwork) -> (IpAddr, IpAddr) {
        let net = to_u128(subnet.network());
        let last = match subnet {
            IpNetwork::V4(n) => to_u128(n.broadcast().into()) - 1,
            IpNetwork::V6(n) => to_u128(n.broadcast().into()),
        };
        (
            from_u128(net + 1, subnet.is_ipv6()),
            from_u128(last, subnet.is_ipv6()),
        )
    }

    /// The default gateway: the subnet's first usable address.
    pub fn default_gateway(subnet: IpNetwork) -> IpAddr {
        from_u128(to_u128(subnet.network()) + 1, subnet.is_ipv6())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4()
            && to_u128(self.start) <= to_u128(ip)
            && to_u128(ip) <= to_u128(self.end)
    }

    /// Number of addresses in `start..=end`.
    pub fn size(&self) -> u128 {
        to_u128(self.end) - to_u128(self.start) + 1
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (start, end) = Range::default_bounds(self.subnet);
        if (start, end) == (self.start, self.end) {
            write!(f, "{}", self.subnet)
        } else {
            write!(f, "{} ({}-{})", self.subnet, self.start, self.end)
        }
    }
}

impl RangeSet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|r| r.contains(ip))
    }

    pub fn range_of(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    /// Every candidate address in order, starting right after `after` when it is
    /// in the set (round robin), wrapping around once.
    pub fn candidates(&self, after: Option<IpAddr>) -> impl Iterator<Item = IpAddr> + '_ {
        // Position of the cursor as (range index, offset in range).
        let start = after.and_then(|ip| {
            self.0
                .iter()
                .enumerate()
                .find_map(|(i, r)| r.contains(ip).then(|| (i, to_u128(ip) - to_u128(r.start) + 1)))
        });
        let (first_range, first_off) = start.unwrap_or((0, 0));
        let n = self.0.len();
        // Walk ranges first_range.., then wrap to 0..=first_range (the tail of
        // first_range before the cursor comes last).
        let steps = if n == 0 { 0 } else { n + 1 };
        (0..steps).flat_map(move |step| {
            let i = (first_range + step) % n;
            let r = &self.0[i];
            let (lo, hi) = if step == 0 {
                (first_off, r.size())
            } else if step == n {
                (0, first_off)
            } else {
                (0, r.size())
            };
            let base = to_u128(r.start);
            let v6 = r.start.is_ipv6();
            (lo..hi).map(move |off| from_u128(base + off, v6))
        })
    }

    /// How the set is named in messages: `10.244.1.0/24` or several joined.
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    }
}

pub fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(v.into())
    } else {
        // Callers stay inside an IPv4 subnet, so the value fits in 32 bits.
        IpAddr::V4(u32::try_from(v).unwrap_or(u32::MAX).into())
    }
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test should fail loudly on the first surprise"
)]
mod tests {
    use super::*;

    fn range(subnet: &str) -> Range {
        let subnet: IpNetwork = subnet.parse().unwrap();
        let (start, end) = Range::default_bounds(subnet);
        Range {
            subnet,
            start,
            end,
            gateway: Range::default_gateway(subnet),
        }
    }

    #[test]
    fn bounds_skip_network_and_broadcast() {
        let r = range("10.0.0.0/29");
        assert_eq!(r.start, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(r.end, "10.0.0.6".parse::<IpAddr>().unwrap());
        assert_eq!(r.gateway, "10.0.0.1".parse::<IpAddr>().unwrap());
        let r6 = range("fd00::/126");
        assert_eq!(r6.end, "fd00::3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn candidates_wrap_after_cursor() {
        let set = RangeSet(vec![range("10.0.0.0/29")]);
        let all: Vec<String> = set
            .candidates(Some("10.0.0.4".parse().unwrap()))
            .map(|i| i.to_string())
            .collect();
        assert_eq!(
            all,
            [
                "10.0.0.5", "10.0.0.6", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"
            ]
        );
        let fresh: Vec<String> = set.candidates(None).map(|i| i.to_string()).collect();
        assert_eq!(
            fresh,
            [
                "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"
            ]
        );
    }

    #[test]
    fn candidates_span_ranges() {
        let set = RangeSet(vec![range("10.0.0.0/30"), range("10.0.1.0/30")]);
        let all: Vec<String> = set
            .candidates(Some("10.0.0.2".parse().unwrap()))
            .map(|i| i.to_string())
            .collect();
        assert_eq!(all, ["10.0.1.1", "10.0.1.2", "10.0.0.1", "10.0.0.2"]);
    }
}
