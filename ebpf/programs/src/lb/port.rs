//! The node's source ports for the flows it source-NATs to its own address:
//! external flows to remote endpoints (`external`) and pods' flows leaving the
//! cluster (`masq`). One allocator for both: a port is taken when the reply
//! entry (`CT_IN`, peer -> node address:port) exists and its flow lives, so
//! the two kinds never collide, and every port lies outside the node's
//! ephemeral range, where its own connections' ports are.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use weir_common::{CT_F_RESET, CT_IN, DEFAULT_EPHEMERAL, NodeAddrs, Reason, SNAT_PORT_FIRST, Scratch};

use super::{
    ct::{self, Tuple},
    maps::CONNTRACK,
};
use crate::packet::{Family, Flow};

/// Fewer free ports than this outside the node's ephemeral range: use them all.
const SNAT_MIN_PORTS: u16 = 4_096;
/// Attempts at a free source port before the flow is refused.
const SNAT_TRIES: usize = 8;

/// A source port no live flow from `addr` to `peer:peer_port` uses (network order),
/// outside the node's ephemeral range. A port whose flow was reset, or has
/// expired before the GC came by, is free: its entries are dropped, so that the
/// port serves at once, as a netfilter conntrack entry in CLOSE state yields to
/// a new SYN. A FIN-closed flow keeps its port until its entry expires (10 s):
/// a half-closed connection still talks.
#[inline(always)]
pub fn free<F: Family>(
    s: &mut Scratch,
    flow: &Flow<F>,
    peer: &[u8; 16],
    peer_port: u16,
    node: &NodeAddrs,
    addr: &[u8; 16],
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
    // The peer's reply to the node's address, the port still to choose.
    ct::fill_key(&mut s.in_key, flow, Tuple::AsReply, CT_IN);
    let k = &mut s.in_key;
    // The first port tried is the client's own (address, port) hashed: one
    // client port keeps meeting the peer on one node port, as netfilter keeps
    // the client's port where it can. The peer's TIME_WAIT of an earlier flow
    // on that tuple then sees the same client's TCP timestamps, which grow,
    // and takes the new SYN; another client's (other offsets) it would refuse
    // (PAWS) and the SYN would wait for its retransmission. Then at random.
    let mut h = u32::from(k.dport).wrapping_mul(0x9e37_79b1);
    for c in k.daddr.chunks_exact(4) {
        h = (h ^ u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
    }
    k.saddr.copy_from_slice(peer);
    k.daddr.copy_from_slice(addr);
    k.sport = peer_port;
    for i in 0..SNAT_TRIES {
        let r = if i == 0 {
            h
        } else {
            // SAFETY: no preconditions.
            unsafe { bpf_get_prandom_u32() }
        } % span;
        let port = if r < below {
            SNAT_PORT_FIRST + r as u16
        } else {
            hi + 1 + (r - below) as u16
        };
        s.in_key.dport = port.to_be();
        // SAFETY: valid for this run.
        let Some(taken) = (unsafe { CONNTRACK.get(&s.in_key) }) else {
            return Ok(port.to_be());
        };
        s.out_key = s.in_key.out_partner(taken);
        // SAFETY: valid for this run.
        let live = ct::lookup(&s.out_key, now).is_some_and(|out| unsafe { (*out).flags } & CT_F_RESET == 0);
        if !live {
            let _ = CONNTRACK.remove(&s.out_key);
            return Ok(port.to_be());
        }
    }
    Err(Reason::NoSnat)
}
