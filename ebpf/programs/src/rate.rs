//! Per-CPU rate limits: a GCRA token bucket in a one-slot per-CPU array, which
//! holds when the next event is due; events may run up to a second's worth
//! ahead of that (the burst).

use aya_ebpf::maps::PerCpuArray;

/// Whether one more of `per_sec` events a second may happen now on this CPU.
#[inline(always)]
pub fn within(budget: &PerCpuArray<u64>, per_sec: u64, now: u64) -> bool {
    let interval = 1_000_000_000 / per_sec;
    let Some(due) = budget.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's value; nothing else runs on this CPU while we do.
    let due = unsafe { &mut *due };
    let next = if *due < now { now } else { *due };
    if next - now > per_sec * interval {
        return false;
    }
    *due = next + interval;
    true
}
