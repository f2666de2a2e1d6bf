//! Service load balancing on the pod veths. What a pod sends (TC ingress of its
//! host veth): replies of translated flows are reverse-translated, known flows keep
//! their backend, and a new flow to a frontend gets one (or is rejected when there
//! is none). What a pod receives (TC egress): replies from backends on other nodes
//! are reverse-translated. Everything else passes untouched.

mod ct;
pub mod maps;
mod nat;
mod reject;
mod select;

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use weir_common::{
    AF_INET, Backend, CT_F_HAIRPIN, CT_IN, CT_OUT, HAIRPIN_V4, Reason, SCOPE_EXTERNAL, SCOPE_INTERNAL,
    SVC_F_TWO_SCOPES, ServiceKey,
};

use self::maps::{BACKENDS, CONNTRACK, SCRATCH, SERVICES};
use crate::{
    metrics::Action,
    packet::{Flow4, addr4, addr16},
};

const NS: u64 = 1_000_000_000;

/// What the load balancer did to a packet.
pub enum Verdict {
    /// Possibly rewritten; continue (the caller delivers it).
    Pass(Flow4),
    /// Already answered (a rejection): return this action.
    Done(Action),
}

/// Traffic on its way into a pod: the replies of backends on other nodes, whose
/// flows were translated here, come back through this hook and are made to come
/// from the frontend. (Local backends' replies are handled as they leave them.)
#[inline(always)]
pub fn to_pod(ctx: &TcContext, mut flow: Flow4) -> Result<(), Reason> {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    reverse(ctx, &mut flow, now).map(|_| ())
}

/// A backend's reply to a translated flow: make it come from the frontend (and,
/// for a hairpinned flow, go back to the client). `Ok(false)`: not such a reply.
#[inline(always)]
fn reverse(ctx: &TcContext, flow: &mut Flow4, now: u64) -> Result<bool, Reason> {
    let in_key = ct::in_key(flow);
    // SAFETY: valid for this run.
    let Some(reply) = (unsafe { CONNTRACK.get(&in_key) }) else {
        return Ok(false);
    };
    let reply = *reply;
    let hairpin = reply.flags & CT_F_HAIRPIN != 0;
    let client = if hairpin { addr4(&reply.nat2_addr) } else { flow.daddr };
    // The pair lives by its CT_OUT entry (the rule the agent's GC applies too).
    let Some(entry) = ct::lookup(&in_key.out_partner(&reply), now) else {
        return Ok(false);
    };
    ct::refresh(entry, flow, now);
    nat::snat(ctx, flow, addr4(&reply.nat_addr), reply.nat_port)?;
    if hairpin {
        let dport = flow.dport;
        nat::dnat(ctx, flow, client, dport)?;
    }
    Ok(true)
}

#[inline(always)]
pub fn from_pod(ctx: &TcContext, mut flow: Flow4) -> Result<Verdict, Reason> {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };

    // 1. A packet of a flow we translated: the same backend as before, even if the
    //    service's endpoints have changed since.
    if let Some(entry) = ct::lookup(&ct::out_key(&flow), now)
        && !ct::is_reuse(entry, &flow)
    {
        ct::refresh(entry, &flow, now);
        // SAFETY: valid for this run.
        let e = unsafe { *entry };
        if e.flags & CT_F_HAIRPIN != 0 {
            let sport = flow.sport;
            nat::snat(ctx, &mut flow, HAIRPIN_V4, sport)?;
        }
        nat::dnat(ctx, &mut flow, addr4(&e.nat_addr), e.nat_port)?;
        return Ok(Verdict::Pass(flow));
    }

    // 2. A local backend answering a translated flow.
    if reverse(ctx, &mut flow, now)? {
        return Ok(Verdict::Pass(flow));
    }

    // 3. A new flow: is its destination a frontend?
    let key = ServiceKey {
        addr: addr16(flow.daddr),
        port: flow.dport,
        slot: 0,
        proto: flow.proto,
        family: AF_INET,
        scope: SCOPE_EXTERNAL,
        _pad: 0,
    };
    // SAFETY: valid for this run.
    let Some(svc) = (unsafe { SERVICES.get(&key) }) else {
        return Ok(Verdict::Pass(flow));
    };
    let mut svc = *svc;
    // A pod is inside the cluster: where a frontend's traffic policies differ by
    // client (externalTrafficPolicy: Local), it gets the cluster-wide entry.
    let mut key = key;
    if svc.flags & SVC_F_TWO_SCOPES != 0 {
        key.scope = SCOPE_INTERNAL;
        // SAFETY: valid for this run.
        svc = *unsafe { SERVICES.get(&key) }.ok_or(Reason::BackendMissing)?;
    }
    if svc.count == 0 {
        let tc = reject::port_unreachable(ctx, &flow)?;
        return Ok(Verdict::Done(Action { tc, reason: Reason::NoBackend }));
    }
    let backend_id = select::backend(&flow, &key, &svc)?;
    // SAFETY: valid for this run.
    let backend = *unsafe { BACKENDS.get(&backend_id) }.ok_or(Reason::BackendMissing)?;

    // A pod reaching itself through its service: without a new source the reply
    // would never leave the pod.
    let hairpin = addr4(&backend.addr) == flow.saddr;
    track(&flow, &backend, svc.rev_nat_id, backend_id, now)?;
    if hairpin {
        let sport = flow.sport;
        nat::snat(ctx, &mut flow, HAIRPIN_V4, sport)?;
    }
    nat::dnat(ctx, &mut flow, addr4(&backend.addr), backend.port)?;
    Ok(Verdict::Pass(flow))
}

/// Records a new translated flow both ways, the reply entry first: once the
/// forward entry exists, packets are translated and their replies must find it.
///
/// The pair is built field by field in this CPU's scratch value and inserted from
/// there: built on the stack, the two keys and two values would not fit in the
/// 512-byte frame beside the rest of the hot path.
#[inline(always)]
fn track(flow: &Flow4, backend: &Backend, rev_nat_id: u16, backend_id: u32, now: u64) -> Result<(), Reason> {
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(Reason::CtFull)?;
    // SAFETY: this CPU's scratch value, ours until the program returns.
    let s = unsafe { &mut *scratch };
    let hairpin = addr4(&backend.addr) == flow.saddr;
    let flags = ct::new_flags(flow) | if hairpin { CT_F_HAIRPIN } else { 0 };
    let reply_to = if hairpin { HAIRPIN_V4 } else { flow.saddr };

    ct::fill_key(&mut s.in_key, addr4(&backend.addr), reply_to, backend.port, flow.sport, flow.proto, CT_IN);
    s.back.nat_addr = addr16(flow.daddr);
    s.back.nat2_addr = if hairpin { addr16(flow.saddr) } else { [0; 16] };
    s.back.nat_port = flow.dport;
    s.back.rev_nat_id = rev_nat_id;
    s.back.flags = flags;
    s.back.backend_id = backend_id;
    s.back.expires_ns = 0;
    CONNTRACK.insert(&s.in_key, &s.back, 0).map_err(|_| Reason::CtFull)?;

    ct::fill_key(&mut s.out_key, flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto, CT_OUT);
    s.out.nat_addr = backend.addr;
    s.out.nat2_addr = if hairpin { addr16(HAIRPIN_V4) } else { [0; 16] };
    s.out.nat_port = backend.port;
    s.out.rev_nat_id = rev_nat_id;
    s.out.flags = flags;
    s.out.backend_id = backend_id;
    s.out.expires_ns = now + ct::lifetime(flow, flags) * NS;
    CONNTRACK.insert(&s.out_key, &s.out, 0).map_err(|_| Reason::CtFull)
}
