//! Node devices' XDP program (`--nodeport-acceleration`): the load balancer's
//! external steps (`lb::from_netdev`, the same code TC runs) on the frame as the
//! driver hands it over, before a socket buffer exists.
//!
//! XDP finishes what it can alone: a packet translated for a remote backend,
//! or a remote backend's reply translated back to its client, leaves by the
//! device it came in on (`XDP_TX`) when the FIB says so and the next hop is
//! resolved. Everything else is passed on to TC untouched (no frontend, a
//! fragment, IP options, ICMP, a rejection to answer) or, once translated,
//! handed over: a 4-byte mark in the frame's metadata tells TC to send the
//! packet on by route (`route::forward`) rather than take it for a new one.
//! Were it passed without, the host's stack would drop it as a martian (its
//! source is now the node's own address).

use aya_ebpf::{
    bindings::{__sk_buff, xdp_action, xdp_md},
    helpers::bpf_xdp_adjust_meta,
    programs::{TcContext, XdpContext},
};
use weir_common::Reason;

use crate::frame::Frame;

/// The metadata mark of a packet XDP translated (the bytes "weir").
const HANDED_OVER: u32 = u32::from_ne_bytes(*b"weir");
const META_LEN: usize = size_of::<u32>();

/// Hands a packet XDP translated to TC (see the module's note). `ctx` is
/// XDP's.
#[inline(always)]
pub fn hand_to_tc<C: Frame>(ctx: &C) -> Result<i32, Reason> {
    let md: *mut xdp_md = ctx.raw().cast();
    // SAFETY: the context pointer is XDP's, valid for this run.
    if unsafe { bpf_xdp_adjust_meta(md, -(META_LEN as i32)) } != 0 {
        return Err(Reason::RewriteFailed);
    }
    // SAFETY: as above; the metadata is bounds-checked against the data.
    unsafe {
        let meta = (*md).data_meta as usize;
        if meta + META_LEN > (*md).data as usize {
            return Err(Reason::RewriteFailed);
        }
        *(meta as *mut u32) = HANDED_OVER;
    }
    Ok(xdp_action::XDP_PASS as i32)
}

/// Whether [`hand_to_tc`] marked this frame (it has metadata: nothing else
/// here gives it any).
#[inline(always)]
pub fn marked(ctx: &XdpContext) -> bool {
    ctx.metadata() < ctx.data()
}

/// Whether XDP translated this packet and handed it over.
#[inline(always)]
pub fn handed_over(ctx: &TcContext) -> bool {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: the skb pointer is valid for this run; the metadata is
    // bounds-checked against the data before it is read.
    unsafe {
        let meta = (*skb).data_meta as usize;
        if meta + META_LEN > (*skb).data as usize {
            return false;
        }
        *(meta as *const u32) == HANDED_OVER
    }
}
