//! Connection tracking of translated flows.
//!
//! A translated flow has two entries: `CT_OUT`, keyed by the client's tuple as the
//! client sends it (to the frontend), and `CT_IN`, keyed by the backend's reply as
//! the backend sends it. Only the `CT_OUT` entry carries the flow's lifetime: the
//! reply path refreshes it too, so a flow lives while either side talks, and the
//! agent's GC can judge a pair by one entry.

use weir_common::{
    CT_F_CLOSING, CT_F_DATAGRAM, CT_F_RESET, CT_F_SNAT, CT_FIN_BOTH, CT_FIN_CLIENT, CT_FIN_PEER, CT_IN,
    CT_LIFETIME_DATAGRAM, CT_LIFETIME_TCP, CT_LIFETIME_TCP_CLOSING, CT_LIFETIME_TCP_SYN,
    CT_LIFETIME_TCP_TIME_WAIT, CT_OUT, CtKey, CtValue, IPPROTO_TCP, IPPROTO_UDP, Scratch,
};

use super::maps::CONNTRACK;
use crate::packet::{Family, Flow, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, wide_eq};

const NS: u64 = 1_000_000_000;

/// Which way a key reads a flow's tuple.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tuple {
    /// As the packet goes.
    AsSent,
    /// As its reply would go: addresses and ports swapped.
    AsReply,
}

/// Writes the key of `flow`'s tuple in place (also into map memory: see
/// `lb::track`), for the load balancer's conntrack (`dir`: `CT_OUT`, `CT_IN`)
/// and policy's (`CT_OUT`). The other key filled from a packet is the one an
/// ICMP error quotes (`packet::quoted_key`), with the same `dir`.
#[inline(always)]
pub fn fill_key<F: Family>(k: &mut CtKey, flow: &Flow<F>, tuple: Tuple, dir: u8) {
    if tuple == Tuple::AsReply {
        F::widen(&flow.daddr, &mut k.saddr);
        F::widen(&flow.saddr, &mut k.daddr);
        k.sport = flow.dport;
        k.dport = flow.sport;
    } else {
        F::widen(&flow.saddr, &mut k.saddr);
        F::widen(&flow.daddr, &mut k.daddr);
        k.sport = flow.sport;
        k.dport = flow.dport;
    }
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

/// The live `CT_OUT` entry of `key`'s tuple (its `dir` set so), if any.
#[inline(always)]
pub fn forward(key: &mut CtKey, now: u64) -> Option<&'static CtValue> {
    key.dir = CT_OUT;
    let entry = lookup(key, now)?;
    // SAFETY: a pointer into the map's value, valid for this program run.
    Some(unsafe { &*entry })
}

/// A SYN on an entry whose connection has closed: a new connection that reuses
/// the tuple, to be load-balanced afresh (as Cilium does), not sent to a backend
/// that may have left the service since.
#[inline(always)]
pub fn is_reuse<F: Family>(entry: *mut CtValue, flow: &Flow<F>) -> bool {
    // SAFETY: a pointer into the map's value, valid for this program run.
    flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && unsafe { (*entry).flags } & CT_F_CLOSING != 0
}

/// Whether a live `CT_OUT` entry still sends its flow to the backend whose
/// reply entry is `reply_key` (the pair is a pair).
#[inline(always)]
pub fn answers(entry: *mut CtValue, reply_key: &CtKey) -> bool {
    // SAFETY: a pointer into the map's value, valid for this program run.
    let e = unsafe { &*entry };
    e.nat_port == reply_key.sport && wide_eq(&e.nat_addr, &reply_key.saddr)
}

/// A SYN-ACK on a closed flow's entry: the answer to a new connection that
/// reuses the tuple (a closed flow has no handshake left to answer).
#[inline(always)]
pub fn is_reopened<F: Family>(entry: *mut CtValue, flow: &Flow<F>) -> bool {
    // SAFETY: as in `answers`.
    flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK && unsafe { (*entry).flags } & CT_F_CLOSING != 0
}

/// A datagram the load balancer leaves alone (not to a frontend): if a
/// translated flow's replies have the tuple this direct flow's replies will
/// have (the client dialled a frontend, then the backend itself, from one
/// port), the direct flow takes the tuple: the translated flow's reply entry
/// goes, and its next datagram is load-balanced anew. TCP needs no such care:
/// a new connection's SYN-ACK shows itself ([`is_reopened`]).
#[inline(always)]
pub fn yield_reply_tuple<F: Family>(s: &mut Scratch, flow: &Flow<F>) {
    if flow.proto != IPPROTO_UDP {
        return;
    }
    fill_key(&mut s.in_key, flow, Tuple::AsReply, CT_IN);
    // SAFETY: valid for this run.
    if let Some(reply) = unsafe { CONNTRACK.get(&s.in_key) }
        // A source-NATed flow's replies go to the node's address: no pod's.
        && reply.flags & CT_F_SNAT == 0
    {
        s.out_key = s.in_key.out_partner(reply);
        let _ = CONNTRACK.remove(&s.in_key);
        // The forward entry too, unless the client's port has been sent to
        // another backend since (that flow lives on).
        if let Some(out) = CONNTRACK.get_ptr_mut(&s.out_key)
            && answers(out, &s.in_key)
        {
            let _ = CONNTRACK.remove(&s.out_key);
        }
    }
}

/// Who sent a packet of a tracked flow.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// The client, whose tuple keys the `CT_OUT` entry.
    Client,
    /// The backend (or a masqueraded flow's destination), answering.
    Peer,
}

/// Extends a flow's life after a packet from `by`, by protocol and what the
/// packet says.
#[inline(always)]
pub fn refresh<F: Family>(entry: *mut CtValue, flow: &Flow<F>, now: u64, by: Sender) {
    // SAFETY: as in `lookup`; concurrent updates of these fields from other
    // CPUs race benignly (the later writer wins, all values are valid; a FIN
    // bit lost to a race costs the port's early reuse, nothing else).
    unsafe {
        if flow.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            (*entry).flags |= CT_F_CLOSING;
        }
        if flow.tcp_flags & TCP_RST != 0 {
            (*entry).flags |= CT_F_RESET;
        }
        if flow.tcp_flags & TCP_FIN != 0 {
            (*entry).fins |= if by == Sender::Client {
                CT_FIN_CLIENT
            } else {
                CT_FIN_PEER
            };
        }
        let closing = (*entry).flags & CT_F_CLOSING != 0;
        let lifetime = if (*entry).flags & CT_F_SNAT != 0 && (*entry).fins == CT_FIN_BOTH {
            CT_LIFETIME_TCP_TIME_WAIT
        } else {
            lifetime(flow, closing)
        };
        (*entry).expires_ns = now + lifetime * NS;
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
