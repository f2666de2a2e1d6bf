//! Is a new flow's destination a frontend, which entry serves its client, and
//! what happens when that entry has no backend: the steps every hook takes
//! for a new flow (the pods' and the node devices' TC programs, the socket
//! hooks), written once.

use aya_ebpf::maps::lpm_trie::Key;
use weir_common::{
    NodeAddrs, Reason, SCOPE_EXTERNAL, SCOPE_INTERNAL, SOURCE_RANGE_PREFIX_BITS, SVC_F_DROP_EMPTY,
    SVC_F_SOURCE_RANGE, SVC_F_TWO_SCOPES, ServiceKey, ServiceValue, SourceRangeKey,
};

use super::maps::{SERVICES, SOURCE_RANGES};
use crate::packet::{Family, Flow};

/// The key of a frontend's service entry (slot 0, external scope) on
/// `port/proto`, its address left for the caller to write in place.
#[inline(always)]
pub fn key<F: Family>(port: u16, proto: u8) -> ServiceKey {
    ServiceKey {
        addr: [0; 16],
        port,
        slot: 0,
        proto,
        family: F::AF,
        scope: SCOPE_EXTERNAL,
        _pad: 0,
    }
}

/// [`key`] of a flow's destination.
#[inline(always)]
pub fn of_flow<F: Family>(flow: &Flow<F>) -> ServiceKey {
    let mut key = key::<F>(flow.dport, flow.proto);
    F::widen(&flow.daddr, &mut key.addr);
    key
}

/// The entry at `key`: with the key as [`key`] makes it, the frontend's entry
/// as a client outside the cluster gets it.
#[inline(always)]
pub fn lookup(key: &ServiceKey) -> Option<ServiceValue> {
    // SAFETY: a pointer into the map's value, valid for this run.
    unsafe { SERVICES.get(key) }.copied()
}

/// The entry a client inside the cluster (a pod, the node itself) gets: where
/// a frontend's traffic policies differ by client (externalTrafficPolicy
/// Local), its cluster-wide twin. `key` is left naming the entry used.
#[inline(always)]
pub fn inside(key: &mut ServiceKey, svc: ServiceValue) -> Result<ServiceValue, Reason> {
    if !two_scopes(&svc) {
        return Ok(svc);
    }
    key.scope = SCOPE_INTERNAL;
    lookup(key).ok_or(Reason::BackendMissing)
}

/// Whether the entry has a cluster-wide twin ([`inside`]).
#[inline(always)]
pub fn two_scopes(svc: &ServiceValue) -> bool {
    svc.flags & SVC_F_TWO_SCOPES != 0
}

/// What a frontend without a usable backend does to a new flow.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Empty {
    /// Its endpoints are all on other nodes and its traffic policy is Local:
    /// dropped, as kube-proxy does (a load balancer, told by the health check,
    /// goes elsewhere; a pod's connection times out).
    Drop,
    /// No endpoint at all: refused (ICMP port unreachable, `ECONNREFUSED`),
    /// never silence.
    Reject,
}

/// `None` when the entry has backends.
#[inline(always)]
pub fn empty(svc: &ServiceValue) -> Option<Empty> {
    if svc.count != 0 {
        None
    } else if svc.flags & SVC_F_DROP_EMPTY != 0 {
        Some(Empty::Drop)
    } else {
        Some(Empty::Reject)
    }
}

/// Whether the frontend admits a new flow from `saddr`: always,
/// unless its Service has `loadBalancerSourceRanges`, then only from a source
/// in them (kube-proxy's firewall chain).
#[inline(always)]
pub fn admits<F: Family>(svc: &ServiceValue, saddr: &F::Addr) -> bool {
    if svc.flags & SVC_F_SOURCE_RANGE == 0 {
        return true;
    }
    let mut key = Key::new(
        SOURCE_RANGE_PREFIX_BITS + F::BITS,
        SourceRangeKey {
            rev_nat_id: svc.rev_nat_id,
            family: F::AF,
            addr: [0; 16],
            _pad: [0; 3],
        },
    );
    F::widen(saddr, &mut key.data.addr);
    SOURCE_RANGES.get(&key).is_some()
}

/// The node's address of the family: what NodePorts are dialled on from the
/// node itself, and what flows to remote endpoints are source-NATed to (all
/// zero: none).
#[inline(always)]
pub fn node_addr<F: Family>(node: &NodeAddrs) -> &[u8; 16] {
    node_addr_of::<F>(&node.v4, &node.v6)
}

/// Of a pair of addresses (as [`NodeAddrs`] and `DeviceAddrs` hold them), the
/// one of family `F`.
#[inline(always)]
pub fn node_addr_of<'a, F: Family>(v4: &'a [u8; 16], v6: &'a [u8; 16]) -> &'a [u8; 16] {
    if F::AF == weir_common::AF_INET { v4 } else { v6 }
}
