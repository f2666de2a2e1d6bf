//! Service traffic entering the node from outside (TC ingress of the node's
//! devices): NodePorts, externalIPs and load-balancer IPs, as kube-proxy's
//! `KUBE-NODEPORTS`/`KUBE-EXT-*` chains serve them.
//!
//! A new flow to a frontend gets a backend from the frontend's external entry
//! (with externalTrafficPolicy Local, this node's endpoints only). A local
//! backend gets the packet straight on its veth, the client's address intact;
//! its replies are translated as they leave it (`lb::reverse`) and routed out
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
    AF_INET, CT_F_EXTERNAL, CT_F_RESET, CT_F_SNAT, CT_IN, CT_OUT, DEFAULT_EPHEMERAL, EndpointKey, Reason,
    SCOPE_EXTERNAL, SNAT_PORT_FIRST, SVC_F_DROP_EMPTY, SVC_F_EXT_LOCAL, ServiceKey,
};

use super::{
    Lb, Snat, ct,
    maps::{BACKENDS, CONNTRACK, NODE, NODE_IPS, SERVICES},
    nat, reject, scratch, select, track,
};
use crate::{endpoints::ENDPOINTS, metrics::Action, packet::Flow, route};

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
    ct::fill_key(&mut s.out_key, flow, CT_OUT);
    if let Some(entry) = ct::lookup(&s.out_key, now)
        // SAFETY: a pointer into the map's value, valid for this run.
        && unsafe { (*entry).flags } & CT_F_EXTERNAL != 0
        && !ct::is_reuse(entry, flow)
    {
        ct::refresh(entry, flow, now);
        // SAFETY: as above.
        let e = unsafe { &*entry };
        if e.flags & CT_F_SNAT != 0 {
            nat::snat(ctx, flow, &e.nat2_addr, e.nat2_port)?;
        }
        nat::dnat(ctx, flow, &e.nat_addr, e.nat_port)?;
        let pod = pod_ifindex::<F>(&e.nat_addr);
        return deliver(ctx, flow, pod);
    }

    // 2. A remote backend answering a source-NATed flow: back to the client, from
    //    the frontend it dialled.
    ct::fill_key(&mut s.in_key, flow, CT_IN);
    // SAFETY: valid for this run.
    if let Some(reply) = unsafe { CONNTRACK.get(&s.in_key) }
        && reply.flags & CT_F_SNAT != 0
    {
        s.out_key = s.in_key.out_partner(reply);
        let Some(entry) = ct::lookup(&s.out_key, now) else {
            return pass;
        };
        ct::refresh(entry, flow, now);
        nat::snat(ctx, flow, &reply.nat_addr, reply.nat_port)?;
        nat::dnat(ctx, flow, &reply.nat2_addr, reply.nat2_port)?;
        return route::forward(ctx, flow).map(Action::forward);
    }

    // 3. A new flow: is its destination a frontend?
    let mut key = ServiceKey {
        addr: [0; 16],
        port: flow.dport,
        slot: 0,
        proto: flow.proto,
        family: F::AF,
        scope: SCOPE_EXTERNAL,
        _pad: 0,
    };
    F::widen(&flow.daddr, &mut key.addr);
    // SAFETY: valid for this run.
    let Some(svc) = (unsafe { SERVICES.get(&key) }) else {
        ct::yield_reply_tuple(s, flow);
        return pass;
    };
    let svc = *svc;
    if svc.count == 0 {
        // kube-proxy drops what externalTrafficPolicy Local cannot serve here
        // (a load balancer's health check tells it to go elsewhere), and rejects
        // the rest.
        if svc.flags & SVC_F_DROP_EMPTY != 0 {
            return Err(Reason::NoLocalBackend);
        }
        let tc = reject::port_unreachable(ctx, flow, s)?;
        return Ok(Action {
            tc,
            reason: Reason::NoBackend,
        });
    }
    let backend_id = select::backend(flow, &key, &svc, now)?;
    // SAFETY: valid for this run.
    let backend = unsafe { BACKENDS.get(&backend_id) }.ok_or(Reason::BackendMissing)?;
    let node = NODE.get(0).ok_or(Reason::NoSnat)?;
    let addr = if F::AF == AF_INET { &node.v4 } else { &node.v6 };
    // No source NAT for a pod of this node (straight to its veth), a backend in
    // the node's own namespace (hostNetwork: the host stack takes it from here,
    // its replies are translated as they leave, `to_netdev`), or any backend of
    // externalTrafficPolicy Local (all on this node; the client's address kept).
    let pod = pod_ifindex::<F>(&backend.addr);
    // SAFETY: valid for this run.
    let host = unsafe { NODE_IPS.get(&endpoint_key::<F>(&backend.addr)) }.is_some();
    // Through memory: LLVM would fold the tests into one on the map pointer,
    // pointer arithmetic the verifier refuses.
    // SAFETY: reading live locals.
    let (pod, host) = unsafe { (core::ptr::read_volatile(&pod), core::ptr::read_volatile(&host)) };
    if pod != 0 || host || svc.flags & SVC_F_EXT_LOCAL != 0 {
        track(
            flow,
            s,
            backend,
            None,
            CT_F_EXTERNAL,
            svc.rev_nat_id,
            backend_id,
            now,
        )?;
        nat::dnat(ctx, flow, &backend.addr, backend.port)?;
        return deliver(ctx, flow, pod);
    }

    // A remote backend: from the node's address, on a free port.
    if addr.iter().all(|b| *b == 0) {
        return Err(Reason::NoSnat);
    }
    let port = free_port(s, backend, node, addr, flow.proto, F::AF, now)?;
    track(
        flow,
        s,
        backend,
        Some(Snat { addr, port }),
        CT_F_EXTERNAL | CT_F_SNAT,
        svc.rev_nat_id,
        backend_id,
        now,
    )?;
    nat::snat(ctx, flow, addr, port)?;
    nat::dnat(ctx, flow, &backend.addr, backend.port)?;
    route::forward(ctx, flow).map(Action::forward)
}

/// The host veth of the local pod at `addr`, 0 if it is none.
#[inline(always)]
fn pod_ifindex<F: Lb>(addr: &[u8; 16]) -> u32 {
    // SAFETY: valid for this run.
    unsafe { ENDPOINTS.get(&endpoint_key::<F>(addr)) }.map_or(0, |ep| ep.ifindex)
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

#[inline(always)]
fn endpoint_key<F: Lb>(addr: &[u8; 16]) -> EndpointKey {
    let mut key = EndpointKey {
        family: F::AF,
        ..EndpointKey::default()
    };
    key.addr.copy_from_slice(addr);
    key
}

/// A source port no live flow from `addr` to this backend uses (network order),
/// outside the node's ephemeral range. A port whose flow was reset, or has
/// expired before the GC came by, is free: its entries are dropped, so that the
/// port serves at once, as a netfilter conntrack entry in CLOSE state yields to
/// a new SYN. A FIN-closed flow keeps its port until its entry expires (10 s):
/// a half-closed connection still talks.
#[inline(always)]
fn free_port(
    s: &mut weir_common::Scratch,
    backend: &weir_common::Backend,
    node: &weir_common::NodeAddrs,
    addr: &[u8; 16],
    proto: u8,
    family: u8,
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
    let k = &mut s.in_key;
    k.saddr.copy_from_slice(&backend.addr);
    k.daddr.copy_from_slice(addr);
    k.sport = backend.port;
    k.proto = proto;
    k.family = family;
    k.dir = CT_IN;
    k._pad = 0;
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
