//! Connection tracking of translated flows.
//!
//! A translated flow has two entries: `CT_OUT`, keyed by the client's tuple as the
//! client sends it (to the frontend), and `CT_IN`, keyed by the backend's reply as
//! the backend sends it. Only the `CT_OUT` entry carries the flow's lifetime: the
//! reply path refreshes it too, so a flow lives while either side talks, and the
//! agent's GC can judge a pair by one entry.

use weir_common::{
    AF_INET, CT_F_CLOSING, CT_F_DATAGRAM, CT_IN, CT_LIFETIME_DATAGRAM, CT_LIFETIME_TCP, CT_LIFETIME_TCP_CLOSING,
    CT_LIFETIME_TCP_SYN, CT_OUT, CtKey, CtValue, IPPROTO_TCP,
};

use super::maps::CONNTRACK;
use crate::packet::{Flow4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, addr16};

const NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn key(saddr: [u8; 4], daddr: [u8; 4], sport: u16, dport: u16, proto: u8, dir: u8) -> CtKey {
    CtKey { saddr: addr16(saddr), daddr: addr16(daddr), sport, dport, proto, family: AF_INET, dir, _pad: 0 }
}

/// Writes a key in place (into map memory: see `lb::track`).
#[inline(always)]
pub fn fill_key(k: &mut CtKey, saddr: [u8; 4], daddr: [u8; 4], sport: u16, dport: u16, proto: u8, dir: u8) {
    k.saddr = addr16(saddr);
    k.daddr = addr16(daddr);
    k.sport = sport;
    k.dport = dport;
    k.proto = proto;
    k.family = AF_INET;
    k.dir = dir;
    k._pad = 0;
}

#[inline(always)]
pub fn out_key(flow: &Flow4) -> CtKey {
    key(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto, CT_OUT)
}

#[inline(always)]
pub fn in_key(flow: &Flow4) -> CtKey {
    key(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto, CT_IN)
}

/// The live `CT_OUT` entry of this tuple, if any.
#[inline(always)]
pub fn lookup(key: &CtKey, now: u64) -> Option<*mut CtValue> {
    let entry = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: a pointer into the map's value, valid for this program run.
    if unsafe { (*entry).expires_ns } > now { Some(entry) } else { None }
}

/// A SYN on an entry whose connection has closed: a new connection that reuses
/// the tuple, to be load-balanced afresh (as Cilium does), not sent to a backend
/// that may have left the service since.
#[inline(always)]
pub fn is_reuse(entry: *mut CtValue, flow: &Flow4) -> bool {
    // SAFETY: a pointer into the map's value, valid for this program run.
    flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && unsafe { (*entry).flags } & CT_F_CLOSING != 0
}

/// Extends a flow's life after a packet, by protocol and what the packet says.
#[inline(always)]
pub fn refresh(entry: *mut CtValue, flow: &Flow4, now: u64) {
    // SAFETY: as in `lookup`; concurrent updates of these two fields from other
    // CPUs race benignly (the later writer wins, both values are valid).
    unsafe {
        if flow.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            (*entry).flags |= CT_F_CLOSING;
        }
        (*entry).expires_ns = now + lifetime(flow, (*entry).flags) * NS;
    }
}

#[inline(always)]
pub fn lifetime(flow: &Flow4, flags: u8) -> u64 {
    if flow.proto != IPPROTO_TCP {
        CT_LIFETIME_DATAGRAM
    } else if flags & CT_F_CLOSING != 0 {
        CT_LIFETIME_TCP_CLOSING
    } else if flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        CT_LIFETIME_TCP_SYN
    } else {
        CT_LIFETIME_TCP
    }
}

/// Flags of a new entry for this flow.
#[inline(always)]
pub fn new_flags(flow: &Flow4) -> u8 {
    if flow.proto == IPPROTO_TCP { 0 } else { CT_F_DATAGRAM }
}
