//! Service load balancing on the pod veths. What a pod sends (TC ingress of its
//! host veth): replies of translated flows are reverse-translated, known flows keep
//! their backend, and a new flow to a frontend gets one (or is rejected when there
//! is none). What a pod receives (TC egress): replies from backends on other nodes
//! are reverse-translated. Everything else passes untouched.
//!
//! Every hook takes the same steps, written once here: [`established`] (a
//! packet of a flow translated before), [`reply`] (a backend's answer to one),
//! [`choose`] (a new flow's frontend and backend, see [`frontend`]) and
//! [`translate_new`] (record the pair, then source and destination NAT).
//! `external` takes them for traffic entering the node from outside; `masq`
//! source-NATs pods' flows leaving the cluster as they leave the node;
//! `quoted` translates ICMP errors about all these flows.

pub mod ct;
mod external;
pub mod frontend;
pub mod maps;
pub mod masq;
mod nat;
mod port;
pub mod quoted;
mod reject;
pub mod select;

pub use self::external::from_netdev;

use weir_common::{
    Backend, CT_F_CLOSING, CT_F_EXTERNAL, CT_F_HAIRPIN, CT_F_MASQ, CT_F_SNAT, CT_IN, CT_OUT, Dir, EVENT_DROP,
    Reason, Scratch,
};

use self::{
    ct::{Sender, Tuple},
    frontend::Empty,
    maps::{BACKENDS, CONNTRACK, SCRATCH},
};
use crate::{
    events,
    frame::Frame,
    metrics::Action,
    packet::{Family, Flow},
    route,
};

const NS: u64 = 1_000_000_000;

/// What the load balancer needs of an IP version.
pub trait Lb: nat::Rewrite + reject::Reject {}
impl<F: nat::Rewrite + reject::Reject> Lb for F {}

/// Puts a packet translated to `flow` back as it came (as `external` kept
/// it, [`crate::packet::keep`]): how XDP hands TC a packet it cannot send on
/// itself ([`crate::xdp`]).
#[inline(always)]
pub fn untranslate<F: Lb, C: Frame>(ctx: &C, flow: &mut Flow<F>) -> Result<(), Reason> {
    let kept = &scratch()?.kept;
    nat::snat(ctx, flow, &kept.saddr, kept.sport)?;
    nat::dnat(ctx, flow, &kept.daddr, kept.dport)
}

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
pub fn to_pod<F: Lb, C: Frame>(ctx: &C, flow: &mut Flow<F>) -> Result<(), Reason> {
    let now = crate::clock::now();
    let from = Backends::Local { host_stack: false };
    reply(ctx, flow, scratch()?, now, from).map(|_| ())
}

/// A packet a pod sends, translated in place: `Some(action)` when it has been
/// answered (a rejection) or sent on (the reply of an external flow) here.
/// `host_stack`: see [`Backends::Local`].
#[inline(always)]
pub fn from_pod<F: Lb, C: Frame>(
    ctx: &C,
    flow: &mut Flow<F>,
    host_stack: bool,
) -> Result<Option<Action>, Reason> {
    let now = crate::clock::now();
    let s = scratch()?;

    // 1. A packet of a flow we translated.
    if established(ctx, flow, s, now, 0, CT_F_HAIRPIN)? {
        return Ok(None);
    }

    // 2. A local backend answering a translated flow; an external client's
    //    answer now comes from a node address and is routed here.
    match reply(ctx, flow, s, now, Backends::Local { host_stack })? {
        Reply::None | Reply::Orphan => {}
        Reply::Of(flags) if flags & CT_F_EXTERNAL != 0 => {
            return route::forward(ctx, flow).map(|tc| Some(Action::forward(tc)));
        }
        Reply::Of(_) => return Ok(None),
    }

    // 3. A new flow. A pod is inside the cluster: it gets a frontend's
    //    cluster-wide entry.
    let chosen = match choose(ctx, flow, s, now, || true, Dir::FromPod)? {
        NewFlow::NotAFrontend => return Ok(None),
        NewFlow::Answered(action) => return Ok(Some(action)),
        NewFlow::Chosen(chosen) => chosen,
    };
    // A pod reaching itself through its service: without a new source the reply
    // would never leave the pod.
    if F::is(&flow.saddr, &chosen.backend.addr) {
        let snat = Snat {
            addr: &F::HAIRPIN,
            port: flow.sport,
        };
        translate_new(ctx, flow, s, &chosen, Some(snat), CT_F_HAIRPIN, now)
    } else {
        translate_new(ctx, flow, s, &chosen, None, 0, now)
    }
    .map(|()| None)
}

/// A packet of a flow translated before goes to the same backend as before,
/// even if the service's endpoints have changed since. `only`: `CT_F_*` flags
/// the flow's entry must carry; `new_source`: the `CT_F_*` flag under which
/// this hook gives the packet the entry's new source (`CT_F_HAIRPIN` on a
/// pod's veth, `CT_F_SNAT` on a node device: the one kind of flow each
/// creates, so that a packet matching another hook's entry is never given a
/// source it could not have had). Masqueraded flows' entries are the node
/// device's egress alone (`masq`): they are never a known flow here. Whether
/// the packet was one.
#[inline(always)]
fn established<F: Lb, C: Frame>(
    ctx: &C,
    flow: &mut Flow<F>,
    s: &mut Scratch,
    now: u64,
    only: u8,
    new_source: u8,
) -> Result<bool, Reason> {
    ct::fill_key(&mut s.out_key, flow, Tuple::AsSent, CT_OUT);
    let Some(entry) = ct::lookup(&s.out_key, now) else {
        return Ok(false);
    };
    // SAFETY: a pointer into the map's value, valid for this run.
    let e = unsafe { &*entry };
    if e.flags & only != only || e.flags & CT_F_MASQ != 0 || ct::is_reuse(entry, flow) {
        return Ok(false);
    }
    ct::refresh(entry, flow, now, Sender::Client);
    if e.flags & new_source != 0 {
        nat::snat(ctx, flow, &e.nat2_addr, e.nat2_port)?;
    }
    nat::dnat(ctx, flow, &e.nat_addr, e.nat_port)?;
    flow.translated = true;
    Ok(true)
}

/// Whose replies a hook reverse-translates.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backends {
    /// A pod's veth (and a node device's egress, for hostNetwork endpoints):
    /// local backends' replies. `host_stack` (`NODE_F_HOST_STACK`): a reply to
    /// a pod is recognised but left as it is, to be translated on the client's
    /// veth once the host's stack has delivered it there.
    Local { host_stack: bool },
    /// A node device's ingress: remote backends' replies to flows source-NATed
    /// to this node.
    Remote,
}

/// What [`reply`] found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// Not the reply of a flow translated here.
    None,
    /// The reply of a source-NATed flow whose forward entry is gone: nothing
    /// left to translate it to.
    Orphan,
    /// A reply, made to come from the frontend (and, hairpinned or
    /// source-NATed, to go back to the client): its flow's `CT_F_*` flags.
    Of(u8),
}

/// A backend's reply to a translated flow.
#[inline(always)]
fn reply<F: Lb, C: Frame>(
    ctx: &C,
    flow: &mut Flow<F>,
    s: &mut Scratch,
    now: u64,
    from: Backends,
) -> Result<Reply, Reason> {
    ct::fill_key(&mut s.in_key, flow, Tuple::AsSent, CT_IN);
    // SAFETY: valid for this run.
    let Some(reply) = (unsafe { CONNTRACK.get(&s.in_key) }) else {
        return Ok(Reply::None);
    };
    // Source-NATed flows have remote backends, whose replies arrive on a node
    // device; the others' arrive from a local backend.
    let snat = reply.flags & CT_F_SNAT != 0;
    if snat != (from == Backends::Remote) {
        return Ok(Reply::None);
    }
    // The pair lives by its CT_OUT entry (the rule the agent's GC applies too).
    s.out_key = s.in_key.out_partner(reply);
    let Some(entry) = ct::lookup(&s.out_key, now) else {
        return Ok(if snat { Reply::Orphan } else { Reply::None });
    };
    // A local backend's reply entry speaks for its flow only while that flow
    // is this one: its forward entry still sends to this backend (a reused
    // tuple may have been sent elsewhere since), and it is not a new
    // connection's handshake after the flow closed (the client reused its port
    // to reach the backend directly: netfilter's rule, a SYN on a closing entry
    // starts over). A source-NATed flow's port is not reused while it lives.
    if !snat && (!ct::answers(entry, &s.in_key) || ct::is_reopened(entry, flow)) {
        let _ = CONNTRACK.remove(&s.in_key);
        return Ok(Reply::None);
    }
    if from == (Backends::Local { host_stack: true }) && reply.flags & (CT_F_EXTERNAL | CT_F_HAIRPIN) == 0 {
        return Ok(Reply::Of(reply.flags));
    }
    ct::refresh(entry, flow, now, Sender::Peer);
    nat::snat(ctx, flow, &reply.nat_addr, reply.nat_port)?;
    if reply.flags & (CT_F_HAIRPIN | CT_F_SNAT) != 0 {
        nat::dnat(ctx, flow, &reply.nat2_addr, reply.nat2_port)?;
    }
    Ok(Reply::Of(reply.flags))
}

/// A new flow's backend.
struct Chosen {
    backend: &'static Backend,
    backend_id: u32,
    rev_nat_id: u32,
    /// The frontend's `SVC_F_*`.
    flags: u32,
}

/// What [`choose`] decided.
enum NewFlow {
    NotAFrontend,
    /// Rejected: the client has been answered.
    Answered(Action),
    Chosen(Chosen),
}

/// A new flow: is its destination a frontend, and which backend serves it?
/// `inside`: whether the client is inside the cluster (see
/// [`frontend::inside`]), asked only of a frontend whose traffic policies
/// differ by client (it may cost a lookup in an LPM trie: most packets to a
/// node are for no frontend, or for one without twins); `dir`: where, for
/// the event of a frontend without a usable backend.
#[inline(always)]
fn choose<F: Lb, C: Frame>(
    ctx: &C,
    flow: &Flow<F>,
    s: &mut Scratch,
    now: u64,
    inside: impl FnOnce() -> bool,
    dir: Dir,
) -> Result<NewFlow, Reason> {
    let mut key = frontend::of_flow(flow);
    let Some(mut svc) = frontend::lookup(&key) else {
        ct::yield_reply_tuple(s, flow);
        return Ok(NewFlow::NotAFrontend);
    };
    if frontend::two_scopes(&svc) && inside() {
        svc = frontend::inside(&mut key, svc)?;
    }
    let rev_nat_id = svc.rev_nat_id;
    // Before the check for endpoints, as kube-proxy's nftables mode does (its
    // iptables mode rejects outsiders of a Service without endpoints): a
    // source outside the ranges learns nothing of the Service.
    if !frontend::admits::<F>(&svc, &flow.saddr) {
        refused(ctx, flow, dir, Reason::SourceRange, rev_nat_id);
        return Err(Reason::SourceRange);
    }
    match frontend::empty(&svc) {
        None => {}
        Some(Empty::Drop) => {
            refused(ctx, flow, dir, Reason::NoLocalBackend, rev_nat_id);
            return Err(Reason::NoLocalBackend);
        }
        Some(Empty::Reject) => {
            // `flow` is the packet as it came: the rejection rewrites the
            // packet, not it.
            let tc = reject::port_unreachable(ctx, flow, s);
            match tc {
                Ok(_) => refused(ctx, flow, dir, Reason::NoBackend, rev_nat_id),
                Err(Reason::RejectLimited) => refused(ctx, flow, dir, Reason::RejectLimited, rev_nat_id),
                Err(_) => {}
            }
            return Ok(NewFlow::Answered(Action {
                tc: tc?,
                reason: Reason::NoBackend,
            }));
        }
    }
    let backend_id = select::backend(flow, &key, &svc, now)?;
    // SAFETY: valid for this run.
    let backend = unsafe { BACKENDS.get(&backend_id) }.ok_or(Reason::BackendMissing)?;
    Ok(NewFlow::Chosen(Chosen {
        backend,
        backend_id,
        rev_nat_id: svc.rev_nat_id,
        flags: svc.flags,
    }))
}

/// The event of a new flow to a frontend dropped or refused (no usable
/// backend, a source outside its ranges): the Service named by its
/// reverse-NAT id.
#[inline(always)]
fn refused<F: Lb, C: Frame>(ctx: &C, flow: &Flow<F>, dir: Dir, reason: Reason, rev_nat_id: u32) {
    if let Some(mut entry) = events::of_flow(flow, EVENT_DROP, dir, reason, ctx.ifindex()) {
        // SAFETY: the reserved entry is ours until submitted.
        unsafe { (*entry.as_mut_ptr()).rev_nat_id = rev_nat_id };
        entry.submit(0);
    }
}

impl Chosen {
    /// What [`track`] records of it.
    #[inline(always)]
    fn target(&self) -> Target<'static> {
        Target {
            addr: &self.backend.addr,
            port: self.backend.port,
            rev_nat_id: self.rev_nat_id,
            backend_id: self.backend_id,
        }
    }
}

/// Where a tracked flow now goes (a backend; a masqueraded flow's own
/// destination), and the frontend and backend ids it went by (0: none).
struct Target<'a> {
    addr: &'a [u8; 16],
    port: u16,
    rev_nat_id: u32,
    backend_id: u32,
}

/// A new source for a flow: the hairpin address, or the node's.
struct Snat<'a> {
    addr: &'a [u8; 16],
    port: u16,
}

/// A new flow to `chosen`: its translation recorded (`flags`: `CT_F_*`), then
/// its first packet translated: from `snat` if given, to the backend.
#[inline(always)]
fn translate_new<F: Lb, C: Frame>(
    ctx: &C,
    flow: &mut Flow<F>,
    s: &mut Scratch,
    chosen: &Chosen,
    snat: Option<Snat<'_>>,
    flags: u8,
    now: u64,
) -> Result<(), Reason> {
    track(flow, s, &chosen.target(), snat.as_ref(), flags, now)?;
    if let Some(snat) = snat {
        nat::snat(ctx, flow, snat.addr, snat.port)?;
    }
    nat::dnat(ctx, flow, &chosen.backend.addr, chosen.backend.port)?;
    flow.translated = true;
    // The pair just recorded is still in the scratch value.
    if events::tracing() {
        let dir = if flags & CT_F_EXTERNAL != 0 {
            C::NETDEV
        } else {
            Dir::FromPod
        };
        events::translated(s, dir, ctx.ifindex());
    }
    Ok(())
}

/// Records a new translated flow both ways, the reply entry first: once the
/// forward entry exists, packets are translated and their replies must find it.
///
/// The pair is built field by field in the scratch value and inserted from there:
/// built on the stack, the two keys and two values would not fit in the 512-byte
/// frame beside the rest of the hot path.
#[inline(always)]
fn track<F: Family>(
    flow: &Flow<F>,
    s: &mut Scratch,
    to: &Target<'_>,
    snat: Option<&Snat<'_>>,
    flags: u8,
    now: u64,
) -> Result<(), Reason> {
    let flags = ct::new_flags(flow) | flags;

    // The backend's reply, to the client (or to its new source).
    ct::fill_key(&mut s.in_key, flow, Tuple::AsReply, CT_IN);
    let k = &mut s.in_key;
    k.saddr.copy_from_slice(to.addr);
    k.sport = to.port;
    if let Some(snat) = snat {
        k.daddr.copy_from_slice(snat.addr);
        k.dport = snat.port;
        F::widen(&flow.saddr, &mut s.back.nat2_addr);
        s.back.nat2_port = flow.sport;
    } else {
        s.back.nat2_addr = [0; 16];
        s.back.nat2_port = 0;
    }
    F::widen(&flow.daddr, &mut s.back.nat_addr);
    s.back.nat_port = flow.dport;
    s.back.rev_nat_id = to.rev_nat_id;
    s.back.flags = flags;
    s.back.fins = 0;
    s.back._pad = [0; 2];
    s.back.backend_id = to.backend_id;
    s.back.expires_ns = 0;
    CONNTRACK
        .insert(&s.in_key, &s.back, 0)
        .map_err(|_| Reason::CtFull)?;

    ct::fill_key(&mut s.out_key, flow, Tuple::AsSent, CT_OUT);
    s.out.nat_addr.copy_from_slice(to.addr);
    if let Some(snat) = snat {
        s.out.nat2_addr.copy_from_slice(snat.addr);
        s.out.nat2_port = snat.port;
    } else {
        s.out.nat2_addr = [0; 16];
        s.out.nat2_port = 0;
    }
    s.out.nat_port = to.port;
    s.out.rev_nat_id = to.rev_nat_id;
    s.out.flags = flags;
    s.out.fins = 0;
    s.out._pad = [0; 2];
    s.out.backend_id = to.backend_id;
    s.out.expires_ns = now + ct::lifetime(flow, flags & CT_F_CLOSING != 0) * NS;
    CONNTRACK
        .insert(&s.out_key, &s.out, 0)
        .map_err(|_| Reason::CtFull)
}
