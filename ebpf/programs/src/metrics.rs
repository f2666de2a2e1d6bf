//! Per-CPU packet and byte counters per (direction, reason).

use crate::{events, frame::Frame};
use aya_ebpf::maps::PerCpuArray;
use weir_common::{Dir, MetricValue, Reason, maps, metrics_index};

bpf_map! {
    static METRICS: PerCpuArray<MetricValue> = PerCpuArray::with_max_entries(maps::METRICS_ENTRIES, 0);
}

/// A TC action and the reason it is counted under: a rejection is answered (a
/// redirect), yet counted as what it is.
pub struct Action {
    pub tc: i32,
    pub reason: Reason,
}

impl Action {
    pub const fn forward(tc: i32) -> Self {
        Self {
            tc,
            reason: Reason::Forwarded,
        }
    }

    /// XDP passing a packet on to TC untouched.
    pub const fn to_tc(pass: i32) -> Self {
        Self {
            tc: pass,
            reason: Reason::ToTc,
        }
    }
}

/// Counts one event under `reason`, `ctx_len` bytes: a packet beside its
/// verdict (which is counted too), or a socket hook's call (no bytes).
#[inline(always)]
pub fn note(ctx_len: u32, dir: Dir, reason: Reason) {
    if let Some(slot) = METRICS.get_ptr_mut(metrics_index(dir, reason)) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += u64::from(ctx_len);
        }
    }
}

/// Counts the packet under its reason and turns the result into a TC verdict:
/// `Ok(action)` returns its action, `Err(reason)` drops. A drop is noted for
/// the event stream ([`events::after`] reports it), unless it was reported
/// where it was decided ([`events::reported_at_source`]).
#[inline(always)]
pub fn verdict<C: Frame>(ctx: &C, dir: Dir, result: Result<Action, Reason>) -> i32 {
    let (reason, action) = match result {
        Ok(Action { tc, reason }) => (reason, tc),
        Err(reason) => {
            events::pending(dir, reason);
            (reason, C::DROP)
        }
    };
    if let Some(slot) = METRICS.get_ptr_mut(metrics_index(dir, reason)) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += u64::from(ctx.len());
        }
    }
    action
}
