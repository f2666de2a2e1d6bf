//! Rewriting addresses and ports with incremental checksum updates.
//!
//! The L4 update uses `BPF_F_PSEUDO_HDR` so that packets whose checksum the
//! kernel will finish later (CHECKSUM_PARTIAL, the common case for locally sent
//! traffic on a veth) stay right, and `BPF_F_MARK_MANGLED_0` for UDP, whose zero
//! checksum means "none".

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use weir_common::{IPPROTO_UDP, Reason};

use crate::packet::{Flow4, IP_CSUM, IP_DADDR, IP_SADDR};

#[inline(always)]
fn l4_flags(flow: &Flow4) -> u64 {
    if flow.proto == IPPROTO_UDP { BPF_F_MARK_MANGLED_0 as u64 } else { 0 }
}

#[inline(always)]
fn rewrite_addr(ctx: &TcContext, flow: &Flow4, at: usize, old: [u8; 4], new: [u8; 4]) -> Result<(), Reason> {
    if old == new {
        return Ok(());
    }
    let (o, n) = (u32::from_ne_bytes(old), u32::from_ne_bytes(new));
    ctx.l4_csum_replace(flow.l4_csum_offset(), o as u64, n as u64, BPF_F_PSEUDO_HDR as u64 | l4_flags(flow) | 4)
        .map_err(|_| Reason::RewriteFailed)?;
    ctx.l3_csum_replace(IP_CSUM, o as u64, n as u64, 4).map_err(|_| Reason::RewriteFailed)?;
    ctx.store(at, &new, 0).map_err(|_| Reason::RewriteFailed)
}

#[inline(always)]
fn rewrite_port(ctx: &TcContext, flow: &Flow4, at: usize, old: u16, new: u16) -> Result<(), Reason> {
    if old == new {
        return Ok(());
    }
    ctx.l4_csum_replace(flow.l4_csum_offset(), old as u64, new as u64, l4_flags(flow) | 2)
        .map_err(|_| Reason::RewriteFailed)?;
    ctx.store(at, &new, 0).map_err(|_| Reason::RewriteFailed)
}

/// Destination NAT: the packet now goes to `addr:port` (port in network order).
#[inline(always)]
pub fn dnat(ctx: &TcContext, flow: &mut Flow4, addr: [u8; 4], port: u16) -> Result<(), Reason> {
    rewrite_addr(ctx, flow, IP_DADDR, flow.daddr, addr)?;
    rewrite_port(ctx, flow, Flow4::L4 + 2, flow.dport, port)?;
    flow.daddr = addr;
    flow.dport = port;
    Ok(())
}

/// Source NAT: the packet now comes from `addr:port`.
#[inline(always)]
pub fn snat(ctx: &TcContext, flow: &mut Flow4, addr: [u8; 4], port: u16) -> Result<(), Reason> {
    rewrite_addr(ctx, flow, IP_SADDR, flow.saddr, addr)?;
    rewrite_port(ctx, flow, Flow4::L4, flow.sport, port)?;
    flow.saddr = addr;
    flow.sport = port;
    Ok(())
}
