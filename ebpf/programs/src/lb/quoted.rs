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
//! - A packet on its way to the backend's side, as the node sent it or the
//!   backend got it (a request translated to the backend; one the node
//!   source-NATed, masqueraded or to a remote backend), quotes the backend,
//!   or the node's address and port, as its destination: reversed, that is
//!   the flow's reply entry (`CT_IN`). The error goes the way the flow's
//!   replies go ([`as_reply`]): from the frontend, to the client (source-NATed
//!   or hairpinned: `nat2_*`), about the packet the client sent to the
//!   frontend (`nat_*`; a masqueraded flow's "frontend" is its destination).
//!   A masqueraded pod's error keeps the router's address as its source, as
//!   netfilter leaves it.
//! - A packet on its way to the client's side (a reply the node sent from a
//!   frontend, or a client pod got from one; a masqueraded flow's reply)
//!   quotes the frontend as its source: reversed, the flow's forward entry
//!   (`CT_OUT`). The error goes the way the flow's requests go
//!   ([`as_request`]): to the backend (`nat_*`), about its reply as it sent
//!   it, to the client or, source-NATed, to the node's address and port
//!   (`nat2_*`), which the error then comes from.
//!
//! Where: errors arriving on a node device ([`from_netdev`]: those to the
//! node or a frontend, about what it sent); errors leaving by one
//! ([`to_netdev`]: a hostNetwork endpoint's own, a masqueraded pod's own);
//! and on a pod's veth ([`at_pod`]): a backend's own errors to an external
//! client or to itself (hairpinned), a client pod's own about a reply, and
//! errors reaching a client pod, where replies to that pod are translated
//! too when pods' traffic goes through the host's stack, and where its
//! policy judges the error as it came. What a pod or the node sends is translated
//! only when it is the sender's own error about its own flow. The quoted
//! packet's own L4 checksum is left as it is: receivers do not check it (a
//! quote may be cut short).

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use weir_common::{
    AF_INET, CT_F_EXTERNAL, CT_F_HAIRPIN, CT_F_MASQ, CT_F_SNAT, CT_IN, CtKey, CtValue, Reason, Scratch,
};

use super::{Lb, ct, external, maps::CONNTRACK, scratch};
use crate::{
    endpoints,
    metrics::Action,
    packet::{self, ETH_HLEN, Flow, ICMP_CSUM, ICMP_HLEN, ICMP_ID, wide_eq},
    policy::Side,
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
pub fn from_netdev<F: Lb>(ctx: &TcContext, outer: &Flow<F>, quoted: usize) -> Result<Action, Reason> {
    let pass = Ok(Action::forward(TC_ACT_OK));
    let s = scratch()?;
    let Some(q) = quote::<F>(ctx, quoted, s) else {
        return pass;
    };
    let now = crate::clock::now();
    let mut to = Flow::<F>::new();
    to.proto = outer.proto;
    if let Some(reply) = reply_entry(s, now)
        && reply.flags & CT_F_SNAT != 0
    {
        as_reply::<F>(ctx, &q, outer, &s.in_key, reply, &mut to)?;
    } else if let Some(flow) = ct::forward(&mut s.in_key, now)
        && flow.flags & CT_F_EXTERNAL != 0
    {
        as_request::<F>(ctx, &q, outer, &s.in_key, flow, &mut to)?;
    } else {
        return pass;
    }
    let pod = endpoints::veth(&endpoints::key::<F>(&to.daddr)).unwrap_or(0);
    external::deliver(ctx, &to, pod)
}

/// An ICMP error a pod sends (`side`: `Egress`) or receives (`Ingress`),
/// already judged by its policy, about a flow the load balancer translated
/// on this node: made to name what the flow's other end knows. An error
/// about a flow to a backend is translated where the flow's replies are:
/// one a backend sends to an external client (or to itself, hairpinned) as
/// it leaves the backend, and sent on from there; one that reaches a client
/// pod, as it reaches that pod. A client pod's own error about a reply it got
/// from a frontend (its socket is gone) goes to the backend instead. Anything
/// else passes.
#[inline(always)]
pub fn at_pod<F: Lb>(ctx: &TcContext, outer: &Flow<F>, quoted: usize, side: Side) -> Result<Action, Reason> {
    let pass = Ok(Action::forward(TC_ACT_OK));
    let s = scratch()?;
    let Some(q) = quote::<F>(ctx, quoted, s) else {
        return pass;
    };
    let now = crate::clock::now();
    let egress = side == Side::Egress;
    // What a pod sends is translated only when it is its own error about
    // its own flow: no pod may make the node speak for a frontend.
    if egress && !F::is(&outer.saddr, &s.in_key.saddr) {
        return pass;
    }
    let mut to = Flow::<F>::new();
    to.proto = outer.proto;
    if let Some(reply) = reply_entry(s, now)
        && reply.flags & CT_F_SNAT == 0
        && (reply.flags & (CT_F_EXTERNAL | CT_F_HAIRPIN) != 0) == egress
    {
        as_reply::<F>(ctx, &q, outer, &s.in_key, reply, &mut to)?;
    } else if egress
        && let Some(flow) = ct::forward(&mut s.in_key, now)
        && flow.flags & (CT_F_EXTERNAL | CT_F_MASQ) == 0
    {
        as_request::<F>(ctx, &q, outer, &s.in_key, flow, &mut to)?;
    } else {
        return pass;
    }
    if !egress {
        return pass;
    }
    let pod = endpoints::veth(&endpoints::key::<F>(&to.daddr)).unwrap_or(0);
    external::deliver(ctx, &to, pod)
}

/// An ICMP error leaving by a node device about a flow the node translated:
/// a hostNetwork endpoint's own error to an external client (the node's
/// stack sends it) names the frontend; a masqueraded pod's own error about a
/// reply it got (forwarded by the node) comes from the node's address and
/// port. Anything else passes.
#[inline(always)]
pub fn to_netdev<F: Lb>(ctx: &TcContext, outer: &Flow<F>, quoted: usize) -> Result<Action, Reason> {
    let pass = Ok(Action::forward(TC_ACT_OK));
    let s = scratch()?;
    let Some(q) = quote::<F>(ctx, quoted, s) else {
        return pass;
    };
    if !F::is(&outer.saddr, &s.in_key.saddr) {
        return pass;
    }
    let now = crate::clock::now();
    let mut to = Flow::<F>::new();
    if let Some(reply) = reply_entry(s, now)
        && reply.flags & (CT_F_EXTERNAL | CT_F_SNAT) == CT_F_EXTERNAL
    {
        as_reply::<F>(ctx, &q, outer, &s.in_key, reply, &mut to)?;
    } else if let Some(flow) = ct::forward(&mut s.in_key, now)
        && flow.flags & CT_F_MASQ != 0
    {
        as_request::<F>(ctx, &q, outer, &s.in_key, flow, &mut to)?;
    }
    pass
}

/// Where the parts of an ICMP error whose quoted packet starts at `quoted`
/// (0: the packet is no error) are; the quoted packet's tuple, reversed, in
/// `s.in_key` (its `dir` the caller's to set). `None` for a quote that names
/// no flow we could rewrite: what is rewritten (the quoted addresses, and the
/// ports or identifier in the first 8 bytes of its L4 header, which every
/// error quotes) must lie within the error's IP packet, which its checksum
/// covers.
#[inline(always)]
fn quote<F: Lb>(ctx: &TcContext, quoted: usize, s: &mut Scratch) -> Option<Quote> {
    if quoted == 0 {
        return None;
    }
    let l4 = packet::quoted_key::<F, _>(ctx, quoted, &mut s.in_key, true).ok()?;
    if l4 + 8 > F::ip_end(ctx).ok()? {
        return None;
    }
    // A quoted later IPv4 fragment has no L4 header: its "ports" are data.
    // (IPv6's fragment header stands where the L4 protocol would: no flow has
    // it.)
    if F::AF == AF_INET {
        let frag: u16 = ctx.load(quoted + 6).ok()?;
        if u16::from_be(frag) & 0x1fff != 0 {
            return None;
        }
    }
    Some(Quote {
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

/// Rewrites the error the way its flow's requests go (`flow`: the flow's
/// forward entry, keyed by `key`): to the backend (a masqueraded flow's is
/// its destination), about its reply as it sent it, to the client or,
/// source-NATed (hairpinned), to the node's address and port (the hairpin
/// address and the client's port), from which the error then comes too (as
/// netfilter's source NAT rewrites it). `to`: the error's new addresses.
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
    // The client's own address went as the node's, or as the hairpin
    // address: the error comes from there.
    if flow.flags & (CT_F_SNAT | CT_F_HAIRPIN) != 0 {
        F::rewrite_addr(ctx, csum, 0, F::SADDR, &outer.saddr, &flow.nat2_addr)?;
        F::narrow(&flow.nat2_addr, &mut to.saddr);
        requote::<F>(
            ctx,
            q,
            F::DADDR,
            (&key.saddr, key.sport),
            (&flow.nat2_addr, flow.nat2_port),
        )?;
    }
    F::rewrite_addr(ctx, csum, 0, F::DADDR, &outer.daddr, &flow.nat_addr)?;
    F::narrow(&flow.nat_addr, &mut to.daddr);
    requote::<F>(
        ctx,
        q,
        F::SADDR,
        (&key.daddr, key.dport),
        (&flow.nat_addr, flow.nat_port),
    )
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
    // The client's own address came back as the hairpin address, or as the
    // node's: the error goes to the client.
    if reply.flags & (CT_F_SNAT | CT_F_HAIRPIN) != 0 {
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
