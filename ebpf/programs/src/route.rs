//! Sending a translated packet on by a route lookup of our own.
//!
//! A packet whose source has become one of the node's addresses (the reply of an
//! external flow, now from the node port it was sent to; a request source-NATed
//! to the node) must not enter the host's input path: it would be dropped there
//! as a martian (a local source arriving from outside). The FIB tells where it
//! goes; the packet is redirected there with its MAC addresses filled in, or by
//! the neighbour subsystem when the next hop is not resolved yet. A packet
//! redirected with its MACs carries [`MARK_ROUTED`] to the device's egress.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibLookup, xdp_action,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
};
use weir_common::{MARK_ROUTED, Reason};

use crate::{
    frame::Frame,
    packet::{Family, Flow},
};

/// `struct bpf_fib_lookup`, with plain fields where the kernel's has unions.
#[repr(C)]
struct FibParams {
    family: u8,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    tot_len: u16,
    ifindex: u32,
    flowinfo: u32,
    /// IPv4 in the first 4 bytes.
    src: [u8; 16],
    dst: [u8; 16],
    vlan: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<FibParams>() == core::mem::size_of::<FibLookup>());

impl FibParams {
    /// A lookup of family `F` as if forwarding what came in by `ifindex`;
    /// everything else zero.
    #[inline(always)]
    fn new<F: Family>(ifindex: u32) -> Self {
        Self {
            family: F::AF,
            l4_protocol: 0,
            sport: 0,
            dport: 0,
            tot_len: 0,
            ifindex,
            flowinfo: 0,
            src: [0; 16],
            dst: [0; 16],
            vlan: 0,
            smac: [0; 6],
            dmac: [0; 6],
        }
    }
}

/// Redirects the packet to where the FIB routes its destination; the hook's
/// verdict.
/// What the FIB does not forward (a local destination, no route) goes to the
/// host's stack as it is.
#[inline(always)]
pub fn forward<F: Family, C: Frame>(ctx: &C, flow: &Flow<F>) -> Result<i32, Reason> {
    let mut p = FibParams::new::<F>(ctx.ifindex());
    p.l4_protocol = flow.proto;
    p.sport = flow.sport;
    p.dport = flow.dport;
    F::widen(&flow.saddr, &mut p.src);
    F::widen(&flow.daddr, &mut p.dst);
    // SAFETY: `p` is laid out as the helper's struct and lives on our stack.
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.raw().cast(),
            (&raw mut p).cast(),
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    let Some(tc) = ctx.as_tc() else {
        // XDP: back out of the device it came in by (a remote backend, the
        // client of a remote backend's reply, on a one-armed node), or back
        // as it came to TC, which translates it again from the conntrack
        // entries made here and sends it on as below (the next hop
        // unresolved, another device, this node).
        if ret as u32 == BPF_FIB_LKUP_RET_SUCCESS && p.ifindex == ctx.ifindex() {
            set_macs(ctx, &p)?;
            return Ok(xdp_action::XDP_TX as i32);
        }
        return Ok(crate::HANDED);
    };
    let verdict = match ret as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            set_macs(ctx, &p)?;
            // SAFETY: the context's skb pointer is valid for this run; TC
            // programs may write the mark. Not on the neighbour path below:
            // its route lookup would see the mark.
            unsafe { (*tc.skb.skb).mark = MARK_ROUTED };
            // SAFETY: no preconditions; the verdict says where the packet goes.
            unsafe { bpf_redirect(p.ifindex, 0) as i32 }
        }
        // SAFETY: as above; the kernel resolves the next hop and fills the MACs.
        BPF_FIB_LKUP_RET_NO_NEIGH => unsafe {
            bpf_redirect_neigh(p.ifindex, core::ptr::null_mut(), 0, 0) as i32
        },
        _ => C::PASS,
    };
    Ok(verdict)
}

/// The device a packet to `dst` (maps' form) would leave by, as the FIB
/// routes it from where this one came in; 0 when it would not be forwarded.
/// Out of line: its lookup's buffer would not fit in the hot path's frame
/// beside [`forward`]'s. `raw`: the hook's context.
#[inline(never)]
pub fn egress<F: Family>(raw: *mut core::ffi::c_void, ingress: u32, dst: &[u8; 16]) -> u32 {
    let mut p = FibParams::new::<F>(ingress);
    p.dst.copy_from_slice(dst);
    // SAFETY: `p` is laid out as the helper's struct and lives on our stack;
    // `raw` is the caller's context.
    let ret = unsafe {
        bpf_fib_lookup(
            raw,
            (&raw mut p).cast(),
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    match ret as u32 {
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH => p.ifindex,
        _ => 0,
    }
}

/// Addresses the frame to the next hop the FIB found.
#[inline(always)]
fn set_macs<C: Frame>(ctx: &C, p: &FibParams) -> Result<(), Reason> {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&p.dmac);
    macs[6..].copy_from_slice(&p.smac);
    ctx.store(0, &macs, 0).map_err(|_| Reason::RewriteFailed)
}
