//! Service load balancing on the pod veths. What a pod sends (TC ingress of its
//! host veth): replies of translated flows are reverse-translated, known flows keep
//! their backend, and a new flow to a frontend gets one (or is rejected when there
//! is none). What a pod receives (TC egress): replies from backends on other nodes
//! are reverse-translated. Everything else passes untouched.

pub mod ct;
mod external;
pub mod maps;
mod nat;
mod reject;
pub mod select;

pub use self::external::from_netdev;

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use weir_common::{
    Backend, CT_F_CLOSING, CT_F_EXTERNAL, CT_F_HAIRPIN, CT_F_SNAT, CT_IN, CT_OUT, Reason, SCOPE_EXTERNAL,
    SCOPE_INTERNAL, SVC_F_DROP_EMPTY, SVC_F_TWO_SCOPES, Scratch, ServiceKey,
};

use self::maps::{BACKENDS, CONNTRACK, SCRATCH, SERVICES};
use crate::{
    metrics::Action,
    packet::{Family, Flow},
    route,
};

const NS: u64 = 1_000_000_000;

/// What the load balancer needs of an IP version.
pub trait Lb: nat::Rewrite + reject::Reject {}
impl<F: nat::Rewrite + reject::Reject> Lb for F {}

/// This CPU's scratch value, ours until the program returns. Conntrack keys are
/// built there too: three of them on the stack would not fit beside the rest.
#[inline(always)]
pub fn scratch() -> Result<&'static mut Scratch, Reason> {
    let s = SCRATCH.get_ptr_mut(0).ok_or(Reason::CtFull)?;
    // SAFETY: a per-CPU value; nothing else runs on this CPU while we do.
    Ok(unsafe { &mut *s })
}

/// Traffic on its way into a pod: the replies of backends on other nodes, whose
/// flows were translated here, come back through this hook and are made to come
/// from the frontend. (Local backends' replies are handled as they leave them.)
#[inline(always)]
pub fn to_pod<F: Lb>(ctx: &TcContext, flow: &mut Flow<F>) -> Result<(), Reason> {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    reverse(ctx, flow, scratch()?, now, false).map(|_| ())
}

/// Not a reply (see `reverse`).
const NOT_A_REPLY: u8 = 0xff;

/// A local backend's reply to a translated flow: make it come from the frontend
/// (and, for a hairpinned flow, go back to the client). Returns the flow's
/// `CT_F_*` flags, or [`NOT_A_REPLY`]. `host_stack` (`NODE_F_HOST_STACK`): a
/// reply to a pod is recognised but left as it is, to be translated on the
/// client's veth once the host's stack has delivered it there.
#[inline(always)]
fn reverse<F: Lb>(
    ctx: &TcContext,
    flow: &mut Flow<F>,
    s: &mut Scratch,
    now: u64,
    host_stack: bool,
) -> Result<u8, Reason> {
    ct::fill_key(&mut s.in_key, flow, CT_IN);
    // SAFETY: valid for this run.
    let Some(reply) = (unsafe { CONNTRACK.get(&s.in_key) }) else {
        return Ok(NOT_A_REPLY);
    };
    // Source-NATed flows have remote backends: their replies arrive on a node
    // device (`external`), never here.
    if reply.flags & CT_F_SNAT != 0 {
        return Ok(NOT_A_REPLY);
    }
    // The pair lives by its CT_OUT entry (the rule the agent's GC applies too).
    s.out_key = s.in_key.out_partner(reply);
    let Some(entry) = ct::lookup(&s.out_key, now) else {
        return Ok(NOT_A_REPLY);
    };
    // A reply entry speaks for its flow only while that flow is this one: its
    // forward entry still sends to this backend (a reused tuple may have been
    // sent elsewhere since), and it is not a new connection's handshake after
    // the flow closed (the client reused its port to reach the backend
    // directly: netfilter's rule, a SYN on a closing entry starts over).
    if !ct::answers(entry, &s.in_key) || ct::is_reopened(entry, flow) {
        let _ = CONNTRACK.remove(&s.in_key);
        return Ok(NOT_A_REPLY);
    }
    if host_stack && reply.flags & (CT_F_EXTERNAL | CT_F_HAIRPIN) == 0 {
        return Ok(reply.flags);
    }
    ct::refresh(entry, flow, now);
    nat::snat(ctx, flow, &reply.nat_addr, reply.nat_port)?;
    if reply.flags & CT_F_HAIRPIN != 0 {
        let dport = flow.dport;
        nat::dnat(ctx, flow, &reply.nat2_addr, dport)?;
    }
    Ok(reply.flags)
}

/// A packet a pod sends, translated in place: `Some(action)` when it has been
/// answered (a rejection) or sent on (the reply of an external flow) here.
/// `host_stack`: see [`reverse`].
#[inline(always)]
pub fn from_pod<F: Lb>(
    ctx: &TcContext,
    flow: &mut Flow<F>,
    host_stack: bool,
) -> Result<Option<Action>, Reason> {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let s = scratch()?;

    // 1. A packet of a flow we translated: the same backend as before, even if the
    //    service's endpoints have changed since.
    ct::fill_key(&mut s.out_key, flow, CT_OUT);
    if let Some(entry) = ct::lookup(&s.out_key, now)
        && !ct::is_reuse(entry, flow)
    {
        ct::refresh(entry, flow, now);
        // SAFETY: valid for this run.
        let e = unsafe { &*entry };
        if e.flags & CT_F_HAIRPIN != 0 {
            let sport = flow.sport;
            nat::snat(ctx, flow, &F::HAIRPIN, sport)?;
        }
        nat::dnat(ctx, flow, &e.nat_addr, e.nat_port)?;
        flow.translated = true;
        return Ok(None);
    }

    // 2. A local backend answering a translated flow; an external client's
    //    answer now comes from a node address and is routed here.
    match reverse(ctx, flow, s, now, host_stack)? {
        NOT_A_REPLY => {}
        flags if flags & CT_F_EXTERNAL != 0 => {
            return route::forward(ctx, flow).map(|tc| Some(Action::forward(tc)));
        }
        _ => return Ok(None),
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
        return Ok(None);
    };
    let mut svc = *svc;
    // A pod is inside the cluster: where a frontend's traffic policies differ by
    // client (externalTrafficPolicy: Local), it gets the cluster-wide entry.
    if svc.flags & SVC_F_TWO_SCOPES != 0 {
        key.scope = SCOPE_INTERNAL;
        // SAFETY: valid for this run.
        svc = *unsafe { SERVICES.get(&key) }.ok_or(Reason::BackendMissing)?;
    }
    if svc.count == 0 {
        // internalTrafficPolicy Local, endpoints only elsewhere: kube-proxy drops.
        if svc.flags & SVC_F_DROP_EMPTY != 0 {
            return Err(Reason::NoLocalBackend);
        }
        let tc = reject::port_unreachable(ctx, flow, s)?;
        return Ok(Some(Action {
            tc,
            reason: Reason::NoBackend,
        }));
    }
    let backend_id = select::backend(flow, &key, &svc, now)?;
    // SAFETY: valid for this run.
    let backend = unsafe { BACKENDS.get(&backend_id) }.ok_or(Reason::BackendMissing)?;

    // A pod reaching itself through its service: without a new source the reply
    // would never leave the pod.
    let hairpin = F::is(&flow.saddr, &backend.addr);
    let (snat, flags) = if hairpin {
        (
            Some(Snat {
                addr: &F::HAIRPIN,
                port: flow.sport,
            }),
            CT_F_HAIRPIN,
        )
    } else {
        (None, 0)
    };
    track(flow, s, backend, snat, flags, svc.rev_nat_id, backend_id, now)?;
    if hairpin {
        let sport = flow.sport;
        nat::snat(ctx, flow, &F::HAIRPIN, sport)?;
    }
    nat::dnat(ctx, flow, &backend.addr, backend.port)?;
    flow.translated = true;
    Ok(None)
}

/// A new source for a flow: the hairpin address, or the node's.
struct Snat<'a> {
    addr: &'a [u8; 16],
    port: u16,
}

/// Records a new translated flow both ways, the reply entry first: once the
/// forward entry exists, packets are translated and their replies must find it.
///
/// The pair is built field by field in the scratch value and inserted from there:
/// built on the stack, the two keys and two values would not fit in the 512-byte
/// frame beside the rest of the hot path.
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into the hot path: a struct of these would be built on the 512-byte stack"
)]
#[inline(always)]
fn track<F: Family>(
    flow: &Flow<F>,
    s: &mut Scratch,
    backend: &Backend,
    snat: Option<Snat<'_>>,
    flags: u8,
    rev_nat_id: u32,
    backend_id: u32,
    now: u64,
) -> Result<(), Reason> {
    let flags = ct::new_flags(flow) | flags;

    // The backend's reply, to the client (or to its new source).
    let k = &mut s.in_key;
    k.saddr.copy_from_slice(&backend.addr);
    k.sport = backend.port;
    if let Some(snat) = &snat {
        k.daddr.copy_from_slice(snat.addr);
        k.dport = snat.port;
        F::widen(&flow.saddr, &mut s.back.nat2_addr);
        s.back.nat2_port = flow.sport;
    } else {
        F::widen(&flow.saddr, &mut k.daddr);
        k.dport = flow.sport;
        s.back.nat2_addr = [0; 16];
        s.back.nat2_port = 0;
    }
    k.proto = flow.proto;
    k.family = F::AF;
    k.dir = CT_IN;
    k._pad = 0;
    F::widen(&flow.daddr, &mut s.back.nat_addr);
    s.back.nat_port = flow.dport;
    s.back.rev_nat_id = rev_nat_id;
    s.back.flags = flags;
    s.back._pad = [0; 3];
    s.back.backend_id = backend_id;
    s.back.expires_ns = 0;
    CONNTRACK
        .insert(&s.in_key, &s.back, 0)
        .map_err(|_| Reason::CtFull)?;

    ct::fill_key(&mut s.out_key, flow, CT_OUT);
    s.out.nat_addr.copy_from_slice(&backend.addr);
    if let Some(snat) = &snat {
        s.out.nat2_addr.copy_from_slice(snat.addr);
        s.out.nat2_port = snat.port;
    } else {
        s.out.nat2_addr = [0; 16];
        s.out.nat2_port = 0;
    }
    s.out.nat_port = backend.port;
    s.out.rev_nat_id = rev_nat_id;
    s.out.flags = flags;
    s.out._pad = [0; 3];
    s.out.backend_id = backend_id;
    s.out.expires_ns = now + ct::lifetime(flow, flags & CT_F_CLOSING != 0) * NS;
    CONNTRACK
        .insert(&s.out_key, &s.out, 0)
        .map_err(|_| Reason::CtFull)
}
