//! The datapath's clock: CLOCK_MONOTONIC at the kernel tick's resolution.
//!
//! Conntrack, affinity and policy entries live for seconds, and the agent's
//! collector compares them with CLOCK_MONOTONIC, which the coarse clock trails
//! by at most one tick. `bpf_ktime_get_ns` reads the clock source itself (the
//! TSC, slow under a hypervisor): 9% of `into_peer`'s time in a profile of
//! pod-to-pod traffic, where this costs a load.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;

/// Now, in nanoseconds of CLOCK_MONOTONIC (coarse).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}
