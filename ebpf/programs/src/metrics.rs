//! Per-CPU packet and byte counters per (direction, reason).

use aya_ebpf::{bindings::TC_ACT_SHOT, macros::map, maps::PerCpuArray, programs::TcContext};
use weir_common::{Dir, MetricValue, Reason, maps, metrics_index};

#[map(name = "weir_metrics_v1")]
static METRICS: PerCpuArray<MetricValue> = PerCpuArray::with_max_entries(maps::METRICS_ENTRIES, 0);

/// Counts the packet under its reason and turns the result into a TC verdict:
/// `Ok(v)` passes `v` through, `Err(reason)` drops.
#[inline(always)]
pub fn verdict(ctx: &TcContext, dir: Dir, result: Result<i32, Reason>) -> i32 {
    let (reason, action) = match result {
        Ok(action) => (Reason::Forwarded, action),
        Err(reason) => (reason, TC_ACT_SHOT),
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
