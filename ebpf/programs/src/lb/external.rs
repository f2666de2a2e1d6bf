//! Service traffic entering the node from outside (TC ingress of the node's
//! devices): NodePorts, externalIPs and load-balancer IPs, as kube-proxy's
//! `KUBE-NODEPORTS`/`KUBE-EXT-*` chains serve them.
//!
//! A new flow to a frontend gets a backend from the frontend's external entry
//! (with externalTrafficPolicy Local, this node's endpoints only). A local
//! backend gets the packet straight on its veth, the client's address intact;
//! its replies are translated as they leave it (`lb::reply`) and routed out
//! from there. A remote backend gets the packet from the node's own address and a
//! free port outside the node's ephemeral range (externalTrafficPolicy Cluster),
//! so that its replies come back here, where they are translated back to the
//! client. Anything else passes untouched.

use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect_neigh},
    programs::TcContext,
};
use weir_common::{
    CT_F_EXTERNAL, CT_F_RESET, CT_F_SNAT, CT_IN, DEFAULT_EPHEMERAL, NodeAddrs, Reason, SNAT_PORT_FIRST,
    SVC_F_EXT_LOCAL, Scratch,
};

use super::{
    Backends, Chosen, Lb, NewFlow, Reply, Snat, choose,
    ct::{self, Tuple},
    established, frontend,
    maps::{CONNTRACK, NODE},
    reply, scratch, translate_new,
};
use crate::{endpoints, metrics::Action, packet::Flow, route};

/// Fewer free ports than this outside the node's ephemeral range: use them all.
const SNAT_MIN_PORTS: u16 = 4_096;
/// Attempts at a free source port before the flow is refused.
const SNAT_TRIES: usize = 8;

#[inline(always)]
pub fn from_netdev<F: Lb>(ctx: &TcContext, flow: &mut Flow<F>) -> Result<Action, Reason> {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let s = scratch()?;
    let pass = Ok(Action::forward(TC_ACT_OK));

    // 1. A packet of an external flow we translated.
    if established(ctx, flow, s, now, CT_F_EXTERNAL, CT_F_SNAT)? {
        let pod = endpoints::veth(&endpoints::key::<F>(&flow.daddr));
        return deliver(ctx, flow, pod.unwrap_or(0));
    }

    // 2. A remote backend answering a source-NATed flow: back to the client, from
    //    the frontend it dialled.
    match reply(ctx, flow, s, now, Backends::Remote)? {
        Reply::None => {}
        Reply::Orphan => return pass,
        Reply::Of(_) => return route::forward(ctx, flow).map(Action::forward),
    }

    // 3. A new flow, from outside the cluster: a frontend's external entry
    //    (with externalTrafficPolicy Local, this node's endpoints only).
    let chosen = match choose(ctx, flow, s, now, false)? {
        NewFlow::NotAFrontend => return pass,
        NewFlow::Answered(action) => return Ok(action),
        NewFlow::Chosen(chosen) => chosen,
    };
    let node = NODE.get(0).ok_or(Reason::NoSnat)?;
    let addr = frontend::node_addr::<F>(node);
    // No source NAT for a pod of this node (straight to its veth), a backend in
    // the node's own namespace (hostNetwork: the host stack takes it from here,
    // its replies are translated as they leave, `to_netdev`), or any backend of
    // externalTrafficPolicy Local (all on this node; the client's address kept).
    let backend = endpoints::key_wide::<F>(&chosen.backend.addr);
    let pod = endpoints::veth(&backend).unwrap_or(0);
    let host = endpoints::is_node(&backend);
    // Through memory: LLVM would fold the tests into one on the map pointer,
    // pointer arithmetic the verifier refuses.
    // SAFETY: reading live locals.
    let (pod, host) = unsafe { (core::ptr::read_volatile(&pod), core::ptr::read_volatile(&host)) };
    if pod != 0 || host || chosen.flags & SVC_F_EXT_LOCAL != 0 {
        translate_new(ctx, flow, s, &chosen, None, CT_F_EXTERNAL, now)?;
        return deliver(ctx, flow, pod);
    }

    // A remote backend: from the node's address, on a free port.
    if addr.iter().all(|b| *b == 0) {
        return Err(Reason::NoSnat);
    }
    let port = free_port(s, flow, &chosen, node, addr, now)?;
    let snat = Snat { addr, port };
    translate_new(ctx, flow, s, &chosen, Some(snat), CT_F_EXTERNAL | CT_F_SNAT, now)?;
    route::forward(ctx, flow).map(Action::forward)
}

/// A translated packet goes to its backend: a local pod (`pod`, its veth)
/// straight on its veth, anything else by route.
#[inline(always)]
fn deliver<F: Lb>(ctx: &TcContext, flow: &Flow<F>, pod: u32) -> Result<Action, Reason> {
    if pod != 0 {
        // SAFETY: no preconditions; the verdict says where the packet goes.
        return Ok(Action::forward(
            unsafe { bpf_redirect_neigh(pod, core::ptr::null_mut(), 0, 0) } as i32,
        ));
    }
    route::forward(ctx, flow).map(Action::forward)
}

/// A source port no live flow from `addr` to this backend uses (network order),
/// outside the node's ephemeral range. A port whose flow was reset, or has
/// expired before the GC came by, is free: its entries are dropped, so that the
/// port serves at once, as a netfilter conntrack entry in CLOSE state yields to
/// a new SYN. A FIN-closed flow keeps its port until its entry expires (10 s):
/// a half-closed connection still talks.
#[inline(always)]
fn free_port<F: Lb>(
    s: &mut Scratch,
    flow: &Flow<F>,
    chosen: &Chosen,
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
    // The backend's reply to the node's address, the port still to choose.
    ct::fill_key(&mut s.in_key, flow, Tuple::AsReply, CT_IN);
    let k = &mut s.in_key;
    k.saddr.copy_from_slice(&chosen.backend.addr);
    k.daddr.copy_from_slice(addr);
    k.sport = chosen.backend.port;
    for _ in 0..SNAT_TRIES {
        // SAFETY: no preconditions.
        let r = unsafe { bpf_get_prandom_u32() } % span;
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
