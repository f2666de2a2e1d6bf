//! Connection tracking of translated flows.
//!
//! A translated flow has two entries: `CT_OUT`, keyed by the client's tuple as the
//! client sends it (to the frontend), and `CT_IN`, keyed by the backend's reply as
//! the backend sends it. Only the `CT_OUT` entry carries the flow's lifetime: the
//! reply path refreshes it too, so a flow lives while either side talks, and the
//! agent's GC can judge a pair by one entry.

use weir_common::{
    CT_F_CLOSING, CT_F_DATAGRAM, CT_F_RESET, CT_LIFETIME_DATAGRAM, CT_LIFETIME_TCP, CT_LIFETIME_TCP_CLOSING,
    CT_LIFETIME_TCP_SYN, CtKey, CtValue, IPPROTO_TCP,
};

use super::maps::CONNTRACK;
use crate::packet::{Family, Flow, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

const NS: u64 = 1_000_000_000;

/// Writes the key of `flow`'s tuple in place (also into map memory: see
/// `lb::track`).
#[inline(always)]
pub fn fill_key<F: Family>(k: &mut CtKey, flow: &Flow<F>, dir: u8) {
    F::widen(&flow.saddr, &mut k.saddr);
    F::widen(&flow.daddr, &mut k.daddr);
    k.sport = flow.sport;
    k.dport = flow.dport;
    k.proto = flow.proto;
    k.family = F::AF;
    k.dir = dir;
    k._pad = 0;
}

/// The live `CT_OUT` entry of this tuple, if any.
#[inline(always)]
pub fn lookup(key: &CtKey, now: u64) -> Option<*mut CtValue> {
    let entry = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: a pointer into the map's value, valid for this program run.
    if unsafe { (*entry).expires_ns } > now {
        Some(entry)
    } else {
        None
    }
}

/// A SYN on an entry whose connection has closed: a new connection that reuses
/// the tuple, to be load-balanced afresh (as Cilium does), not sent to a backend
/// that may have left the service since.
#[inline(always)]
pub fn is_reuse<F: Family>(entry: *mut CtValue, flow: &Flow<F>) -> bool {
    // SAFETY: a pointer into the map's value, valid for this program run.
    flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && unsafe { (*entry).flags } & CT_F_CLOSING != 0
}

/// Extends a flow's life after a packet, by protocol and what the packet says.
#[inline(always)]
pub fn refresh<F: Family>(entry: *mut CtValue, flow: &Flow<F>, now: u64) {
    // SAFETY: as in `lookup`; concurrent updates of these two fields from other
    // CPUs race benignly (the later writer wins, both values are valid).
    unsafe {
        if flow.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            (*entry).flags |= CT_F_CLOSING;
        }
        if flow.tcp_flags & TCP_RST != 0 {
            (*entry).flags |= CT_F_RESET;
        }
        (*entry).expires_ns = now + lifetime(flow, (*entry).flags & CT_F_CLOSING != 0) * NS;
    }
}

/// How long a flow lives after this packet (`closing`: a FIN or RST was seen);
/// policy's conntrack keeps its verdicts as long.
#[inline(always)]
pub fn lifetime<F: Family>(flow: &Flow<F>, closing: bool) -> u64 {
    if flow.proto != IPPROTO_TCP {
        CT_LIFETIME_DATAGRAM
    } else if closing {
        CT_LIFETIME_TCP_CLOSING
    } else if flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        CT_LIFETIME_TCP_SYN
    } else {
        CT_LIFETIME_TCP
    }
}

/// Flags of a new entry for this flow.
#[inline(always)]
pub fn new_flags<F: Family>(flow: &Flow<F>) -> u8 {
    if flow.proto == IPPROTO_TCP {
        0
    } else {
        CT_F_DATAGRAM
    }
}
