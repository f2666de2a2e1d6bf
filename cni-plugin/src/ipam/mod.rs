//! IP address management: the built-in allocator over host-local-shaped ranges,
//! its stores, and delegation to another IPAM plugin.
//!
//! Allocation: one address per range set; an attachment (container id + ifname)
//! that already holds an address in a set gets it again (idempotent ADD);
//! otherwise the set's candidates are tried round robin from just after the last
//! reserved address, skipping the gateway. The caller holds the store's lock for
//! the whole operation.

pub mod delegate;
pub mod disk;
pub mod range;
pub mod store;

use std::{collections::HashSet, net::IpAddr, path::PathBuf};

use range::{Range, RangeSet};
use store::Store;

use crate::spec::Attachment;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address in range {range}")]
    Exhausted { range: String },
    #[error("IPAM store: {op} {}: {source}", path.display())]
    Store {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An address handed to an attachment, with the range it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ip: IpAddr,
    pub range: Range,
}

pub fn allocate(
    store: &mut dyn Store,
    sets: &[RangeSet],
    owner: &Attachment,
) -> Result<Vec<Lease>, IpamError> {
    let held: Vec<IpAddr> = store
        .allocations()?
        .into_iter()
        .filter(|(_, a)| a == owner)
        .map(|(ip, _)| ip)
        .collect();
    let mut leases = Vec::with_capacity(sets.len());
    let mut fresh = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        if let Some((ip, range)) = held.iter().find_map(|ip| set.range_of(*ip).map(|r| (*ip, r))) {
            leases.push(Lease {
                ip,
                range: range.clone(),
            });
            continue;
        }
        match reserve_in_set(store, set, i, owner) {
            Ok(lease) => {
                fresh.push(lease.ip);
                leases.push(lease);
            }
            Err(e) => {
                // All or nothing: a dual-stack pod must not keep half its addresses.
                for ip in fresh {
                    let _ = store.release(ip);
                }
                return Err(e);
            }
        }
    }
    Ok(leases)
}

fn reserve_in_set(
    store: &mut dyn Store,
    set: &RangeSet,
    index: usize,
    owner: &Attachment,
) -> Result<Lease, IpamError> {
    let after = store.last_reserved(index)?;
    for ip in set.candidates(after) {
        let Some(range) = set.range_of(ip) else { continue };
        if ip == range.gateway {
            continue;
        }
        if store.reserve(owner, ip, index)? {
            return Ok(Lease {
                ip,
                range: range.clone(),
            });
        }
    }
    Err(IpamError::Exhausted {
        range: set.describe(),
    })
}

/// Frees every address `owner` holds; returns them.
pub fn release(store: &mut dyn Store, owner: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
    let mut freed = Vec::new();
    for (ip, a) in store.allocations()? {
        if &a == owner {
            store.release(ip)?;
            freed.push(ip);
        }
    }
    Ok(freed)
}

/// GC: frees every allocation whose owner is not among `valid`; returns them.
pub fn gc(store: &mut dyn Store, valid: &[Attachment]) -> Result<Vec<(IpAddr, Attachment)>, IpamError> {
    let valid: HashSet<&Attachment> = valid.iter().collect();
    let mut freed = Vec::new();
    for (ip, a) in store.allocations()? {
        if !valid.contains(&a) {
            store.release(ip)?;
            freed.push((ip, a));
        }
    }
    Ok(freed)
}

/// The first range set with no free address left, if any (for STATUS).
pub fn exhausted_set<'s>(store: &dyn Store, sets: &'s [RangeSet]) -> Result<Option<&'s RangeSet>, IpamError> {
    let taken: HashSet<IpAddr> = store.allocations()?.into_iter().map(|(ip, _)| ip).collect();
    for set in sets {
        // At most |taken| + 1 candidates can be taken or the gateway, so looking
        // that far suffices (and keeps an IPv6 /64 cheap).
        let free = set
            .candidates(None)
            .take(taken.len() + 2)
            .any(|ip| !taken.contains(&ip) && set.range_of(ip).is_some_and(|r| r.gateway != ip));
        if !free {
            return Ok(Some(set));
        }
    }
    Ok(None)
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test should fail loudly on the first surprise"
)]
mod tests {
    use ipnetwork::IpNetwork;

    use super::{store::MemStore, *};

    fn set(subnet: &str) -> RangeSet {
        let subnet: IpNetwork = subnet.parse().unwrap();
        let (start, end) = Range::default_bounds(subnet);
        RangeSet(vec![Range {
            subnet,
            start,
            end,
            gateway: Range::default_gateway(subnet),
        }])
    }

    fn owner(id: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn one(store: &mut MemStore, sets: &[RangeSet], id: &str) -> IpAddr {
        allocate(store, sets, &owner(id)).unwrap()[0].ip
    }

    #[test]
    fn sequential_skipping_gateway() {
        let sets = [set("10.0.0.0/24")];
        let mut s = MemStore::default();
        assert_eq!(one(&mut s, &sets, "a"), ip("10.0.0.2"));
        assert_eq!(one(&mut s, &sets, "b"), ip("10.0.0.3"));
        assert_eq!(one(&mut s, &sets, "c"), ip("10.0.0.4"));
    }

    #[test]
    fn custom_gateway_is_skipped_and_first_address_used() {
        let mut sets = [set("10.0.0.0/29")];
        sets[0].0[0].gateway = ip("10.0.0.6");
        let mut s = MemStore::default();
        let got: Vec<IpAddr> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|id| one(&mut s, &sets, id))
            .collect();
        assert_eq!(
            got,
            ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"].map(ip)
        );
        let err = allocate(&mut s, &sets, &owner("f")).unwrap_err();
        assert_eq!(err.to_string(), "no free address in range 10.0.0.0/29");
    }

    #[test]
    fn network_broadcast_gateway_never_handed_out_and_exhaustion_names_range() {
        let sets = [set("10.244.1.0/30")];
        let mut s = MemStore::default();
        assert_eq!(one(&mut s, &sets, "a"), ip("10.244.1.2"));
        let err = allocate(&mut s, &sets, &owner("b")).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { .. }));
        assert_eq!(err.to_string(), "no free address in range 10.244.1.0/30");
        assert_eq!(
            crate::Error::from(err).code(),
            crate::error::codes::IPAM_EXHAUSTED
        );
    }

    #[test]
    fn range_start_and_end() {
        let mut sets = [set("10.0.0.0/24")];
        sets[0].0[0].start = ip("10.0.0.10");
        sets[0].0[0].end = ip("10.0.0.11");
        let mut s = MemStore::default();
        assert_eq!(one(&mut s, &sets, "a"), ip("10.0.0.10"));
        assert_eq!(one(&mut s, &sets, "b"), ip("10.0.0.11"));
        let err = allocate(&mut s, &sets, &owner("c")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free address in range 10.0.0.0/24 (10.0.0.10-10.0.0.11)"
        );
    }

    #[test]
    fn idempotent_for_same_attachment() {
        let sets = [set("10.0.0.0/24")];
        let mut s = MemStore::default();
        let a = one(&mut s, &sets, "a");
        assert_eq!(one(&mut s, &sets, "a"), a);
        assert_eq!(s.ips.len(), 1);
        // Another ifname of the same container is another attachment.
        let other = Attachment {
            container_id: "a".into(),
            ifname: "net1".into(),
        };
        assert_ne!(allocate(&mut s, &sets, &other).unwrap()[0].ip, a);
    }

    #[test]
    fn release_and_round_robin_after_last_reserved() {
        let sets = [set("10.0.0.0/29")];
        let mut s = MemStore::default();
        let a = one(&mut s, &sets, "a");
        let b = one(&mut s, &sets, "b");
        assert_eq!((a, b), (ip("10.0.0.2"), ip("10.0.0.3")));
        assert_eq!(release(&mut s, &owner("a")).unwrap(), vec![a]);
        assert!(release(&mut s, &owner("a")).unwrap().is_empty());
        // Not .2 again: round robin continues after the last reserved (.3).
        assert_eq!(one(&mut s, &sets, "c"), ip("10.0.0.4"));
        assert_eq!(one(&mut s, &sets, "d"), ip("10.0.0.5"));
        assert_eq!(one(&mut s, &sets, "e"), ip("10.0.0.6"));
        // Wraps around, skipping the gateway .1, to the freed .2.
        assert_eq!(one(&mut s, &sets, "f"), ip("10.0.0.2"));
        assert!(exhausted_set(&s, &sets).unwrap().is_some());
    }

    #[test]
    fn dual_stack_one_address_per_set() {
        let sets = [set("10.0.0.0/24"), set("fd00:10:244:1::/64")];
        let mut s = MemStore::default();
        let leases = allocate(&mut s, &sets, &owner("a")).unwrap();
        assert_eq!(
            leases.iter().map(|l| l.ip).collect::<Vec<_>>(),
            [ip("10.0.0.2"), ip("fd00:10:244:1::2")]
        );
        assert_eq!(leases[1].range.gateway, ip("fd00:10:244:1::1"));
        assert_eq!(allocate(&mut s, &sets, &owner("a")).unwrap(), leases);
    }

    #[test]
    fn dual_stack_failure_keeps_nothing() {
        let sets = [set("10.0.0.0/24"), set("10.1.0.0/30")];
        let mut s = MemStore::default();
        allocate(&mut s, &sets, &owner("a")).unwrap();
        assert!(allocate(&mut s, &sets, &owner("b")).is_err());
        assert_eq!(s.ips.len(), 2, "b's IPv4 address must be rolled back");
    }

    #[test]
    fn several_ranges_in_a_set_tried_in_order() {
        let mut sets = [set("10.0.0.0/30")];
        sets[0].0.push(set("10.0.1.0/30").0.remove(0));
        let mut s = MemStore::default();
        assert_eq!(one(&mut s, &sets, "a"), ip("10.0.0.2"));
        assert_eq!(one(&mut s, &sets, "b"), ip("10.0.1.2"));
        let err = allocate(&mut s, &sets, &owner("c")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free address in range 10.0.0.0/30, 10.0.1.0/30"
        );
    }

    #[test]
    fn gc_keeps_only_valid_attachments() {
        let sets = [set("10.0.0.0/24")];
        let mut s = MemStore::default();
        for id in ["a", "b", "c"] {
            one(&mut s, &sets, id);
        }
        let freed = gc(&mut s, &[owner("b")]).unwrap();
        assert_eq!(freed.len(), 2);
        let left: Vec<Attachment> = s.ips.values().cloned().collect();
        assert_eq!(left, [owner("b")]);
        assert!(exhausted_set(&s, &sets).unwrap().is_none());
    }
}
