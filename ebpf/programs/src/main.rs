//! Weir's TC programs on the host side of each pod's veth.
//!
//! Entry points are thin: `try_*` computes a verdict or a drop reason, and the
//! entry point counts it in `weir_metrics_v1` before returning it to TC.
#![no_std]
#![no_main]

mod endpoints;
mod lb;
mod metrics;

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use weir_common::{Dir, Reason};

/// TC ingress on the host veth: packets the pod sends.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    metrics::verdict(&ctx, Dir::FromPod, try_forward(&ctx))
}

/// TC egress on the host veth: packets on their way into the pod.
#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    metrics::verdict(&ctx, Dir::ToPod, try_forward(&ctx))
}

/// Until services and policy land, every packet continues through the kernel's
/// routing unchanged.
#[inline(always)]
fn try_forward(_ctx: &TcContext) -> Result<i32, Reason> {
    Ok(TC_ACT_OK)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
