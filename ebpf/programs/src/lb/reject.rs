//! Rejecting a flow to a service without endpoints, as kube-proxy's REJECT rule
//! does: an ICMP (ICMPv6) port unreachable back to the client (a TCP connect fails
//! at once with "connection refused", a connected UDP socket gets the error),
//! instead of a silent drop that leaves clients to time out.
//!
//! The packet itself becomes the reply: trimmed to Ethernet + IP + ICMP + a quote
//! of the original IP header and first 8 bytes of L4 (RFC 792, RFC 4443),
//! rewritten, and sent back out of the interface it came in on (TC or XDP: both
//! answer the same way, see [`Frame`]). The headers are
//! built in this CPU's scratch value (the BPF stack has no room for them beside
//! the hot path) and checksummed with `bpf_csum_diff`.
//!
//! Answers are rate-limited per CPU, as the kernel limits its own ICMP errors
//! (`icmp_msgs_per_sec`, which kube-proxy's REJECT rules are subject to):
//! past [`PER_SEC`] a second (after a burst of as many), a rejection is dropped
//! unanswered (`Reason::RejectLimited`), so a flood to a Service without
//! endpoints costs a drop per packet, not a reply.

use aya_ebpf::{helpers::bpf_csum_diff, maps::PerCpuArray};
use weir_common::{IPPROTO_ICMPV6, Reason, Scratch};

use crate::{
    frame::Frame,
    packet::{ETH_HLEN, Family, Flow, ICMP_HLEN, IP_HLEN, IP6_HLEN, V4, V6},
};

bpf_map! {
    static REJECT_BUDGET: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
}

/// Rejections answered per second and CPU (and the burst answered at once).
const PER_SEC: u64 = 1_000;

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

/// Sends the rejection; returns the hook's verdict.
#[inline(always)]
pub fn port_unreachable<F: Reject, C: Frame>(
    ctx: &C,
    flow: &Flow<F>,
    s: &mut Scratch,
) -> Result<i32, Reason> {
    if !crate::rate::within(&REJECT_BUDGET, PER_SEC, crate::clock::now()) {
        return Err(Reason::RejectLimited);
    }
    s.ip = [0; 40];
    s.icmp = [0; 96];
    let quote = F::ICMP_AT + ICMP_HLEN;
    // The destination lies inside the scratch value (at most 48 + 48 bytes).
    ctx.load_raw(ETH_HLEN, s.icmp[quote..].as_mut_ptr(), F::IP_LEN + L4_QUOTE)
        .map_err(|_| Reason::Malformed)?;
    F::build(flow, s)?;

    // Ethernet: back to where it came from.
    let macs: [u8; 12] = ctx.load(0).map_err(|_| Reason::Malformed)?;
    let mut eth = [0u8; ETH_HLEN];
    eth[0..6].copy_from_slice(&macs[6..12]);
    eth[6..12].copy_from_slice(&macs[0..6]);
    eth[12..14].copy_from_slice(&F::ETH_P.to_ne_bytes());

    ctx.set_len((ETH_HLEN + F::IP_LEN + F::ICMP_LEN) as u32)
        .map_err(|_| Reason::RewriteFailed)?;
    let stored = ctx
        .store(0, &eth, 0)
        .and_then(|()| ctx.store_raw(ETH_HLEN, s.ip.as_ptr(), F::IP_LEN))
        .and_then(|()| ctx.store_raw(ETH_HLEN + F::IP_LEN, s.icmp[F::ICMP_AT..].as_ptr(), F::ICMP_LEN));
    stored.map_err(|_| Reason::RewriteFailed)?;
    Ok(ctx.bounce())
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
