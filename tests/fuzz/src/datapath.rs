//! Ethernet frames through every TC program, with `BPF_PROG_TEST_RUN`, against
//! a datapath whose maps hold a small cluster: two Services (one without
//! endpoints), a NodePort, an IPv6 Service, local and remote pods, and an
//! isolated pod with one rule. Root only.
//!
//! For every frame and program:
//! - the verdict is one the programs document: pass (`TC_ACT_OK`), drop
//!   (`TC_ACT_SHOT`) or redirect (`TC_ACT_REDIRECT`);
//! - a packet whose flow the datapath does not know (its destination is no
//!   frontend, no conntrack entry has its tuple either way; for an ICMP error,
//!   none has the tuple of the packet it quotes) leaves as it came;
//! - a rewritten packet of valid checksums has valid checksums (IPv4 header,
//!   TCP, UDP, ICMP, ICMPv6).

use std::path::PathBuf;

use aya::programs::{TestRun, TestRunOptions};

use weir_agent::datapath::{Datapath as Loaded, PinLayout};
use weir_common::{
    AF_INET, AF_INET6, BACKEND_ACTIVE, Backend, CT_IN, CT_OUT, CtKey, EndpointInfo, EndpointKey, IPPROTO_TCP,
    IPPROTO_UDP, IpcacheKey, NodeAddrs, POLICY_F_EGRESS, POLICY_F_INGRESS, POLICY_PREFIX_FULL,
    PolicyEndpoint, PolicyKey, SVC_F_NODEPORT, ServiceKey, ServiceValue,
    programs::{CLASSIFIERS, FROM_NETDEV, FROM_POD},
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const LOCAL: [u8; 4] = [10, 0, 0, 2];
const ISOLATED: [u8; 4] = [10, 0, 0, 3];
const REMOTE: [u8; 4] = [10, 0, 1, 5];
const VIP: [u8; 4] = [10, 96, 0, 10];
const EMPTY_VIP: [u8; 4] = [10, 96, 0, 11];
const NODE: [u8; 4] = [192, 168, 0, 1];
const OUTSIDE: [u8; 4] = [203, 0, 113, 7];
const ROUTER: [u8; 4] = [198, 51, 100, 1];
const CLIENT6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const LOCAL6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const VIP6: [u8; 16] = [0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];

/// A loaded datapath with the cluster above in its maps, pinned under a root
/// of its own (removed on drop).
pub struct Datapath {
    root: PathBuf,
    dp: Loaded,
}

fn wide(a: [u8; 4]) -> [u8; 16] {
    let mut w = [0; 16];
    w[..4].copy_from_slice(&a);
    w
}

impl Datapath {
    /// Loads the programs under `root` (replacing whatever is pinned there) and
    /// fills the maps.
    pub fn new(root: PathBuf) -> Self {
        let _ = std::fs::remove_dir_all(&root);
        let dp = Loaded::load(PinLayout::new(&root)).expect("load the datapath (root, bpffs mounted)");
        let mut me = Self { root, dp };
        me.fill();
        // The flows the templates of ICMP errors quote, tracked from the
        // start, so that every run of those templates meets them.
        for (program, i) in [(FROM_POD, 2), (FROM_NETDEV, 6), (FROM_POD, 8)] {
            let frame = template(i);
            me.exec(program, &frame);
            let (family, saddr, daddr, proto, l4) = tuple(&frame).expect("template");
            let (sport, dport) = ports(&frame, l4).expect("ports");
            assert!(
                me.tracked(family, proto, (saddr, sport), (daddr, dport)),
                "template {i} through {program} left no conntrack entry"
            );
        }
        me
    }

    /// `BPF_PROG_TEST_RUN` of `program` on `frame`: the verdict and the
    /// frame as it left.
    fn exec(&self, program: &'static str, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog = self.dp.program(program).expect("program");
        let mut out = vec![0u8; 2048];
        let result = match prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        }) {
            Ok(result) => result,
            Err(e) => panic!("BPF_PROG_TEST_RUN of {program} on {frame:02x?}: {e:?}"),
        };
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn fill(&mut self) {
        let dp = &mut self.dp;
        let mut service = |family: u8,
                           addr: [u8; 16],
                           port: u16,
                           proto: u8,
                           flags: u32,
                           backends: &[[u8; 16]],
                           id0: u32| {
            let key = |slot| ServiceKey {
                addr,
                port: port.to_be(),
                slot,
                proto,
                family,
                ..Default::default()
            };
            for (i, b) in backends.iter().enumerate() {
                let id = id0 + i as u32;
                let backend = Backend {
                    addr: *b,
                    port: 8080u16.to_be(),
                    proto,
                    family,
                    state: BACKEND_ACTIVE,
                    ..Default::default()
                };
                dp.backends.insert(id, backend, 0).expect("backend");
                let slot = ServiceValue {
                    backend_id: id,
                    rev_nat_id: id0,
                    ..Default::default()
                };
                dp.services.insert(key(i as u16 + 1), slot, 0).expect("slot");
            }
            let head = ServiceValue {
                count: backends.len() as u16,
                rev_nat_id: id0,
                flags,
                ..Default::default()
            };
            dp.services.insert(key(0), head, 0).expect("service");
        };
        let (local, remote) = (wide(LOCAL), wide(REMOTE));
        service(AF_INET, wide(VIP), 80, IPPROTO_TCP, 0, &[local, remote], 10);
        // One backend: the ICMP error of template 10 quotes its flow.
        service(AF_INET, wide(VIP), 53, IPPROTO_UDP, 0, &[local], 20);
        service(AF_INET, wide(EMPTY_VIP), 80, IPPROTO_TCP, 0, &[], 30);
        service(
            AF_INET,
            wide(NODE),
            30080,
            IPPROTO_TCP,
            SVC_F_NODEPORT,
            &[local, remote],
            40,
        );
        service(AF_INET6, VIP6, 80, IPPROTO_TCP, 0, &[LOCAL6], 50);
        // Pods on this node live on `lo`, the test run's device: anything they
        // send passes the anti-spoofing check, and redirects have a target.
        let on_lo = EndpointInfo {
            ifindex: 1,
            ..Default::default()
        };
        for ep in [
            EndpointKey::v4(CLIENT),
            EndpointKey::v4(LOCAL),
            EndpointKey::v4(ISOLATED),
            EndpointKey::v6(CLIENT6),
            EndpointKey::v6(LOCAL6),
        ] {
            dp.endpoints.insert(ep, on_lo, 0).expect("endpoint");
        }
        dp.node
            .set(
                0,
                NodeAddrs {
                    v4: wide(NODE),
                    ..Default::default()
                },
                0,
            )
            .expect("node");
        dp.node_ips.insert(EndpointKey::v4(NODE), 1, 0).expect("node ip");
        // ISOLATED admits TCP 80 from 10.0.0.0/24 and sends nothing.
        dp.policy_endpoints
            .insert(
                EndpointKey::v4(ISOLATED),
                PolicyEndpoint {
                    id: 1,
                    flags: POLICY_F_INGRESS | POLICY_F_EGRESS,
                },
                0,
            )
            .expect("policy endpoint");
        let pods = IpcacheKey {
            family: AF_INET,
            addr: wide([10, 0, 0, 0]),
        };
        dp.ipcache
            .insert(&aya::maps::lpm_trie::Key::new(8 + 24, pods), 256, 0)
            .expect("ipcache");
        let rule = PolicyKey {
            endpoint: 1,
            identity: 256,
            egress: 0,
            proto: IPPROTO_TCP,
            port: 80u16.to_be(),
        };
        dp.policy
            .insert(&aya::maps::lpm_trie::Key::new(POLICY_PREFIX_FULL, rule), 1, 0)
            .expect("rule");
    }

    /// Runs one input: the first byte picks the program and the frame (a
    /// template whose bytes the rest overwrites, checksums then fixed, or the
    /// rest as a raw frame); checks the invariants.
    pub fn run(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let Some((&pick, rest)) = data.split_first() else {
            return;
        };
        let program = CLASSIFIERS[usize::from(pick) % CLASSIFIERS.len()];
        let (frame, fixed) = if pick & 0x80 != 0 {
            (rest.to_vec(), false)
        } else {
            let mut frame = template(usize::from(pick >> 2) % TEMPLATES);
            for pair in rest.chunks_exact(2) {
                let at = usize::from(pair[0]) % frame.len();
                frame[at] = pair[1];
            }
            fix_checksums(&mut frame);
            (frame, true)
        };
        // What the kernel refuses to run at all: a frame shorter than its
        // Ethernet header or than the IP header its ethertype announces.
        let shortest = match frame.get(12..14) {
            Some([0x08, 0x00]) => 14 + 20,
            Some([0x86, 0xdd]) => 14 + 40,
            _ => 14,
        };
        if frame.len() < shortest || frame.len() > 1500 {
            return;
        }
        let known = self.knows(&frame);
        let (verdict, out) = self.exec(program, &frame);
        assert!(
            [TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT].contains(&verdict),
            "{program}: undocumented verdict {verdict} for {frame:02x?}"
        );
        if out != frame {
            assert!(
                known,
                "{program}: a packet of no known flow was rewritten:\n in  {frame:02x?}\n out {out:02x?}"
            );
            if fixed && frame[12..14] == out[12..14] {
                checksums_valid(&out)
                    .unwrap_or_else(|e| panic!("{program}: {e}:\n in  {frame:02x?}\n out {out:02x?}"));
                // A quoted IPv4 header keeps a valid checksum valid.
                assert!(
                    quoted_ipv4_sum_ok(&frame) != Some(true) || quoted_ipv4_sum_ok(&out) == Some(true),
                    "{program}: bad quoted IPv4 header checksum:\n in  {frame:02x?}\n out {out:02x?}"
                );
            }
        }
    }

    /// Whether the datapath knows the frame's flow: a frontend is its
    /// destination, or the conntrack holds its tuple (either direction); for
    /// an ICMP error, the conntrack holds the tuple of the packet it quotes,
    /// either way round. Read as the programs read it (fixed offsets, lengths
    /// in the header not trusted), for what the load balancer translates: TCP
    /// and UDP right after an option-less IP header.
    fn knows(&self, frame: &[u8]) -> bool {
        let Some((family, saddr, daddr, proto, l4)) = tuple(frame) else {
            return false;
        };
        // What the programs take for an ICMP error (`Family::icmp_error`).
        let error = match (family, proto, frame.get(l4)) {
            (AF_INET, 1, Some(t)) => [3, 11, 12].contains(t),
            (AF_INET6, 58, Some(t)) => (1..=4).contains(t),
            _ => false,
        };
        if error && frame.len() > l4 + 8 {
            let mut quoted = frame[..14].to_vec();
            quoted.extend_from_slice(&frame[l4 + 8..]);
            let Some((family, saddr, daddr, proto, l4)) = tuple(&quoted) else {
                return false;
            };
            let Some((sport, dport)) = ports(&quoted, l4) else {
                return false;
            };
            return self.tracked(family, proto, (saddr, sport), (daddr, dport))
                || self.tracked(family, proto, (daddr, dport), (saddr, sport));
        }
        if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
            return false;
        }
        let Some((sport, dport)) = ports(frame, l4) else {
            return false;
        };
        let frontend = |scope| ServiceKey {
            addr: daddr,
            port: dport,
            slot: 0,
            proto,
            family,
            scope,
            _pad: 0,
        };
        [0, 1]
            .iter()
            .any(|s| self.dp.services.get(&frontend(*s), 0).is_ok())
            || self.tracked(family, proto, (saddr, sport), (daddr, dport))
    }

    /// Whether the conntrack holds this tuple, in either direction's entry.
    fn tracked(&self, family: u8, proto: u8, from: ([u8; 16], u16), to: ([u8; 16], u16)) -> bool {
        [CT_OUT, CT_IN].iter().any(|dir| {
            let key = CtKey {
                saddr: from.0,
                daddr: to.0,
                sport: from.1,
                dport: to.1,
                proto,
                family,
                dir: *dir,
                _pad: 0,
            };
            self.dp.conntrack.get(&key, 0).is_ok()
        })
    }
}

/// The ports (as on the wire) of the L4 header at `l4`, if the frame has them.
fn ports(frame: &[u8], l4: usize) -> Option<(u16, u16)> {
    let p = frame.get(l4..l4 + 4)?;
    Some((u16::from_ne_bytes([p[0], p[1]]), u16::from_ne_bytes([p[2], p[3]])))
}

/// Family, addresses (the maps' form), protocol and L4 offset.
type Tuple = (u8, [u8; 16], [u8; 16], u8, usize);

/// The [`Tuple`] of an IPv4 frame without options or an IPv6 frame, read at
/// fixed offsets.
fn tuple(frame: &[u8]) -> Option<Tuple> {
    match frame.get(12..14)? {
        [0x08, 0x00] if frame.get(14)? & 0x0f == 5 && frame.len() >= 34 => {
            let a = |at: usize| wide([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]]);
            Some((AF_INET, a(26), a(30), frame[23], 34))
        }
        [0x86, 0xdd] if frame.len() >= 54 => {
            let a = |at: usize| <[u8; 16]>::try_from(&frame[at..at + 16]).unwrap_or_default();
            Some((AF_INET6, a(22), a(38), frame[20], 54))
        }
        _ => None,
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

const TEMPLATES: usize = 13;

/// Frames the cluster above has something to say about.
fn template(i: usize) -> Vec<u8> {
    use etherparse::PacketBuilder;
    let mut out = Vec::new();
    let payload = b"hello, weir";
    let (mac_a, mac_b) = ([2; 6], [4; 6]);
    let written = match i {
        0 => PacketBuilder::ethernet2(mac_a, mac_b)
            .ipv4(CLIENT, VIP, 64)
            .tcp(40_000, 80, 1, 64_000)
            .syn()
            .write(&mut out, payload),
        1 => PacketBuilder::ethernet2(mac_a, mac_b)
            .ipv4(CLIENT, VIP, 64)
            .tcp(40_000, 80, 1, 64_000)
            .ack(7)
            .write(&mut out, payload),
        2 => PacketBuilder::ethernet2(mac_a, mac_b)
            .ipv4(CLIENT, VIP, 64)
            .udp(40_001, 53)
            .write(&mut out, payload),
        3 => PacketBuilder::ethernet2(mac_a, mac_b)
            .ipv4(CLIENT, EMPTY_VIP, 64)
            .tcp(40_002, 80, 1, 64_000)
            .syn()
            .write(&mut out, payload),
        4 => PacketBuilder::ethernet2(mac_a, mac_b)
            .ipv4(LOCAL, CLIENT, 64)
            .tcp(8080, 40_000, 1, 64_000)
            .syn()
            .ack(2)
            .write(&mut out, payload),
        5 => PacketBuilder::ethernet2(mac_a, mac_b)
            .ipv4(CLIENT, ISOLATED, 64)
            .tcp(40_003, 80, 1, 64_000)
            .syn()
            .write(&mut out, payload),
        6 => PacketBuilder::ethernet2(mac_a, mac_b)
            .ipv4(OUTSIDE, NODE, 64)
            .tcp(50_000, 30080, 1, 64_000)
            .syn()
            .write(&mut out, payload),
        7 => PacketBuilder::ethernet2(mac_a, mac_b)
            .ipv4(ISOLATED, OUTSIDE, 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ))
            .write(&mut out, &quoted_udp()),
        8 => PacketBuilder::ethernet2(mac_a, mac_b)
            .ipv6(CLIENT6, VIP6, 64)
            .tcp(40_000, 80, 1, 64_000)
            .syn()
            .write(&mut out, payload),
        9 => PacketBuilder::ethernet2(mac_a, mac_b)
            .ipv6(LOCAL6, CLIENT6, 64)
            .udp(8080, 40_000)
            .write(&mut out, payload),
        // ICMP errors about the translated flows above (once a program has
        // tracked them): the local backend's port unreachable to its client
        // (template 2's flow); a router's "fragmentation needed" about the
        // NodePort's reply to its outside client (template 6's); the local
        // backend's "packet too big" to its IPv6 client (template 8's).
        10 => PacketBuilder::ethernet2(mac_a, mac_b)
            .ipv4(LOCAL, CLIENT, 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ))
            .write(&mut out, &quote4(CLIENT, LOCAL, Quoted::Udp(40_001, 8080))),
        11 => PacketBuilder::ethernet2(mac_a, mac_b)
            .ipv4(ROUTER, NODE, 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
            ))
            .write(&mut out, &quote4(NODE, OUTSIDE, Quoted::Tcp(30080, 50_000))),
        _ => {
            let mut quote = Vec::new();
            PacketBuilder::ipv6(CLIENT6, LOCAL6, 64)
                .tcp(40_000, 8080, 1, 64_000)
                .write(&mut quote, &[])
                .expect("quote");
            PacketBuilder::ethernet2(mac_a, mac_b)
                .ipv6(LOCAL6, CLIENT6, 64)
                .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
                .write(&mut out, &quote)
        }
    };
    written.expect("template");
    out
}

/// An IPv4 + UDP header as an ICMP error quotes it.
fn quoted_udp() -> Vec<u8> {
    quote4(OUTSIDE, ISOLATED, Quoted::Udp(5555, 7777))
}

/// The L4 header of a quoted packet, with its ports.
enum Quoted {
    Udp(u16, u16),
    Tcp(u16, u16),
}

/// An IPv4 packet from `saddr` to `daddr` as an ICMP error quotes it.
fn quote4(saddr: [u8; 4], daddr: [u8; 4], l4: Quoted) -> Vec<u8> {
    let mut q = Vec::new();
    let ip = etherparse::PacketBuilder::ipv4(saddr, daddr, 64);
    match l4 {
        Quoted::Udp(sport, dport) => ip.udp(sport, dport).write(&mut q, &[]),
        Quoted::Tcp(sport, dport) => ip.tcp(sport, dport, 1, 64_000).write(&mut q, &[]),
    }
    .expect("quote");
    q
}

/// Where a frame's checksums are: the IPv4 header's (offset, header length),
/// and the L4 checksum's offset with the sum its pseudo-header starts from and
/// the L4 range. `None` for what is not IPv4/IPv6 with TCP, UDP or ICMP whole
/// in the frame.
struct Sums {
    ip: Option<(usize, usize)>,
    l4: Option<(usize, u32, std::ops::Range<usize>)>,
}

fn sums(frame: &[u8]) -> Option<Sums> {
    let be16 = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    match frame.get(12..14)? {
        [0x08, 0x00] => {
            let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
            if ihl < 20 || frame.len() < 14 + ihl {
                return None;
            }
            let total = usize::from(be16(16));
            let end = 14 + total;
            let l4 = 14 + ihl;
            let proto = frame[23];
            let first_fragment = be16(20) & 0x1fff == 0;
            let csum_at = match proto {
                6 => l4 + 16,
                17 => l4 + 6,
                1 => l4 + 2,
                _ => 0,
            };
            let l4_sum =
                (csum_at != 0 && first_fragment && end <= frame.len() && total >= ihl && csum_at + 2 <= end)
                    .then(|| {
                        let len = (end - l4) as u32;
                        let pseudo = if proto == 1 {
                            0
                        } else {
                            ones(&frame[26..34]) + u32::from(proto) + len
                        };
                        (csum_at, pseudo, l4..end)
                    });
            Some(Sums {
                ip: Some((14, ihl)),
                l4: l4_sum,
            })
        }
        [0x86, 0xdd] => {
            if frame.len() < 54 {
                return None;
            }
            let end = 54 + usize::from(be16(18));
            let proto = frame[20];
            let csum_at = match proto {
                6 => 54 + 16,
                17 => 54 + 6,
                58 => 54 + 2,
                _ => 0,
            };
            let l4_sum = (csum_at != 0 && end <= frame.len() && csum_at + 2 <= end).then(|| {
                let pseudo = ones(&frame[22..54]) + u32::from(proto) + (end - 54) as u32;
                (csum_at, pseudo, 54..end)
            });
            Some(Sums { ip: None, l4: l4_sum })
        }
        _ => None,
    }
}

/// The ones'-complement sum of 16-bit words (not folded).
fn ones(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum over `range` (its checksum field at `at` taken as zero).
fn checksum(frame: &[u8], at: usize, pseudo: u32, range: std::ops::Range<usize>) -> u16 {
    let mut copy = frame[range.clone()].to_vec();
    let field = at - range.start;
    copy[field] = 0;
    copy[field + 1] = 0;
    !fold(pseudo + ones(&copy))
}

/// Recomputes the IPv4 header checksum and the L4 checksum where the frame
/// has them whole; leaves anything else as it is.
fn fix_checksums(frame: &mut [u8]) {
    let Some(s) = sums(frame) else { return };
    if let Some((at, len)) = s.ip {
        let c = checksum(frame, at + 10, 0, at..at + len);
        frame[at + 10..at + 12].copy_from_slice(&c.to_be_bytes());
    }
    if let Some((at, pseudo, range)) = s.l4 {
        let c = checksum(frame, at, pseudo, range);
        frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// Whether a frame's checksums (IPv4 header; TCP, UDP, ICMP, ICMPv6) hold.
fn checksums_valid(frame: &[u8]) -> Result<(), String> {
    let Some(s) = sums(frame) else { return Ok(()) };
    if let Some((at, len)) = s.ip {
        let want = checksum(frame, at + 10, 0, at..at + len);
        let got = u16::from_be_bytes([frame[at + 10], frame[at + 11]]);
        if got != want {
            return Err(format!("bad IPv4 header checksum {got:#06x}, want {want:#06x}"));
        }
    }
    if let Some((at, pseudo, range)) = s.l4 {
        let got = u16::from_be_bytes([frame[at], frame[at + 1]]);
        // UDP over IPv4 may carry none.
        if got == 0 && frame[12..14] == [0x08, 0x00] && frame[23] == 17 {
            return Ok(());
        }
        let want = checksum(frame, at, pseudo, range);
        if got != want && !(got == 0xffff && want == 0) && !(got == 0 && want == 0xffff) {
            return Err(format!("bad L4 checksum {got:#06x}, want {want:#06x}"));
        }
    }
    Ok(())
}

/// Whether the IPv4 header an ICMPv4 error quotes has a valid checksum;
/// `None` when the frame is no such error or the header is not all there.
fn quoted_ipv4_sum_ok(frame: &[u8]) -> Option<bool> {
    let (family, _, _, proto, l4) = tuple(frame)?;
    if family != AF_INET || proto != 1 {
        return None;
    }
    let at = l4 + 8;
    let len = usize::from(frame.get(at)? & 0x0f) * 4;
    if len < 20 || frame.len() < at + len {
        return None;
    }
    Some(checksum(frame, at + 10, 0, at..at + len) == u16::from_be_bytes([frame[at + 10], frame[at + 11]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_have_valid_checksums_once_fixed_and_a_flipped_byte_is_caught() {
        for i in 0..TEMPLATES {
            let mut frame = template(i);
            checksums_valid(&frame).unwrap_or_else(|e| panic!("template {i}: {e}"));
            fix_checksums(&mut frame);
            assert_eq!(frame, template(i), "template {i}: fixing valid sums changed them");
            let last = frame.len() - 1;
            frame[last] ^= 0x5a;
            assert!(
                checksums_valid(&frame).is_err(),
                "template {i}: a corrupt payload passed"
            );
        }
    }
}
