//! What the datapath reports as it happens ([`Event`]s in `weir_events_v2`,
//! a ring buffer the agent alone reads and hands to every `weirctl monitor`).
//!
//! - Drops, always: where the drop is decided with more to say than the
//!   packet (policy's, with the endpoint and the peer's identity; a Service
//!   without endpoints, with the Service), else from the packet's headers as
//!   they are when [`crate::metrics::verdict`] drops it. Within
//!   [`DROPS_PER_SEC`] a CPU (after a burst of as many): a flood costs a count
//!   per packet, never an event per packet.
//! - New flows' decisions, while tracing is on ([`tracing`]): the load
//!   balancer's translation ([`translated`]), the policy verdicts that
//!   admitted a flow. Off, a new flow pays one test of a flag in the node's
//!   entry, which the hooks have read anyway.
//!
//! Events are written straight into the ring buffer's memory, never built on
//! the stack, which has no room beside the hot path.

use aya_ebpf::maps::{PerCpuArray, RingBuf, ring_buf::RingBufEntry};
use weir_common::{Dir, EVENT_DROP, EVENT_TRANSLATE, Event, NODE_F_TRACE, Reason, Scratch, maps};

use crate::{
    frame::Frame,
    lb::maps::NODE,
    packet::{self, Family, Flow, V4, V6},
};

bpf_map! {
    static EVENTS: RingBuf = RingBuf::with_byte_size(maps::EVENTS_BYTES, 0);
}

bpf_map! {
    static EVENT_BUDGET: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);
}

/// [`EVENT_BUDGET`]'s slot of the drop [`crate::metrics::verdict`] gave, to be
/// reported once the hook's work is done ([`after`]): `PENDING_SET | dir << 8
/// | reason`, 0 for none. (Slot 0 is the rate's.)
const PENDING: u32 = 1;
const PENDING_SET: u64 = 1 << 16;

/// Drop events per second and CPU (and the burst reported at once).
const DROPS_PER_SEC: u64 = 1_000;

/// Whether new flows' decisions are reported (`NODE_F_TRACE`).
#[inline(always)]
pub fn tracing() -> bool {
    let Some(node) = NODE.get(0) else {
        return false;
    };
    node.flags & NODE_F_TRACE != 0
}

/// Whether a drop of this reason is reported where it is decided (see the
/// module's note), not by [`crate::metrics::verdict`].
#[inline(always)]
pub const fn reported_at_source(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::PolicyIngress
            | Reason::PolicyEgress
            | Reason::IcmpUnrelated
            | Reason::NoBackend
            | Reason::NoLocalBackend
            | Reason::RejectLimited
            | Reason::SourceRange
    )
}

/// A new event of `kind`, every field zero but those given; `None` when the
/// reader is behind (the ring buffer is full) or, for a drop, over the rate.
/// The caller fills in the rest and submits it.
#[inline(always)]
pub fn reserve(kind: u8, dir: Dir, reason: Reason, ifindex: u32) -> Option<RingBufEntry<Event>> {
    if kind == EVENT_DROP && !crate::rate::within(&EVENT_BUDGET, DROPS_PER_SEC, crate::clock::now()) {
        return None;
    }
    let mut entry = EVENTS.reserve::<Event>(0)?;
    let e = entry.as_mut_ptr();
    // SAFETY: the reserved entry is ours until submitted; every field is
    // written, one by one (a whole `Event` would be built on the stack).
    unsafe {
        (*e).saddr = [0; 16];
        (*e).daddr = [0; 16];
        (*e).sport = 0;
        (*e).dport = 0;
        (*e).proto = 0;
        (*e).family = 0;
        (*e).reason = reason as u8;
        (*e).kind = kind;
        (*e).endpoint = 0;
        (*e).identity = 0;
        (*e).dir = dir as u8;
        (*e).ct_flags = 0;
        (*e).nat_port = 0;
        (*e).ifindex = ifindex;
        (*e).nat_addr = [0; 16];
        (*e).nat2_addr = [0; 16];
        (*e).nat2_port = 0;
        (*e)._pad = 0;
        (*e).rev_nat_id = 0;
    }
    Some(entry)
}

/// [`reserve`], with the flow's tuple written.
#[inline(always)]
pub fn of_flow<F: Family>(
    flow: &Flow<F>,
    kind: u8,
    dir: Dir,
    reason: Reason,
    ifindex: u32,
) -> Option<RingBufEntry<Event>> {
    let mut entry = reserve(kind, dir, reason, ifindex)?;
    let e = entry.as_mut_ptr();
    // SAFETY: as in `reserve`.
    unsafe {
        F::widen(&flow.saddr, &mut (*e).saddr);
        F::widen(&flow.daddr, &mut (*e).daddr);
        (*e).sport = flow.sport;
        (*e).dport = flow.dport;
        (*e).proto = flow.proto;
        (*e).family = F::AF;
    }
    Some(entry)
}

/// Notes a drop [`crate::metrics::verdict`] gives, for [`after`] to report
/// (unless it was where it was decided):
/// the verdict is given in every hook's deepest frame, where there is no
/// stack left for a call.
#[inline(always)]
pub fn pending(dir: Dir, reason: Reason) {
    let slot = EVENT_BUDGET.get_ptr_mut(PENDING);
    // Through memory: LLVM would fold its test with the verdict's own tests
    // into one on the map pointer, pointer arithmetic the verifier refuses.
    // SAFETY: reading a live local.
    if let Some(slot) = unsafe { core::ptr::read_volatile(&slot) } {
        // SAFETY: this CPU's value; nothing else runs on this CPU while we do.
        unsafe { *slot = PENDING_SET | (dir as u64) << 8 | reason as u64 };
    }
}

/// What every hook returns through: a drop noted by [`pending`] is reported,
/// with the packet's headers as they are now. Nothing but a comparison for
/// a packet not dropped.
#[inline(always)]
pub fn after<C: Frame>(ctx: &C, verdict: i32) -> i32 {
    if verdict == C::DROP {
        dropped::<C>(ctx.raw());
    }
    verdict
}

#[inline(never)]
fn dropped<C: Frame>(raw: *mut core::ffi::c_void) {
    let Some(slot) = EVENT_BUDGET.get_ptr_mut(PENDING) else {
        return;
    };
    // SAFETY: this CPU's value; nothing else runs on this CPU while we do.
    let noted = unsafe { core::ptr::replace(slot, 0) };
    if noted & PENDING_SET == 0 {
        return;
    }
    let (Ok(dir), Ok(reason)) = (Dir::try_from((noted >> 8) as u8), Reason::try_from(noted as u8)) else {
        return;
    };
    if reported_at_source(reason) {
        return;
    }
    // SAFETY: `raw` is this hook's context, as the hook had it.
    let ctx = unsafe { C::from_raw(raw) };
    let ifindex = ctx.ifindex();
    let entry = match packet::ethertype(&ctx) {
        Ok(V4::ETH_P) => headers::<V4, C>(&ctx, dir, reason, ifindex),
        Ok(V6::ETH_P) => headers::<V6, C>(&ctx, dir, reason, ifindex),
        _ => reserve(EVENT_DROP, dir, reason, ifindex),
    };
    if let Some(entry) = entry {
        entry.submit(0);
    }
}

/// A drop's event with what of the packet's headers can be read (nothing of
/// a malformed one).
#[inline(always)]
fn headers<F: Family, C: Frame>(
    ctx: &C,
    dir: Dir,
    reason: Reason,
    ifindex: u32,
) -> Option<RingBufEntry<Event>> {
    match packet::parse_any::<F, C>(ctx) {
        Ok(p) => of_flow(&p.flow, EVENT_DROP, dir, reason, ifindex),
        Err(_) => reserve(EVENT_DROP, dir, reason, ifindex),
    }
}

/// A new flow the load balancer (or masquerade) has just recorded in the
/// scratch value's conntrack pair: its tuple as sent, where it now goes and
/// from where, and the Service. Tracing only; written from the scratch value
/// straight into the event, which takes no stack.
#[inline(always)]
pub fn translated(s: &Scratch, dir: Dir, ifindex: u32) {
    let Some(mut entry) = reserve(EVENT_TRANSLATE, dir, Reason::Forwarded, ifindex) else {
        return;
    };
    let e = entry.as_mut_ptr();
    let (k, v) = (&s.out_key, &s.out);
    // SAFETY: as in `reserve`.
    unsafe {
        (*e).saddr = k.saddr;
        (*e).daddr = k.daddr;
        (*e).sport = k.sport;
        (*e).dport = k.dport;
        (*e).proto = k.proto;
        (*e).family = k.family;
        (*e).ct_flags = v.flags;
        (*e).nat_addr = v.nat_addr;
        (*e).nat_port = v.nat_port;
        (*e).nat2_addr = v.nat2_addr;
        (*e).nat2_port = v.nat2_port;
        (*e).rev_nat_id = v.rev_nat_id;
    }
    entry.submit(0);
}
