//! The one place that reads packet headers: bounds are checked by
//! `bpf_skb_load_bytes` (through `TcContext::load`), so a short or odd packet is
//! an error here, never an out-of-bounds read elsewhere.

use aya_ebpf::programs::TcContext;
use weir_common::{IPPROTO_TCP, IPPROTO_UDP, Reason};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
/// Offsets inside an IPv4 header.
pub const IP_CSUM: usize = ETH_HLEN + 10;
pub const IP_SADDR: usize = ETH_HLEN + 12;
pub const IP_DADDR: usize = ETH_HLEN + 16;
/// The IPv4 header length we rewrite and reject for (options are rare on pod
/// traffic; packets carrying them are passed untranslated).
pub const IP_HLEN: usize = 20;
const TCP_FLAGS: usize = 13;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// An IPv4 TCP or UDP packet's tuple. Addresses and ports are kept as they are
/// on the wire (network order), which is also what the maps hold.
#[derive(Clone, Copy)]
pub struct Flow4 {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
}

impl Flow4 {
    /// Offset of the L4 header (we only handle option-less IPv4 headers).
    pub const L4: usize = ETH_HLEN + IP_HLEN;

    pub const fn l4_csum_offset(&self) -> usize {
        Self::L4 + if self.proto == IPPROTO_TCP { 16 } else { 6 }
    }
}

/// `Ok(None)` for what the load balancer leaves alone: non-IPv4, fragments after
/// the first, IP options, protocols other than TCP and UDP (SCTP's CRC32c cannot
/// be patched incrementally; this kernel has no SCTP to test against).
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Option<Flow4>, Reason> {
    let proto: u16 = ctx.load(12).map_err(|_| Reason::Malformed)?;
    if proto != ETH_P_IP.to_be() {
        return Ok(None);
    }
    let vihl: u8 = ctx.load(ETH_HLEN).map_err(|_| Reason::Malformed)?;
    if vihl >> 4 != 4 {
        return Err(Reason::Malformed);
    }
    if usize::from(vihl & 0x0f) * 4 != IP_HLEN {
        return Ok(None);
    }
    let frag: u16 = ctx.load(ETH_HLEN + 6).map_err(|_| Reason::Malformed)?;
    if u16::from_be(frag) & 0x1fff != 0 {
        return Ok(None);
    }
    let l4proto: u8 = ctx.load(ETH_HLEN + 9).map_err(|_| Reason::Malformed)?;
    if l4proto != IPPROTO_TCP && l4proto != IPPROTO_UDP {
        return Ok(None);
    }
    let saddr: [u8; 4] = ctx.load(IP_SADDR).map_err(|_| Reason::Malformed)?;
    let daddr: [u8; 4] = ctx.load(IP_DADDR).map_err(|_| Reason::Malformed)?;
    let sport: u16 = ctx.load(Flow4::L4).map_err(|_| Reason::Malformed)?;
    let dport: u16 = ctx.load(Flow4::L4 + 2).map_err(|_| Reason::Malformed)?;
    let tcp_flags = if l4proto == IPPROTO_TCP {
        ctx.load::<u8>(Flow4::L4 + TCP_FLAGS).map_err(|_| Reason::Malformed)?
    } else {
        0
    };
    Ok(Some(Flow4 { saddr, daddr, sport, dport, proto: l4proto, tcp_flags }))
}

/// An IPv4 address in the 16-byte form the maps use.
#[inline(always)]
pub const fn addr16(a: [u8; 4]) -> [u8; 16] {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

#[inline(always)]
pub const fn addr4(a: &[u8; 16]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}
