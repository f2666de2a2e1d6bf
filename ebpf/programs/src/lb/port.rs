//! The node's source ports for the flows it source-NATs to its own address:
//! external flows to remote endpoints (`external`) and pods' flows leaving the
//! cluster (`masq`). One allocator for both: a port is taken when the reply
//! entry (`CT_IN`, peer -> node address:port) exists and its flow lives, so
//! the two kinds never collide, and every port lies outside the node's
//! ephemeral range, where its own connections' ports are.

use weir_common::{
    CT_F_MASQ, CT_F_RESET, CT_FIN_BOTH, CT_IN, DEFAULT_EPHEMERAL, NodeAddrs, Reason, SNAT_PORT_FIRST, Scratch,
};

use super::{
    ct::{self, Tuple},
    maps::CONNTRACK,
};
use crate::packet::{Family, Flow};

/// Fewer free ports than this outside the node's ephemeral range: use them all.
const SNAT_MIN_PORTS: u16 = 4_096;
/// Candidate ports tried before the flow is refused.
const SNAT_TRIES: u32 = 8;

/// A source port for `flow` from `addr` to `peer:peer_port` (network order),
/// outside the node's ephemeral range, that no live flow uses.
///
/// The candidates are the client's (address, port) hashed, in a sequence of
/// its own, so that one client port keeps meeting the peer on one node port,
/// as netfilter keeps the client's own port where it can. A port is:
/// - free when no flow has it, or its flow was reset (no TIME_WAIT follows a
///   reset), or its entry has expired before the GC came by;
/// - held for the peer's TIME_WAIT once its flow has closed both ways (a FIN
///   from each side; `CT_LIFETIME_TCP_TIME_WAIT`): the peer takes a SYN on
///   that tuple only if its TCP timestamp is newer than the last one it had
///   from the tuple (PAWS), and Linux gives every connection a timestamp
///   offset of its own. A masqueraded flow's forward entry keeps its client's
///   latest timestamp: a held port whose previous client's is older than this
///   SYN's (`tsval`, 0: none) is free for it. If every candidate is live or
///   held, a held one is taken over rather than the packet dropped, as
///   netfilter reuses a TIME_WAIT tuple (the SYN may then wait for its
///   retransmission).
///
/// A port taken over loses its previous flow's forward entry, so that flow's
/// tuple is translated afresh if it ever sends again.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into the hot path: a struct of them would be built on its full stack"
)]
pub fn free<F: Family>(
    s: &mut Scratch,
    flow: &Flow<F>,
    peer: &[u8; 16],
    peer_port: u16,
    node: &NodeAddrs,
    addr: &[u8; 16],
    tsval: u32,
    now: u64,
) -> Result<u16, Reason> {
    let [lo, hi] = if node.ephemeral[0] == 0 {
        DEFAULT_EPHEMERAL
    } else {
        node.ephemeral
    };
    let lo = lo.max(SNAT_PORT_FIRST);
    let hi = hi.max(SNAT_PORT_FIRST - 1);
    let (mut below, mut above) = (u32::from(lo - SNAT_PORT_FIRST), u32::from(u16::MAX - hi));
    let mut hi = hi;
    // A node whose own connections take (nearly) every port: share them rather
    // than refuse; a port in use is still skipped below.
    if below + above < u32::from(SNAT_MIN_PORTS) {
        below = 0;
        above = u32::from(u16::MAX - SNAT_PORT_FIRST) + 1;
        hi = SNAT_PORT_FIRST - 1;
    }
    let span = below + above;
    if span == 0 {
        return Err(Reason::NoSnat);
    }
    // The first held candidate (0: none yet), kept in the scratch value, not
    // on a stack with no room left for it: `track` writes the field afresh.
    s.back.nat2_port = 0;
    let mut h = u32::from(flow.sport).wrapping_mul(0x9e37_79b1);
    F::widen(&flow.saddr, &mut s.in_key.saddr);
    for c in s.in_key.saddr.chunks_exact(4) {
        h = (h ^ u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
    }
    // The peer's reply to the node's address, the port still to choose.
    ct::fill_key(&mut s.in_key, flow, Tuple::AsReply, CT_IN);
    s.in_key.saddr.copy_from_slice(peer);
    s.in_key.daddr.copy_from_slice(addr);
    s.in_key.sport = peer_port;
    for i in 0..SNAT_TRIES {
        // The client's own sequence of candidates (a multiplicative hash of its
        // hash and the attempt), the same at every connection.
        let mut r = (h ^ i.wrapping_mul(0x27d4_eb2f)).wrapping_mul(0x9e37_79b1);
        r ^= r >> 15;
        let r = r % span;
        let port = if r < below {
            SNAT_PORT_FIRST + r as u16
        } else {
            hi + 1 + (r - below) as u16
        }
        .to_be();
        s.in_key.dport = port;
        // SAFETY: valid for this run.
        let Some(taken) = (unsafe { CONNTRACK.get(&s.in_key) }) else {
            return Ok(port);
        };
        s.out_key = s.in_key.out_partner(taken);
        let Some(out) = CONNTRACK.get_ptr(&s.out_key) else {
            return Ok(port);
        };
        // SAFETY: a pointer into the map's value, valid for this run.
        let e = unsafe { &*out };
        let closed = e.flags & CT_F_RESET != 0 || e.expires_ns <= now;
        let over = e.fins == CT_FIN_BOTH;
        // Serial-number order (RFC 7323): newer by less than half the space.
        let newer = tsval != 0
            && e.flags & CT_F_MASQ != 0
            && e.backend_id != 0
            && (tsval.wrapping_sub(e.backend_id) as i32) > 0;
        if closed || over && newer {
            let _ = CONNTRACK.remove(&s.out_key);
            return Ok(port);
        }
        if over && s.back.nat2_port == 0 {
            s.back.nat2_port = port;
        }
    }
    let held = s.back.nat2_port;
    if held == 0 {
        return Err(Reason::NoSnat);
    }
    s.in_key.dport = held;
    // SAFETY: valid for this run.
    if let Some(taken) = unsafe { CONNTRACK.get(&s.in_key) } {
        s.out_key = s.in_key.out_partner(taken);
        let _ = CONNTRACK.remove(&s.out_key);
    }
    Ok(held)
}
