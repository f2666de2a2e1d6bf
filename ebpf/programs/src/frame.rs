//! The packet as the datapath reads and rewrites it, the same for TC's socket
//! buffer and XDP's frame: the load balancer's steps (`lb`) are written once
//! over [`Frame`] and run on both hooks of a node device.
//!
//! TC has helpers for everything here. XDP has `bpf_xdp_load_bytes` and
//! `bpf_xdp_store_bytes` but no checksum helpers: its frames carry complete
//! checksums (a driver hands XDP what came off the wire, never a checksum left
//! for offload), so the incremental updates of RFC 1624 are done here, with
//! the TC helpers' semantics (sizes, `BPF_F_MARK_MANGLED_0`, a size of 0 for a
//! precomputed difference from `bpf_csum_diff`).

use core::{ffi::c_void, mem::MaybeUninit, ptr};

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_MARK_MANGLED_0, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, xdp_action},
    helpers::{
        bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes, bpf_xdp_adjust_tail,
        bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    programs::{TcContext, XdpContext},
};
use weir_common::Dir;

/// A packet's bytes, its checksums and its hook's verdicts.
pub trait Frame {
    /// Let the packet go on its way (TC: into the stack; XDP: on to TC).
    const PASS: i32;
    /// Drop it.
    const DROP: i32;
    /// What a node device's packets are counted under on this hook.
    const NETDEV: Dir;

    fn load<T>(&self, at: usize) -> Result<T, i64>;
    fn store<T>(&self, at: usize, v: &T, flags: u64) -> Result<(), i64>;
    /// `bpf_l3_csum_replace`: the checksum at `at` follows a field of `size`
    /// bytes (2 or 4) going from `from` to `to` (as read from the packet).
    fn l3_csum_replace(&self, at: usize, from: u64, to: u64, size: u64) -> Result<(), i64>;
    /// `bpf_l4_csum_replace`: the same, flags and size (0: `to` is a
    /// difference) in `flags`.
    fn l4_csum_replace(&self, at: usize, from: u64, to: u64, flags: u64) -> Result<(), i64>;
    /// Copies `len` bytes from `at` in the packet to `to`.
    fn load_raw(&self, at: usize, to: *mut u8, len: usize) -> Result<(), i64>;
    /// Copies `len` bytes from `from` into the packet at `at`.
    fn store_raw(&self, at: usize, from: *const u8, len: usize) -> Result<(), i64>;
    /// Trims (or extends) the packet to `len` bytes.
    fn set_len(&self, len: u32) -> Result<(), i64>;
    /// Sends the packet back out of the device it came in by: the verdict.
    fn bounce(&self) -> i32;
    /// The packet's length.
    fn len(&self) -> u32;
    /// The device the packet arrived on (TC egress: leaves by).
    fn ifindex(&self) -> u32;
    /// The context pointer helpers take.
    fn raw(&self) -> *mut c_void;
    /// The context again, from [`Frame::raw`]: what crosses a BPF call.
    ///
    /// # Safety
    /// `raw` is this hook's context pointer, valid for this run.
    unsafe fn from_raw(raw: *mut c_void) -> Self;
    /// The TC context, when this is one: what only TC can do (answer a packet
    /// with a new one, redirect to a neighbour) asks for it.
    fn as_tc(&self) -> Option<&TcContext>;
}

impl Frame for TcContext {
    const PASS: i32 = TC_ACT_OK;
    const DROP: i32 = TC_ACT_SHOT;
    const NETDEV: Dir = Dir::FromNetdev;

    #[inline(always)]
    fn load<T>(&self, at: usize) -> Result<T, i64> {
        TcContext::load(self, at)
    }

    #[inline(always)]
    fn store<T>(&self, at: usize, v: &T, flags: u64) -> Result<(), i64> {
        TcContext::store(self, at, v, flags)
    }

    #[inline(always)]
    fn l3_csum_replace(&self, at: usize, from: u64, to: u64, size: u64) -> Result<(), i64> {
        TcContext::l3_csum_replace(self, at, from, to, size)
    }

    #[inline(always)]
    fn l4_csum_replace(&self, at: usize, from: u64, to: u64, flags: u64) -> Result<(), i64> {
        TcContext::l4_csum_replace(self, at, from, to, flags)
    }

    #[inline(always)]
    fn load_raw(&self, at: usize, to: *mut u8, len: usize) -> Result<(), i64> {
        // SAFETY: the caller's `to` has room for `len` bytes.
        ok(unsafe { bpf_skb_load_bytes(self.as_ptr(), at as u32, to.cast(), len as u32) })
    }

    #[inline(always)]
    fn store_raw(&self, at: usize, from: *const u8, len: usize) -> Result<(), i64> {
        // SAFETY: the caller's `from` holds `len` bytes.
        ok(unsafe { bpf_skb_store_bytes(self.skb.skb, at as u32, from.cast(), len as u32, 0) })
    }

    #[inline(always)]
    fn set_len(&self, len: u32) -> Result<(), i64> {
        // SAFETY: the context's skb pointer is valid for this run.
        ok(unsafe { bpf_skb_change_tail(self.skb.skb, len, 0) })
    }

    #[inline(always)]
    fn bounce(&self) -> i32 {
        // SAFETY: no preconditions; the verdict says where the packet goes.
        unsafe { bpf_redirect(Frame::ifindex(self), 0) };
        TC_ACT_REDIRECT
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context's skb pointer is valid for this run.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.as_ptr()
    }

    #[inline(always)]
    unsafe fn from_raw(raw: *mut c_void) -> Self {
        TcContext::new(raw.cast())
    }

    #[inline(always)]
    fn as_tc(&self) -> Option<&TcContext> {
        Some(self)
    }
}

impl Frame for XdpContext {
    const PASS: i32 = xdp_action::XDP_PASS as i32;
    const DROP: i32 = xdp_action::XDP_DROP as i32;
    const NETDEV: Dir = Dir::Xdp;

    #[inline(always)]
    fn load<T>(&self, at: usize) -> Result<T, i64> {
        let mut v = MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes at most size_of::<T>() bytes into `v`.
        let ret = unsafe {
            bpf_xdp_load_bytes(
                self.ctx,
                at as u32,
                ptr::from_mut(&mut v).cast(),
                size_of::<T>() as u32,
            )
        };
        if ret == 0 {
            // SAFETY: filled by the helper.
            Ok(unsafe { v.assume_init() })
        } else {
            Err(ret)
        }
    }

    #[inline(always)]
    fn store<T>(&self, at: usize, v: &T, _flags: u64) -> Result<(), i64> {
        // SAFETY: the helper reads size_of::<T>() bytes from `v`.
        let ret = unsafe {
            bpf_xdp_store_bytes(
                self.ctx,
                at as u32,
                ptr::from_ref(v).cast_mut().cast(),
                size_of::<T>() as u32,
            )
        };
        if ret == 0 { Ok(()) } else { Err(ret) }
    }

    #[inline(always)]
    fn l3_csum_replace(&self, at: usize, from: u64, to: u64, size: u64) -> Result<(), i64> {
        let old: u16 = self.load(at)?;
        self.store(at, &replace(old, from, to, size), 0)
    }

    #[inline(always)]
    fn l4_csum_replace(&self, at: usize, from: u64, to: u64, flags: u64) -> Result<(), i64> {
        let old: u16 = self.load(at)?;
        let mangled_0 = flags & BPF_F_MARK_MANGLED_0 as u64 != 0;
        // A UDP datagram without a checksum keeps none.
        if mangled_0 && old == 0 {
            return Ok(());
        }
        let mut new = replace(old, from, to, flags & 0xf);
        if mangled_0 && new == 0 {
            new = 0xffff;
        }
        self.store(at, &new, 0)
    }

    #[inline(always)]
    fn load_raw(&self, at: usize, to: *mut u8, len: usize) -> Result<(), i64> {
        // SAFETY: the caller's `to` has room for `len` bytes.
        ok(unsafe { bpf_xdp_load_bytes(self.ctx, at as u32, to.cast(), len as u32) })
    }

    #[inline(always)]
    fn store_raw(&self, at: usize, from: *const u8, len: usize) -> Result<(), i64> {
        // SAFETY: the caller's `from` holds `len` bytes.
        ok(unsafe { bpf_xdp_store_bytes(self.ctx, at as u32, from.cast_mut().cast(), len as u32) })
    }

    #[inline(always)]
    fn set_len(&self, len: u32) -> Result<(), i64> {
        let delta = len as i32 - Frame::len(self) as i32;
        // SAFETY: the context pointer is valid for this run.
        ok(unsafe { bpf_xdp_adjust_tail(self.ctx, delta) })
    }

    #[inline(always)]
    fn bounce(&self) -> i32 {
        xdp_action::XDP_TX as i32
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer is valid for this run.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.as_ptr()
    }

    #[inline(always)]
    unsafe fn from_raw(raw: *mut c_void) -> Self {
        XdpContext::new(raw.cast())
    }

    #[inline(always)]
    fn as_tc(&self) -> Option<&TcContext> {
        None
    }
}

/// A helper's return as a result.
#[inline(always)]
fn ok(ret: i64) -> Result<(), i64> {
    if ret == 0 { Ok(()) } else { Err(ret) }
}

/// RFC 1624's `HC' = ~(~HC + ~m + m')` over the 16-bit words of a field of
/// `size` bytes (2 or 4), or, for size 0, with `to` the one's complement
/// difference `bpf_csum_diff` gave. The words are taken as loaded (native
/// order), like the checksum: one's complement sums do not mind the order.
#[inline(always)]
fn replace(old: u16, from: u64, to: u64, size: u64) -> u16 {
    let mut sum = u64::from(!old);
    match size {
        0 => sum += to & 0xffff_ffff,
        2 => sum += u64::from(!(from as u16)) + (to & 0xffff),
        _ => {
            sum += u64::from(!(from as u16))
                + u64::from(!((from >> 16) as u16))
                + (to & 0xffff)
                + ((to >> 16) & 0xffff);
        }
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
