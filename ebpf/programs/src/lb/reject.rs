//! Rejecting a flow to a service without endpoints, as kube-proxy's REJECT rule
//! does: an ICMP port unreachable back to the client (a TCP connect fails at once
//! with "connection refused", a connected UDP socket gets the error), instead of a
//! silent drop that leaves clients to time out.
//!
//! The packet itself becomes the reply: trimmed to Ethernet + IPv4 + ICMP + the
//! original IPv4 header and first 8 bytes of L4 (RFC 792), rewritten, and sent
//! back out of the interface it came in on. Checksums come from `bpf_csum_diff`
//! over 4-byte-aligned stack buffers: a byte loop would cost the verifier dearly.

use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use weir_common::Reason;

use crate::packet::{ETH_HLEN, Flow4, IP_HLEN};

const ICMP_HLEN: usize = 8;
/// The original IPv4 header and the first 8 bytes of its payload.
const QUOTE: usize = IP_HLEN + 8;
const ICMP_LEN: usize = ICMP_HLEN + QUOTE;
const REPLY_LEN: usize = ETH_HLEN + IP_HLEN + ICMP_LEN;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const IPPROTO_ICMP: u8 = 1;

#[repr(C, align(4))]
struct Aligned<const N: usize>([u8; N]);

#[inline(always)]
pub fn port_unreachable(ctx: &TcContext, flow: &Flow4) -> Result<i32, Reason> {
    let macs: [u8; 12] = ctx.load(0).map_err(|_| Reason::Malformed)?;
    let quote: [u8; QUOTE] = ctx.load(ETH_HLEN).map_err(|_| Reason::Malformed)?;

    // Ethernet: back to where it came from.
    let mut eth = [0u8; ETH_HLEN];
    eth[0..6].copy_from_slice(&macs[6..12]);
    eth[6..12].copy_from_slice(&macs[0..6]);
    eth[12] = 0x08;

    // IPv4, from the frontend the client tried to reach.
    let mut ip = Aligned([0u8; IP_HLEN]);
    ip.0[0] = 0x45;
    ip.0[2..4].copy_from_slice(&((IP_HLEN + ICMP_LEN) as u16).to_be_bytes());
    ip.0[8] = 64;
    ip.0[9] = IPPROTO_ICMP;
    ip.0[12..16].copy_from_slice(&flow.daddr);
    ip.0[16..20].copy_from_slice(&flow.saddr);
    let csum = checksum(&mut ip)?;
    ip.0[10..12].copy_from_slice(&csum.to_ne_bytes());

    // ICMP destination unreachable, quoting the original packet.
    let mut icmp = Aligned([0u8; ICMP_LEN]);
    icmp.0[0] = ICMP_DEST_UNREACH;
    icmp.0[1] = ICMP_PORT_UNREACH;
    icmp.0[ICMP_HLEN..].copy_from_slice(&quote);
    let csum = checksum(&mut icmp)?;
    icmp.0[2..4].copy_from_slice(&csum.to_ne_bytes());

    // SAFETY: the context's skb pointer is valid for this run.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, REPLY_LEN as u32, 0) } != 0 {
        return Err(Reason::RewriteFailed);
    }
    ctx.store(0, &eth, 0).map_err(|_| Reason::RewriteFailed)?;
    ctx.store(ETH_HLEN, &ip.0, 0).map_err(|_| Reason::RewriteFailed)?;
    ctx.store(ETH_HLEN + IP_HLEN, &icmp.0, 0).map_err(|_| Reason::RewriteFailed)?;
    // SAFETY: as above.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: no preconditions; the verdict says where the packet goes.
    unsafe { bpf_redirect(ifindex, 0) };
    Ok(TC_ACT_REDIRECT as i32)
}

/// The Internet checksum (RFC 1071) of a buffer whose length is a multiple of 4,
/// in the byte order it is stored in.
#[inline(always)]
fn checksum<const N: usize>(buf: &mut Aligned<N>) -> Result<u16, Reason> {
    // SAFETY: `buf` is a live, 4-aligned stack buffer of N bytes.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, buf.0.as_mut_ptr().cast(), N as u32, 0) };
    if sum < 0 {
        return Err(Reason::RewriteFailed);
    }
    let mut sum = sum as u64;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    Ok(!(sum as u16))
}
