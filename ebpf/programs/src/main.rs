//! Weir's TC programs on the host side of each pod's veth.
//!
//! Entry points are thin: `try_*` computes a verdict or a drop reason, and the
//! entry point counts it in `weir_metrics_v1` before returning it to TC.
#![no_std]
#![no_main]

mod endpoints;
mod lb;
mod metrics;
mod packet;

use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::bpf_redirect_neigh,
    macros::classifier,
    programs::TcContext,
};
use weir_common::{Dir, EndpointKey, Reason};

use crate::{lb::Verdict, metrics::Action};

/// TC ingress on the host veth: packets the pod sends.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    metrics::verdict(&ctx, Dir::FromPod, try_from_pod(&ctx))
}

/// TC egress on the host veth: packets on their way into the pod.
#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    metrics::verdict(&ctx, Dir::ToPod, try_to_pod(&ctx))
}

#[inline(always)]
fn try_to_pod(ctx: &TcContext) -> Result<Action, Reason> {
    if let Some(flow) = packet::parse(ctx)? {
        lb::to_pod(ctx, flow)?;
    }
    Ok(Action::forward(TC_ACT_OK))
}

#[inline(always)]
fn try_from_pod(ctx: &TcContext) -> Result<Action, Reason> {
    let Some(flow) = packet::parse(ctx)? else {
        return Ok(Action::forward(TC_ACT_OK));
    };
    let flow = match lb::from_pod(ctx, flow)? {
        Verdict::Pass(flow) => flow,
        Verdict::Done(action) => return Ok(action),
    };
    // A local pod: hand the packet straight to its veth. This skips the host's
    // routing and its reverse-path filter, which would refuse a reply whose
    // source is now a frontend address the host has no route for.
    // SAFETY: valid for this run.
    if let Some(ep) = unsafe { endpoints::ENDPOINTS.get(&EndpointKey::v4(flow.daddr)) } {
        // SAFETY: no preconditions; the verdict says where the packet goes.
        let tc = unsafe { bpf_redirect_neigh(ep.ifindex, core::ptr::null_mut(), 0, 0) } as i32;
        return Ok(Action::forward(tc));
    }
    Ok(Action::forward(TC_ACT_OK))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
