//! Rejecting a flow to a service without endpoints, as kube-proxy's REJECT rule
//! does: an ICMP (ICMPv6) port unreachable back to the client (a TCP connect fails
//! at once with "connection refused", a connected UDP socket gets the error),
//! instead of a silent drop that leaves clients to time out.
//!
//! The packet itself becomes the reply: trimmed to Ethernet + IP + ICMP + a quote
//! of the original IP header and first 8 bytes of L4 (RFC 792, RFC 4443),
//! rewritten, and sent back out of the interface it came in on. The headers are
//! built in this CPU's scratch value (the BPF stack has no room for them beside
//! the hot path) and checksummed with `bpf_csum_diff`.

use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes},
    programs::TcContext,
};
use weir_common::{IPPROTO_ICMPV6, Reason, Scratch};

use crate::packet::{ETH_HLEN, Family, Flow, ICMP_HLEN, IP_HLEN, IP6_HLEN, V4, V6};

/// What of the original packet is quoted: its IP header and 8 bytes of L4.
const L4_QUOTE: usize = 8;

/// How a family says "port unreachable". The reply's IP header is built in
/// `Scratch::ip`, its ICMP message at `ICMP_AT` in `Scratch::icmp` (IPv6 puts the
/// checksum's pseudo-header before it), with the quote already loaded at
/// `ICMP_AT + 8`.
pub trait Reject: Family {
    const IP_LEN: usize;
    const ICMP_AT: usize;
    const ICMP_LEN: usize = ICMP_HLEN + Self::IP_LEN + L4_QUOTE;
    fn build(flow: &Flow<Self>, s: &mut Scratch) -> Result<(), Reason>;
}

impl Reject for V4 {
    const IP_LEN: usize = IP_HLEN;
    const ICMP_AT: usize = 0;

    #[inline(always)]
    fn build(flow: &Flow<Self>, s: &mut Scratch) -> Result<(), Reason> {
        let ip = &mut s.ip;
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((IP_HLEN + Self::ICMP_LEN) as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 1; // ICMP
        ip[12..16].copy_from_slice(&flow.daddr);
        ip[16..20].copy_from_slice(&flow.saddr);
        let csum = fold(sum(ip.as_mut_ptr(), IP_HLEN)?);
        ip[10..12].copy_from_slice(&csum.to_ne_bytes());
        // Destination unreachable, port unreachable.
        s.icmp[0] = 3;
        s.icmp[1] = 3;
        let csum = fold(sum(s.icmp.as_mut_ptr(), Self::ICMP_LEN)?);
        s.icmp[2..4].copy_from_slice(&csum.to_ne_bytes());
        Ok(())
    }
}

impl Reject for V6 {
    const IP_LEN: usize = IP6_HLEN;
    const ICMP_AT: usize = PSEUDO6;

    #[inline(always)]
    fn build(flow: &Flow<Self>, s: &mut Scratch) -> Result<(), Reason> {
        let len = (Self::ICMP_LEN as u16).to_be_bytes();
        let ip = &mut s.ip;
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&len);
        ip[6] = IPPROTO_ICMPV6;
        ip[7] = 64;
        ip[8..24].copy_from_slice(&flow.daddr);
        ip[24..40].copy_from_slice(&flow.saddr);
        // The ICMPv6 checksum covers a pseudo-header (RFC 8200 8.1): addresses,
        // upper-layer length, next header; it sits right before the message.
        let p = &mut s.icmp;
        p[0..16].copy_from_slice(&flow.daddr);
        p[16..32].copy_from_slice(&flow.saddr);
        p[34..36].copy_from_slice(&len);
        p[39] = IPPROTO_ICMPV6;
        // Destination unreachable, port unreachable.
        p[PSEUDO6] = 1;
        p[PSEUDO6 + 1] = 4;
        let csum = fold(sum(p.as_mut_ptr(), PSEUDO6 + Self::ICMP_LEN)?);
        p[PSEUDO6 + 2..PSEUDO6 + 4].copy_from_slice(&csum.to_ne_bytes());
        Ok(())
    }
}

const PSEUDO6: usize = 40;

/// Sends the rejection; the returned action is TC's redirect.
#[inline(always)]
pub fn port_unreachable<F: Reject>(ctx: &TcContext, flow: &Flow<F>, s: &mut Scratch) -> Result<i32, Reason> {
    s.ip = [0; 40];
    s.icmp = [0; 96];
    let quote = F::ICMP_AT + ICMP_HLEN;
    // SAFETY: the destination lies inside the scratch value (at most 48 + 48 bytes).
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            ETH_HLEN as u32,
            s.icmp[quote..].as_mut_ptr().cast(),
            (F::IP_LEN + L4_QUOTE) as u32,
        )
    };
    if loaded != 0 {
        return Err(Reason::Malformed);
    }
    F::build(flow, s)?;

    // Ethernet: back to where it came from.
    let macs: [u8; 12] = ctx.load(0).map_err(|_| Reason::Malformed)?;
    let mut eth = [0u8; ETH_HLEN];
    eth[0..6].copy_from_slice(&macs[6..12]);
    eth[6..12].copy_from_slice(&macs[0..6]);
    eth[12..14].copy_from_slice(&F::ETH_P.to_ne_bytes());

    // SAFETY: the context's skb pointer is valid for this run.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + F::IP_LEN + F::ICMP_LEN) as u32, 0) } != 0 {
        return Err(Reason::RewriteFailed);
    }
    ctx.store(0, &eth, 0).map_err(|_| Reason::RewriteFailed)?;
    store(ctx, ETH_HLEN, s.ip.as_ptr(), F::IP_LEN)?;
    store(
        ctx,
        ETH_HLEN + F::IP_LEN,
        s.icmp[F::ICMP_AT..].as_ptr(),
        F::ICMP_LEN,
    )?;
    // SAFETY: as above.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: no preconditions; the verdict says where the packet goes.
    unsafe { bpf_redirect(ifindex, 0) };
    Ok(TC_ACT_REDIRECT)
}

#[inline(always)]
fn store(ctx: &TcContext, at: usize, from: *const u8, len: usize) -> Result<(), Reason> {
    // SAFETY: `from` points at `len` bytes of the scratch value.
    let r = unsafe { bpf_skb_store_bytes(ctx.skb.skb, at as u32, from.cast(), len as u32, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(Reason::RewriteFailed)
    }
}

/// The unfolded one's-complement sum of `len` bytes (a multiple of 4) at the
/// 4-aligned `buf`, continuing from `seed`.
#[inline(always)]
fn sum(buf: *mut u8, len: usize) -> Result<i64, Reason> {
    // SAFETY: callers pass a 4-aligned buffer of the scratch value of `len` bytes.
    let s = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, buf.cast(), len as u32, 0) };
    if s < 0 { Err(Reason::RewriteFailed) } else { Ok(s) }
}

/// Folds a sum to the 16-bit checksum, in the byte order the data was summed in.
#[inline(always)]
fn fold(sum: i64) -> u16 {
    let mut s = sum as u64;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}
