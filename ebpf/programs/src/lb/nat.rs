//! Rewriting addresses and ports with incremental checksum updates.
//!
//! The L4 update uses `BPF_F_PSEUDO_HDR` so that packets whose checksum the
//! kernel will finish later (CHECKSUM_PARTIAL, the common case for locally sent
//! traffic on a veth) stay right, and `BPF_F_MARK_MANGLED_0` for UDP, whose zero
//! checksum means "none" in IPv4. IPv6 has no header checksum, and its addresses
//! are too wide for `bpf_l4_csum_replace`: their difference comes from
//! `bpf_csum_diff`.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
};
use weir_common::{IPPROTO_UDP, Reason};

use crate::{
    frame::Frame,
    packet::{Family, Flow, IP_CSUM, V4, V6},
};

/// How a family's address is rewritten.
pub trait Rewrite: Family {
    /// Replaces the address at `at` (`old`) by `new` (maps' form), fixing the IP
    /// checksum if there is one and the L4 checksum at `csum_at` if it covers
    /// the address (not ICMPv4's).
    fn rewrite_addr<C: Frame>(
        ctx: &C,
        csum_at: Option<usize>,
        l4: u64,
        at: usize,
        old: &Self::Addr,
        new: &[u8; 16],
    ) -> Result<(), Reason>;

    /// Replaces an address at `at` (`old` by `new`, maps' form) of the
    /// packet an ICMP error quotes at `quoted`, keeping the error's checksum
    /// (at `csum_at`) right: the quoted bytes are data it covers.
    fn rewrite_quoted_addr<C: Frame>(
        ctx: &C,
        csum_at: usize,
        quoted: usize,
        at: usize,
        old: &[u8; 16],
        new: &[u8; 16],
    ) -> Result<(), Reason>;
}

impl Rewrite for V4 {
    #[inline(always)]
    fn rewrite_addr<C: Frame>(
        ctx: &C,
        csum_at: Option<usize>,
        l4: u64,
        at: usize,
        old: &[u8; 4],
        new: &[u8; 16],
    ) -> Result<(), Reason> {
        let new = [new[0], new[1], new[2], new[3]];
        let (o, n) = (u32::from_ne_bytes(*old) as u64, u32::from_ne_bytes(new) as u64);
        if let Some(csum_at) = csum_at {
            ctx.l4_csum_replace(csum_at, o, n, BPF_F_PSEUDO_HDR as u64 | l4 | 4)
                .map_err(|_| Reason::RewriteFailed)?;
        }
        replace4(ctx, IP_CSUM, at, o, &new)
    }

    /// The quoted header's own checksum follows its address, which leaves the
    /// header's sum, and so the ICMP checksum, as it was.
    #[inline(always)]
    fn rewrite_quoted_addr<C: Frame>(
        ctx: &C,
        _csum_at: usize,
        quoted: usize,
        at: usize,
        old: &[u8; 16],
        new: &[u8; 16],
    ) -> Result<(), Reason> {
        let old = u32::from_ne_bytes([old[0], old[1], old[2], old[3]]) as u64;
        replace4(ctx, quoted + 10, at, old, &[new[0], new[1], new[2], new[3]])
    }
}

/// Stores the IPv4 address `new` at `at` in place of `old` (as a
/// `u32` from its bytes), and follows it in the IP header checksum at `ip_csum`.
#[inline(always)]
fn replace4<C: Frame>(ctx: &C, ip_csum: usize, at: usize, old: u64, new: &[u8; 4]) -> Result<(), Reason> {
    ctx.l3_csum_replace(ip_csum, old, u32::from_ne_bytes(*new) as u64, 4)
        .map_err(|_| Reason::RewriteFailed)?;
    ctx.store(at, new, 0).map_err(|_| Reason::RewriteFailed)
}

#[repr(C, align(4))]
struct Aligned([u8; 16]);

impl Rewrite for V6 {
    /// Every IPv6 L4 checksum, ICMPv6's too, covers the addresses.
    #[inline(always)]
    fn rewrite_addr<C: Frame>(
        ctx: &C,
        csum_at: Option<usize>,
        l4: u64,
        at: usize,
        old: &[u8; 16],
        new: &[u8; 16],
    ) -> Result<(), Reason> {
        let csum_at = csum_at.unwrap_or_default();
        replace6(ctx, csum_at, at, BPF_F_PSEUDO_HDR as u64 | l4, old, new)
    }

    /// No header checksum: the ICMPv6 checksum takes the difference, as
    /// data (no pseudo-header flag).
    #[inline(always)]
    fn rewrite_quoted_addr<C: Frame>(
        ctx: &C,
        csum_at: usize,
        _quoted: usize,
        at: usize,
        old: &[u8; 16],
        new: &[u8; 16],
    ) -> Result<(), Reason> {
        replace6(ctx, csum_at, at, 0, old, new)
    }
}

/// [`rewrite_addr6`], out of line: its buffers, inlined at each of the hot
/// path's rewrites, would not fit beside it in one stack frame. Five
/// arguments at most cross a BPF call, so the offsets travel packed.
#[inline(always)]
fn replace6<C: Frame>(
    ctx: &C,
    csum_at: usize,
    at: usize,
    flags: u64,
    old: &[u8; 16],
    new: &[u8; 16],
) -> Result<(), Reason> {
    match rewrite_addr6::<C>(ctx.raw(), (csum_at << 32 | at) as u64, flags, old, new) {
        0 => Ok(()),
        _ => Err(Reason::RewriteFailed),
    }
}

#[inline(never)]
fn rewrite_addr6<C: Frame>(
    raw: *mut c_void,
    offsets: u64,
    flags: u64,
    old: &[u8; 16],
    new: &[u8; 16],
) -> i64 {
    // SAFETY: the caller's context pointer.
    let ctx = unsafe { C::from_raw(raw) };
    let (csum_at, at) = ((offsets >> 32) as usize, (offsets & 0xffff_ffff) as usize);
    // bpf_csum_diff wants 4-aligned buffers.
    let (mut o, mut n) = (Aligned([0; 16]), Aligned([0; 16]));
    o.0.copy_from_slice(old);
    n.0.copy_from_slice(new);
    // SAFETY: two live, 4-aligned 16-byte stack buffers.
    let diff = unsafe { bpf_csum_diff(o.0.as_mut_ptr().cast(), 16, n.0.as_mut_ptr().cast(), 16, 0) };
    if diff < 0 {
        return diff;
    }
    // A size of 0 tells the helper that `to` is a precomputed difference.
    if ctx.l4_csum_replace(csum_at, 0, diff as u64, flags).is_err() || ctx.store(at, &n.0, 0).is_err() {
        return -1;
    }
    0
}

#[inline(always)]
fn l4_flags<F: Family>(flow: &Flow<F>) -> u64 {
    if flow.proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    }
}

#[inline(always)]
fn rewrite_port<F: Family, C: Frame>(
    ctx: &C,
    flow: &Flow<F>,
    at: usize,
    old: u16,
    new: u16,
) -> Result<(), Reason> {
    if old == new {
        return Ok(());
    }
    ctx.l4_csum_replace(flow.l4_csum_offset(), old as u64, new as u64, l4_flags(flow) | 2)
        .map_err(|_| Reason::RewriteFailed)?;
    ctx.store(at, &new, 0).map_err(|_| Reason::RewriteFailed)
}

/// Which end of a flow a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Source,
    Destination,
}

/// The packet now comes from (`End::Source`) or goes to (`End::Destination`)
/// `addr:port` (maps' form, network order); `flow` follows.
#[inline(always)]
fn rewrite<F: Rewrite, C: Frame>(
    ctx: &C,
    flow: &mut Flow<F>,
    end: End,
    addr: &[u8; 16],
    port: u16,
) -> Result<(), Reason> {
    let at_port = flow.port_offset(end == End::Destination);
    let (at_addr, old_addr, old_port) = match end {
        End::Source => (F::SADDR, &flow.saddr, flow.sport),
        End::Destination => (F::DADDR, &flow.daddr, flow.dport),
    };
    if !F::is(old_addr, addr) {
        F::rewrite_addr(
            ctx,
            flow.pseudo_header().then(|| flow.l4_csum_offset()),
            l4_flags(flow),
            at_addr,
            old_addr,
            addr,
        )?;
    }
    rewrite_port(ctx, flow, at_port, old_port, port)?;
    let (flow_addr, flow_port) = match end {
        End::Source => (&mut flow.saddr, &mut flow.sport),
        End::Destination => (&mut flow.daddr, &mut flow.dport),
    };
    F::narrow(addr, flow_addr);
    *flow_port = port;
    Ok(())
}

/// Destination NAT: the packet now goes to `addr:port` (maps' form, network order).
#[inline(always)]
pub fn dnat<F: Rewrite, C: Frame>(
    ctx: &C,
    flow: &mut Flow<F>,
    addr: &[u8; 16],
    port: u16,
) -> Result<(), Reason> {
    rewrite(ctx, flow, End::Destination, addr, port)
}

/// Source NAT: the packet now comes from `addr:port`.
#[inline(always)]
pub fn snat<F: Rewrite, C: Frame>(
    ctx: &C,
    flow: &mut Flow<F>,
    addr: &[u8; 16],
    port: u16,
) -> Result<(), Reason> {
    rewrite(ctx, flow, End::Source, addr, port)
}
