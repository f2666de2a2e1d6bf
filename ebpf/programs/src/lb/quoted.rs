//! ICMP errors about flows the load balancer translated: a router's
//! "fragmentation needed" or "packet too big", a host's "port unreachable".
//! Such an error quotes the packet as it was sent, translated, and is
//! addressed to whoever sent that: a frontend or the node's own address and
//! port, where no socket knows it; or a client pod, about a backend it never
//! dialled. It is turned back into the error the flow's own end would have
//! had, as netfilter's NAT does for related ICMP, and sent there. Without
//! this, path MTU discovery fails for every flow the node translates (a
//! NodePort's endpoint never learns that its client's path is narrower, and
//! its large replies vanish on the way), and a Service's client never hears
//! that nothing listens behind it.
//!
//! The quoted packet, reversed, is the key of its flow's entry:
//! - A packet the backend's side sent (a reply; a request the node
//!   source-NATed, masqueraded or to a remote backend) quotes it as it left
//!   the backend, or the node: reversed, that is the flow's reply entry
//!   (`CT_IN`). The error goes the way the flow's replies go: from the
//!   frontend, to the client (source-NATed: `nat2_*`), about the packet the
//!   client sent to the frontend (`nat_*`; a masqueraded flow's "frontend" is
//!   its destination). A masqueraded pod's error keeps the router's address
//!   as its source, as netfilter leaves it.
//! - A reply the node sent for an external flow quotes the frontend as its
//!   source: reversed, the flow's forward entry (`CT_OUT`, `CT_F_EXTERNAL`).
//!   The error goes to the backend (`nat_*`), about its reply as it sent it:
//!   to the client or, source-NATed, to the node's address and port (`nat2_*`).
//!
//! Where: errors arriving on a node device ([`from_netdev`]: those to the
//! node, about what it sent); a local backend's own errors to an external
//! client, as they leave it; and errors reaching a client pod, on its veth
//! ([`at_pod`]), where that pod's replies are translated too when pods'
//! traffic goes through the host's stack, and where its policy judges the
//! error as it came. The quoted packet's own L4 checksum is left as it is:
//! receivers do not check it (a quote may be cut short).

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use weir_common::{
    CT_F_EXTERNAL, CT_F_HAIRPIN, CT_F_MASQ, CT_F_SNAT, CT_IN, CT_OUT, CtKey, CtValue, Reason, Scratch,
};

use super::{Lb, ct, external, maps::CONNTRACK, scratch};
use crate::{
    endpoints,
    metrics::Action,
    packet::{self, ETH_HLEN, Flow, ICMP_CSUM, ICMP_HLEN, ICMP_ID, wide_eq},
    policy::Side,
    route,
};

/// Where the parts of an ICMP error are.
struct Quote {
    /// The error's own checksum, which covers the quoted bytes as data.
    csum: usize,
    /// The quoted packet's IP header.
    ip: usize,
    /// The quoted packet's L4 header.
    l4: usize,
    /// The quoted packet's protocol.
    proto: u8,
}

/// An ICMP error on a node device's ingress, about what the node sent for a
/// flow it translated: rewritten and sent to the flow's own end. Anything
/// else passes.
#[inline(always)]
pub fn from_netdev<F: Lb>(ctx: &TcContext) -> Result<Action, Reason> {
    let pass = Ok(Action::forward(TC_ACT_OK));
    let p = packet::parse_any::<F, _>(ctx)?;
    if p.quoted == 0 {
        return pass;
    }
    let now = crate::clock::now();
    let s = scratch()?;
    // A quote too short to name a flow is no business of ours.
    let Ok(q) = quote::<F>(ctx, p.quoted, s) else {
        return pass;
    };
    let mut to = Flow::<F>::new();
    to.proto = p.flow.proto;
    if let Some(reply) = reply_entry(s, now)
        && reply.flags & CT_F_SNAT != 0
    {
        as_reply::<F>(ctx, &q, &p.flow, &s.in_key, reply, &mut to)?;
    } else if let Some(flow) = external_entry(s, now) {
        as_request::<F>(ctx, &q, &p.flow, &s.in_key, flow, &mut to)?;
    } else {
        return pass;
    }
    let pod = endpoints::veth(&endpoints::key::<F>(&to.daddr)).unwrap_or(0);
    external::deliver(ctx, &to, pod)
}

/// An ICMP error a pod sends (`side`: `Egress`) or receives (`Ingress`),
/// already judged by its policy, about a flow the load balancer translated
/// to a backend: made to name the frontend the client dialled. A backend's error to an external client is translated as it
/// leaves the backend, and routed out (it now comes from a node address); an
/// error to a client pod, as it reaches that pod. Anything else passes.
#[inline(always)]
pub fn at_pod<F: Lb>(ctx: &TcContext, outer: &Flow<F>, quoted: usize, side: Side) -> Result<Action, Reason> {
    let pass = Ok(Action::forward(TC_ACT_OK));
    let now = crate::clock::now();
    let s = scratch()?;
    let Ok(q) = quote::<F>(ctx, quoted, s) else {
        return pass;
    };
    let Some(reply) = reply_entry(s, now) else {
        return pass;
    };
    // Source-NATed flows' errors come to the node (`from_netdev`); a
    // hairpinned pod's error to itself quotes the hairpin address, which
    // it knows.
    let external = reply.flags & CT_F_EXTERNAL != 0;
    if reply.flags & (CT_F_SNAT | CT_F_HAIRPIN | CT_F_MASQ) != 0 || external != (side == Side::Egress) {
        return pass;
    }
    let mut to = Flow::<F>::new();
    to.proto = outer.proto;
    as_reply::<F>(ctx, &q, outer, &s.in_key, reply, &mut to)?;
    if external {
        return route::forward(ctx, &to).map(Action::forward);
    }
    pass
}

/// Where the parts of an ICMP error whose quoted packet starts at `quoted`
/// are; the quoted packet's tuple, reversed, in `s.in_key` (`dir` unset).
/// What is rewritten (the quoted addresses, and ports or identifier in the
/// first 8 bytes of its L4 header, which every error quotes) must lie within
/// the error's IP packet: its checksum covers no more.
#[inline(always)]
fn quote<F: Lb>(ctx: &TcContext, quoted: usize, s: &mut Scratch) -> Result<Quote, Reason> {
    let l4 = packet::quoted_key::<F, _>(ctx, quoted, &mut s.in_key, true)?;
    if l4 + 8 > F::ip_end(ctx)? {
        return Err(Reason::Malformed);
    }
    Ok(Quote {
        csum: quoted - ICMP_HLEN + ICMP_CSUM,
        ip: quoted,
        l4,
        proto: s.in_key.proto,
    })
}

/// The live reply entry keyed by `s.in_key`: its pair's forward entry
/// (`s.out_key`) is live and still sends its flow to that backend, as
/// `lb::reply` asks of a reply.
#[inline(always)]
fn reply_entry(s: &mut Scratch, now: u64) -> Option<&'static CtValue> {
    s.in_key.dir = CT_IN;
    // SAFETY: valid for this run.
    let reply = unsafe { CONNTRACK.get(&s.in_key) }?;
    s.out_key = s.in_key.out_partner(reply);
    let entry = ct::lookup(&s.out_key, now)?;
    (reply.flags & CT_F_SNAT != 0 || ct::answers(entry, &s.in_key)).then_some(reply)
}

/// The live forward entry of an external flow keyed by `s.in_key`.
#[inline(always)]
fn external_entry(s: &mut Scratch, now: u64) -> Option<&'static CtValue> {
    s.in_key.dir = CT_OUT;
    let entry = ct::lookup(&s.in_key, now)?;
    // SAFETY: a pointer into the map's value, valid for this run.
    let flow = unsafe { &*entry };
    (flow.flags & CT_F_EXTERNAL != 0).then_some(flow)
}

/// Rewrites the error the way its external flow's requests go (`flow`: the
/// flow's forward entry, keyed by `key`): to the backend, about its reply as
/// it sent it, to the client or, source-NATed, to the node's address and
/// port. `to`: the error's new addresses.
#[inline(always)]
fn as_request<F: Lb>(
    ctx: &TcContext,
    q: &Quote,
    outer: &Flow<F>,
    key: &CtKey,
    flow: &CtValue,
    to: &mut Flow<F>,
) -> Result<(), Reason> {
    let csum = outer.pseudo_header().then_some(q.csum);
    to.saddr = outer.saddr;
    F::rewrite_addr(ctx, csum, 0, F::DADDR, &outer.daddr, &flow.nat_addr)?;
    F::narrow(&flow.nat_addr, &mut to.daddr);
    requote::<F>(
        ctx,
        q,
        F::SADDR,
        (&key.daddr, key.dport),
        (&flow.nat_addr, flow.nat_port),
    )?;
    if flow.flags & CT_F_SNAT != 0 {
        requote::<F>(
            ctx,
            q,
            F::DADDR,
            (&key.saddr, key.sport),
            (&flow.nat2_addr, flow.nat2_port),
        )?;
    }
    Ok(())
}

/// Rewrites the error the way its flow's replies go (`reply`: the flow's
/// reply entry, keyed by `key`): from the frontend (a masqueraded flow's
/// keeps its sender), to the client (source-NATed: `nat2_*`), about the
/// packet the client sent to the frontend. `to`: the error's new addresses.
#[inline(always)]
fn as_reply<F: Lb>(
    ctx: &TcContext,
    q: &Quote,
    outer: &Flow<F>,
    key: &CtKey,
    reply: &CtValue,
    to: &mut Flow<F>,
) -> Result<(), Reason> {
    // The error's checksum covers its own addresses in ICMPv6 only.
    let csum = outer.pseudo_header().then_some(q.csum);
    to.saddr = outer.saddr;
    to.daddr = outer.daddr;
    if reply.flags & CT_F_MASQ == 0 {
        F::rewrite_addr(ctx, csum, 0, F::SADDR, &outer.saddr, &reply.nat_addr)?;
        F::narrow(&reply.nat_addr, &mut to.saddr);
    }
    if reply.flags & CT_F_SNAT != 0 {
        F::rewrite_addr(ctx, csum, 0, F::DADDR, &outer.daddr, &reply.nat2_addr)?;
        F::narrow(&reply.nat2_addr, &mut to.daddr);
        requote::<F>(
            ctx,
            q,
            F::SADDR,
            (&key.daddr, key.dport),
            (&reply.nat2_addr, reply.nat2_port),
        )?;
    }
    requote::<F>(
        ctx,
        q,
        F::DADDR,
        (&key.saddr, key.sport),
        (&reply.nat_addr, reply.nat_port),
    )
}

/// Replaces one end of the quoted packet, `old` by `new`: its address (`field`:
/// [`packet::Family::SADDR`] or [`packet::Family::DADDR`]) and its port (an echo's identifier
/// is its source's), keeping the error's checksum right.
#[inline(always)]
fn requote<F: Lb>(
    ctx: &TcContext,
    q: &Quote,
    field: usize,
    old: (&[u8; 16], u16),
    new: (&[u8; 16], u16),
) -> Result<(), Reason> {
    if !wide_eq(old.0, new.0) {
        F::rewrite_quoted_addr(ctx, q.csum, q.ip, q.ip + field - ETH_HLEN, old.0, new.0)?;
    }
    let source = field == F::SADDR;
    let at = match (q.proto == F::ICMP, source) {
        (false, true) => q.l4,
        (false, false) => q.l4 + 2,
        (true, true) => q.l4 + ICMP_ID,
        // An echo has one identifier, read as its source's port.
        (true, false) => return Ok(()),
    };
    if old.1 != new.1 {
        ctx.l4_csum_replace(q.csum, u64::from(old.1), u64::from(new.1), 2)
            .map_err(|_| Reason::RewriteFailed)?;
        ctx.store(at, &new.1, 0).map_err(|_| Reason::RewriteFailed)?;
    }
    Ok(())
}
