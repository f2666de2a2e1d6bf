//! The one place that reads packet headers: bounds are checked by
//! `bpf_skb_load_bytes` or `bpf_xdp_load_bytes` (through [`Frame::load`]), so a short or odd packet is
//! an error here, never an out-of-bounds read elsewhere.
//!
//! The datapath is written once over [`Family`] and compiled twice: each entry
//! point dispatches on the ethertype to its IPv4 or its IPv6 instance, each a BPF
//! function with its own stack frame (one frame holding both would not fit in
//! the 512 bytes the verifier allows).
//!
//! Addresses wider than 8 bytes are passed by reference and compared in 64-bit
//! halves, never moved by value or compared with `==`: rustc hands a `[u8; 16]`
//! to LLVM as an `i128`, which gets 16-byte-aligned stack slots, and the BPF
//! backend of this toolchain's LLVM crashes on those copies (llvm-project #199541).

use crate::frame::Frame;
use weir_common::{
    AF_INET, AF_INET6, CtKey, HAIRPIN_V4, HAIRPIN_V6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP,
    IPPROTO_TCP, IPPROTO_UDP, KeptFlow, Reason,
};

pub const ETH_HLEN: usize = 14;
const TCP_FLAGS: usize = 13;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// An IP version, as the datapath needs to know it.
pub trait Family: Sized {
    /// An address as on the wire.
    type Addr: Copy;
    /// The unspecified address.
    const ANY: Self::Addr;
    const AF: u8;
    /// An address's length in bits: a full-length prefix of an LPM key.
    const BITS: u32;
    /// The ethertype, in network order.
    const ETH_P: u16;
    /// Offsets in the frame of the source and destination address.
    const SADDR: usize;
    const DADDR: usize;
    /// Offset of the L4 header (we translate option-less IPv4 headers and IPv6
    /// headers without extension headers).
    const L4: usize;
    /// Source address of hairpinned service traffic, in the maps' 16-byte form.
    const HAIRPIN: [u8; 16];

    /// ICMP's protocol number in this family.
    const ICMP: u8;

    /// ICMP echo request and reply types.
    const ECHO: [u8; 2];

    /// Reads the IP header into `flow` (addresses, and the L4 protocol, past
    /// IPv6 hop-by-hop options and fragment headers); returns where the L4 header
    /// starts, `None` for a fragment after the first, which carries none.
    fn parse_ip<C: Frame>(ctx: &C, flow: &mut Flow<Self>) -> Result<Option<usize>, Reason>;
    /// Writes the address in the maps' 16-byte form (IPv4 in the first 4 bytes).
    fn widen(a: &Self::Addr, out: &mut [u8; 16]);
    /// Sets an address from the maps' form.
    fn narrow(wide: &[u8; 16], out: &mut Self::Addr);
    /// Whether an ICMP message of this type is never subject to policy: errors
    /// and, for IPv6, neighbour discovery and the rest of the link's control
    /// traffic.
    fn icmp_passes(icmp_type: u8) -> bool;
    /// Whether an ICMP message of this type reports an error about a packet it
    /// quotes (and so belongs to that packet's flow).
    fn icmp_error(icmp_type: u8) -> bool;
    /// Reads the IP header quoted at `at`: its addresses (in the maps' form),
    /// then its protocol and where its L4 header starts.
    fn quoted<C: Frame>(
        ctx: &C,
        at: usize,
        saddr: &mut [u8; 16],
        daddr: &mut [u8; 16],
    ) -> Result<(u8, usize), Reason>;
    /// Where the IP packet ends, as its header says: the frame may run on
    /// past it (Ethernet's padding, or bytes the stack will trim).
    fn ip_end<C: Frame>(ctx: &C) -> Result<usize, Reason>;
    /// Whether a source address is of the link only (an IPv6 pod's link-local
    /// address, which is not registered as the pod's).
    fn link_scope(a: &Self::Addr) -> bool;
    /// Whether an address equals one in the maps' form.
    fn is(a: &Self::Addr, wide: &[u8; 16]) -> bool;
    /// 32 bits of the address, for the flow hash.
    fn fold(a: &Self::Addr) -> u32;
}

pub struct V4;
pub struct V6;

impl Family for V4 {
    type Addr = [u8; 4];
    const ANY: [u8; 4] = [0; 4];
    const AF: u8 = AF_INET;
    const BITS: u32 = 32;
    const ETH_P: u16 = 0x0800u16.to_be();
    const SADDR: usize = ETH_HLEN + 12;
    const DADDR: usize = ETH_HLEN + 16;
    const L4: usize = ETH_HLEN + IP_HLEN;
    const HAIRPIN: [u8; 16] = widen4(HAIRPIN_V4);
    const ICMP: u8 = IPPROTO_ICMP;
    const ECHO: [u8; 2] = [8, 0];

    #[inline(always)]
    fn icmp_passes(icmp_type: u8) -> bool {
        // Destination unreachable, time exceeded, parameter problem.
        matches!(icmp_type, 3 | 11 | 12)
    }

    #[inline(always)]
    fn icmp_error(icmp_type: u8) -> bool {
        Self::icmp_passes(icmp_type)
    }

    #[inline(always)]
    fn quoted<C: Frame>(
        ctx: &C,
        at: usize,
        saddr: &mut [u8; 16],
        daddr: &mut [u8; 16],
    ) -> Result<(u8, usize), Reason> {
        let vihl: u8 = ctx.load(at).map_err(|_| Reason::Malformed)?;
        let words = usize::from(vihl & 0x0f);
        if vihl >> 4 != 4 || words < 5 {
            return Err(Reason::Malformed);
        }
        let proto: u8 = ctx.load(at + 9).map_err(|_| Reason::Malformed)?;
        *saddr = widen4(ctx.load(at + 12).map_err(|_| Reason::Malformed)?);
        *daddr = widen4(ctx.load(at + 16).map_err(|_| Reason::Malformed)?);
        Ok((proto, at + words * 4))
    }

    #[inline(always)]
    fn ip_end<C: Frame>(ctx: &C) -> Result<usize, Reason> {
        let total: u16 = ctx.load(ETH_HLEN + 2).map_err(|_| Reason::Malformed)?;
        Ok(ETH_HLEN + usize::from(u16::from_be(total)))
    }

    #[inline(always)]
    fn link_scope(_: &[u8; 4]) -> bool {
        false
    }

    #[inline(always)]
    fn parse_ip<C: Frame>(ctx: &C, flow: &mut Flow<Self>) -> Result<Option<usize>, Reason> {
        let vihl: u8 = ctx.load(ETH_HLEN).map_err(|_| Reason::Malformed)?;
        let words = usize::from(vihl & 0x0f);
        if vihl >> 4 != 4 || words < 5 {
            return Err(Reason::Malformed);
        }
        flow.proto = ctx.load(ETH_HLEN + 9).map_err(|_| Reason::Malformed)?;
        flow.saddr = ctx.load(Self::SADDR).map_err(|_| Reason::Malformed)?;
        flow.daddr = ctx.load(Self::DADDR).map_err(|_| Reason::Malformed)?;
        let frag = u16::from_be(ctx.load(ETH_HLEN + 6).map_err(|_| Reason::Malformed)?);
        // More fragments follow, or this one does not start the datagram.
        flow.fragment = frag & 0x3fff != 0;
        if frag & 0x1fff != 0 {
            return Ok(None);
        }
        Ok(Some(ETH_HLEN + words * 4))
    }

    #[inline(always)]
    fn widen(a: &[u8; 4], out: &mut [u8; 16]) {
        out[..4].copy_from_slice(a);
        out[4..].fill(0);
    }

    #[inline(always)]
    fn narrow(wide: &[u8; 16], out: &mut [u8; 4]) {
        *out = [wide[0], wide[1], wide[2], wide[3]];
    }

    #[inline(always)]
    fn is(a: &[u8; 4], wide: &[u8; 16]) -> bool {
        *a == [wide[0], wide[1], wide[2], wide[3]]
    }

    #[inline(always)]
    fn fold(a: &[u8; 4]) -> u32 {
        u32::from_be_bytes(*a)
    }
}

impl Family for V6 {
    type Addr = [u8; 16];
    const ANY: [u8; 16] = [0; 16];
    const AF: u8 = AF_INET6;
    const BITS: u32 = 128;
    const ETH_P: u16 = 0x86ddu16.to_be();
    const SADDR: usize = ETH_HLEN + 8;
    const DADDR: usize = ETH_HLEN + 24;
    const L4: usize = ETH_HLEN + IP6_HLEN;
    const HAIRPIN: [u8; 16] = HAIRPIN_V6;
    const ICMP: u8 = IPPROTO_ICMPV6;
    const ECHO: [u8; 2] = [128, 129];

    #[inline(always)]
    fn icmp_passes(icmp_type: u8) -> bool {
        // Errors, MLD, neighbour and router discovery.
        matches!(icmp_type, 1..=4 | 130..=137 | 143)
    }

    #[inline(always)]
    fn icmp_error(icmp_type: u8) -> bool {
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        matches!(icmp_type, 1..=4)
    }

    #[inline(always)]
    fn quoted<C: Frame>(
        ctx: &C,
        at: usize,
        saddr: &mut [u8; 16],
        daddr: &mut [u8; 16],
    ) -> Result<(u8, usize), Reason> {
        let version: u8 = ctx.load(at).map_err(|_| Reason::Malformed)?;
        if version >> 4 != 6 {
            return Err(Reason::Malformed);
        }
        let proto: u8 = ctx.load(at + 6).map_err(|_| Reason::Malformed)?;
        load16(ctx, at + 8, saddr)?;
        load16(ctx, at + 24, daddr)?;
        Ok((proto, at + IP6_HLEN))
    }

    #[inline(always)]
    fn ip_end<C: Frame>(ctx: &C) -> Result<usize, Reason> {
        let payload: u16 = ctx.load(ETH_HLEN + 4).map_err(|_| Reason::Malformed)?;
        Ok(Self::L4 + usize::from(u16::from_be(payload)))
    }

    #[inline(always)]
    fn link_scope(a: &[u8; 16]) -> bool {
        // fe80::/10, or :: (duplicate address detection).
        (a[0] == 0xfe && a[1] & 0xc0 == 0x80) || *a == [0; 16]
    }

    #[inline(always)]
    fn parse_ip<C: Frame>(ctx: &C, flow: &mut Flow<Self>) -> Result<Option<usize>, Reason> {
        let version: u8 = ctx.load(ETH_HLEN).map_err(|_| Reason::Malformed)?;
        if version >> 4 != 6 {
            return Err(Reason::Malformed);
        }
        flow.proto = ctx.load(ETH_HLEN + 6).map_err(|_| Reason::Malformed)?;
        load16(ctx, Self::SADDR, &mut flow.saddr)?;
        load16(ctx, Self::DADDR, &mut flow.daddr)?;
        let mut at = Self::L4;
        if flow.proto == IPPROTO_HOPOPTS {
            flow.proto = ctx.load(at).map_err(|_| Reason::Malformed)?;
            let len: u8 = ctx.load(at + 1).map_err(|_| Reason::Malformed)?;
            at += (usize::from(len) + 1) * 8;
        }
        if flow.proto == IPPROTO_FRAGMENT {
            let offset = u16::from_be(ctx.load(at + 2).map_err(|_| Reason::Malformed)?);
            // An offset, or more fragments to come (an atomic fragment, with
            // neither, is a whole datagram).
            flow.fragment = offset & 0xfff9 != 0;
            if offset & 0xfff8 != 0 {
                return Ok(None);
            }
            flow.proto = ctx.load(at).map_err(|_| Reason::Malformed)?;
            at += 8;
        }
        Ok(Some(at))
    }

    #[inline(always)]
    fn widen(a: &[u8; 16], out: &mut [u8; 16]) {
        out.copy_from_slice(a);
    }

    #[inline(always)]
    fn narrow(wide: &[u8; 16], out: &mut [u8; 16]) {
        out.copy_from_slice(wide);
    }

    #[inline(always)]
    fn is(a: &[u8; 16], wide: &[u8; 16]) -> bool {
        wide_eq(a, wide)
    }

    #[inline(always)]
    fn fold(a: &[u8; 16]) -> u32 {
        let x = half(a, 0) ^ half(a, 8);
        (x ^ (x >> 32)) as u32
    }
}

/// An ICMP header (type, code, checksum, 4 bytes of the message's own).
pub const ICMP_HLEN: usize = 8;
/// An ICMP message's checksum, and an echo's identifier.
pub const ICMP_CSUM: usize = 2;
pub const ICMP_ID: usize = 4;

/// IPv6 extension headers walked to find the L4 header.
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_FRAGMENT: u8 = 44;

/// The IPv4 header length we translate (options are rare on pod traffic; packets
/// carrying them pass untranslated).
pub const IP_HLEN: usize = 20;
pub const IP6_HLEN: usize = 40;
/// Offset of the IPv4 header checksum in the frame.
pub const IP_CSUM: usize = ETH_HLEN + 10;

#[inline(always)]
const fn widen4(a: [u8; 4]) -> [u8; 16] {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// The TSval of a TCP segment's timestamp option (RFC 7323), host order,
/// where Linux, and most stacks, put it: after two NOPs (every segment but
/// the SYN), or after the MSS option and SACK-permitted or two NOPs (a SYN).
/// `None` elsewhere (other layouts are not searched: a bounded guess, not an
/// option parser), or without one.
#[inline(always)]
pub fn tcp_tsval<F: Family, C: Frame>(ctx: &C) -> Option<u32> {
    const OPTS: usize = 20;
    let doff: u8 = ctx.load(F::L4 + 12).ok()?;
    let len = usize::from(doff >> 4) * 4;
    let head: [u8; 4] = ctx.load(F::L4 + OPTS).ok()?;
    let at = if head == [1, 1, 8, 10] {
        OPTS + 4
    } else if head[0] == 2 && head[1] == 4 && ctx.load::<[u8; 2]>(F::L4 + OPTS + 6).ok()? == [8, 10] {
        OPTS + 8
    } else {
        return None;
    };
    if at + 8 > len {
        return None;
    }
    ctx.load::<u32>(F::L4 + at).ok().map(u32::from_be)
}

/// Whether two addresses in the maps' 16-byte form are equal.
#[inline(always)]
pub fn wide_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    half(a, 0) == half(b, 0) && half(a, 8) == half(b, 8)
}

#[inline(always)]
fn half(x: &[u8; 16], i: usize) -> u64 {
    u64::from_ne_bytes([
        x[i],
        x[i + 1],
        x[i + 2],
        x[i + 3],
        x[i + 4],
        x[i + 5],
        x[i + 6],
        x[i + 7],
    ])
}

/// In 8-byte halves: a 16-byte load would be an `i128` (see the module's note).
#[inline(always)]
fn load16<C: Frame>(ctx: &C, at: usize, out: &mut [u8; 16]) -> Result<(), Reason> {
    out[..8].copy_from_slice(&ctx.load::<[u8; 8]>(at).map_err(|_| Reason::Malformed)?);
    out[8..].copy_from_slice(&ctx.load::<[u8; 8]>(at + 8).map_err(|_| Reason::Malformed)?);
    Ok(())
}

/// A TCP or UDP packet's tuple. Addresses and ports are kept as they are on the
/// wire (network order), which is also what the maps hold.
pub struct Flow<F: Family> {
    pub saddr: F::Addr,
    pub daddr: F::Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// The load balancer has given the packet a new destination.
    pub translated: bool,
    /// A fragment of a datagram, first or not: every fragment must go the
    /// same way (see `main::onward`).
    pub fragment: bool,
}

impl<F: Family> Flow<F> {
    /// A flow with nothing read yet.
    #[inline(always)]
    pub const fn new() -> Self {
        Self {
            saddr: F::ANY,
            daddr: F::ANY,
            sport: 0,
            dport: 0,
            proto: 0,
            tcp_flags: 0,
            translated: false,
            fragment: false,
        }
    }

    /// Where the L4 checksum is: TCP's, UDP's, or an ICMP echo's.
    pub const fn l4_csum_offset(&self) -> usize {
        F::L4
            + match self.proto {
                IPPROTO_TCP => 16,
                IPPROTO_UDP => 6,
                _ => ICMP_CSUM,
            }
    }

    /// Where the port of `dest`ination or source is: an ICMP echo's
    /// identifier stands for both (see [`parse_any`]).
    pub const fn port_offset(&self, dest: bool) -> usize {
        F::L4
            + if self.proto == F::ICMP {
                ICMP_ID
            } else if dest {
                2
            } else {
                0
            }
    }

    /// Whether the L4 checksum covers the addresses (a pseudo-header): all
    /// but ICMP for IPv4.
    pub const fn pseudo_header(&self) -> bool {
        self.proto != IPPROTO_ICMP
    }
}

/// The ethertype of the frame, in network order.
#[inline(always)]
pub fn ethertype<C: Frame>(ctx: &C) -> Result<u16, Reason> {
    ctx.load(12).map_err(|_| Reason::Malformed)
}

/// Parses a frame already known to be of family `F` for the load balancer:
/// [`Seen::Error`], [`Seen::Fragment`] or [`Seen::Other`] for what it leaves alone (IPv4 fragments after the first and IPv4
/// options, IPv6 extension headers, ICMP other than echo, protocols other
/// than TCP and UDP: SCTP's CRC32c cannot be patched incrementally and this
/// kernel has no SCTP to test against). ICMP echo reaches only masquerade:
/// no frontend has its protocol.
#[inline(always)]
pub fn parse<F: Family, C: Frame>(ctx: &C) -> Result<Seen<F>, Reason> {
    let p = parse_any(ctx)?;
    Ok(if p.lb {
        Seen::Flow(p.flow)
    } else if p.quoted != 0 {
        Seen::Error
    } else if p.flow.fragment {
        Seen::Fragment(p.flow)
    } else {
        Seen::Other
    })
}

/// A packet as [`parse`] reads it for the load balancer.
pub enum Seen<F: Family> {
    /// A flow it may translate.
    Flow(Flow<F>),
    /// An ICMP error, which quotes a packet of some flow: one it may have
    /// translated (`lb::quoted`).
    Error,
    /// A fragment without the L4 header it reads (after the first, or any
    /// IPv6 fragment): its addresses alone.
    Fragment(Flow<F>),
    /// Anything else it leaves alone.
    Other,
}

/// A packet as [`parse_any`] reads it.
pub struct Parsed<F: Family> {
    /// Addresses always; protocol and ports where `judge`.
    pub flow: Flow<F>,
    /// Policy judges it (not ICMP of [`Family::icmp_passes`], not a fragment
    /// after the first: no L4 header; the first one was judged, and without it
    /// they never reassemble).
    pub judge: bool,
    /// The load balancer may translate it (see [`parse`]).
    pub lb: bool,
    /// An ICMP error: where the packet it quotes starts (its IP header), 0 for
    /// anything else. Policy passes it only when that packet belongs to a flow
    /// it admitted ([`inner`]).
    pub quoted: usize,
}

/// Writes the tuple of the packet an ICMP error quotes at `at` (its IP header
/// and at least 8 bytes of what follows, RFC 792 / RFC 4443) into `k`, as that
/// packet went or, `reverse`d, as its replies go; in a policy conntrack key's
/// form. Ports are read for TCP, UDP and SCTP, the identifier for ICMP echo; a
/// quoted IPv6 packet's extension headers are not walked (ports 0 then).
/// Returns where the quoted L4 header starts.
#[inline(always)]
pub fn quoted_key<F: Family, C: Frame>(
    ctx: &C,
    at: usize,
    k: &mut CtKey,
    reverse: bool,
) -> Result<usize, Reason> {
    let (s, d) = if reverse {
        (&mut k.daddr, &mut k.saddr)
    } else {
        (&mut k.saddr, &mut k.daddr)
    };
    let (proto, l4) = F::quoted(ctx, at, s, d)?;
    let (mut sport, mut dport) = (0u16, 0u16);
    if proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP {
        sport = ctx.load(l4).map_err(|_| Reason::Malformed)?;
        dport = ctx.load(l4 + 2).map_err(|_| Reason::Malformed)?;
    } else if proto == F::ICMP {
        let icmp_type: u8 = ctx.load(l4).map_err(|_| Reason::Malformed)?;
        let id: u16 = ctx.load(l4 + ICMP_ID).map_err(|_| Reason::Malformed)?;
        if icmp_type == F::ECHO[0] {
            sport = id;
        } else if icmp_type == F::ECHO[1] {
            dport = id;
        }
    }
    if reverse {
        (sport, dport) = (dport, sport);
    }
    k.sport = sport;
    k.dport = dport;
    k.proto = proto;
    k.family = F::AF;
    k.dir = 0;
    k._pad = 0;
    Ok(l4)
}

/// Keeps `flow`'s tuple in the scratch value for a later step of this
/// program run, in a frame of its own.
#[inline(always)]
pub fn keep<F: Family>(flow: &Flow<F>, kept: &mut KeptFlow) {
    F::widen(&flow.saddr, &mut kept.saddr);
    F::widen(&flow.daddr, &mut kept.daddr);
    kept.sport = flow.sport;
    kept.dport = flow.dport;
    kept.proto = flow.proto;
    kept.tcp_flags = flow.tcp_flags;
}

/// The flow a pod's veth or a node device kept ([`keep`]) before it handed
/// the packet over in this run, as [`parse_any`] would read the packet again:
/// one policy judges (ICMP errors are never handed over). `lb`: whether the
/// load balancer's step into a pod (`lb::to_pod`) may have work to do (see
/// `main::Came`).
#[inline(always)]
pub fn handed<F: Family>(kept: &KeptFlow, lb: bool) -> Parsed<F> {
    let mut flow = Flow::new();
    F::narrow(&kept.saddr, &mut flow.saddr);
    F::narrow(&kept.daddr, &mut flow.daddr);
    flow.sport = kept.sport;
    flow.dport = kept.dport;
    flow.proto = kept.proto;
    flow.tcp_flags = kept.tcp_flags;
    Parsed {
        flow,
        judge: true,
        lb,
        quoted: 0,
    }
}

/// Parses any IP packet of family `F`, as NetworkPolicy judges every protocol:
/// ports for TCP, UDP and SCTP, the echo identifier for ICMP echo (as the
/// request's source port and the reply's destination port, so that a reply is
/// the request's reverse tuple), 0 elsewhere.
#[inline(always)]
pub fn parse_any<F: Family, C: Frame>(ctx: &C) -> Result<Parsed<F>, Reason> {
    let mut flow = Flow::new();
    let Some(l4) = F::parse_ip(ctx, &mut flow)? else {
        return Ok(Parsed {
            flow,
            judge: false,
            lb: false,
            quoted: 0,
        });
    };
    let mut echo = false;
    if flow.proto == IPPROTO_TCP {
        // Ports and flags in one read, not three: this runs on every packet.
        // Ports stay in network order (bytes as on the wire, as the maps
        // hold them): `from_ne_bytes` converts nothing.
        let h: [u8; TCP_FLAGS + 1] = ctx.load(l4).map_err(|_| Reason::Malformed)?;
        flow.sport = u16::from_ne_bytes([h[0], h[1]]);
        flow.dport = u16::from_ne_bytes([h[2], h[3]]);
        flow.tcp_flags = h[TCP_FLAGS];
    } else if flow.proto == IPPROTO_UDP || flow.proto == IPPROTO_SCTP {
        let ports: [u8; 4] = ctx.load(l4).map_err(|_| Reason::Malformed)?;
        flow.sport = u16::from_ne_bytes([ports[0], ports[1]]);
        flow.dport = u16::from_ne_bytes([ports[2], ports[3]]);
    } else if flow.proto == F::ICMP {
        let icmp_type: u8 = ctx.load(l4).map_err(|_| Reason::Malformed)?;
        if F::icmp_passes(icmp_type) {
            return Ok(Parsed {
                flow,
                judge: false,
                lb: false,
                quoted: if F::icmp_error(icmp_type) {
                    l4 + ICMP_HLEN
                } else {
                    0
                },
            });
        }
        let id: u16 = ctx.load(l4 + ICMP_ID).map_err(|_| Reason::Malformed)?;
        if icmp_type == F::ECHO[0] {
            flow.sport = id;
            echo = true;
        } else if icmp_type == F::ECHO[1] {
            flow.dport = id;
            echo = true;
        }
    }
    // The load balancer translates TCP and UDP with the L4 header right after a
    // plain IP header (options and extension headers are rare on pod traffic);
    // masquerade ICMP echo too (its identifier as the port), as a pod's ping
    // leaves the cluster.
    let lb = l4 == F::L4 && (flow.proto == IPPROTO_TCP || flow.proto == IPPROTO_UDP || echo);
    Ok(Parsed {
        flow,
        judge: true,
        lb,
        quoted: 0,
    })
}
