//! Tier 1 (root + kernel): the pod program on crafted packets through
//! `BPF_PROG_TEST_RUN`, with maps filled from user space. These check the bytes:
//! NAT rewrites and *full* checksums, which veth traffic in the lab cannot show
//! (locally sent packets carry partial checksums that the NIC would finish).

use std::path::PathBuf;

use aya::programs::{TestRun, TestRunOptions};
use weir_agent::datapath::{Datapath, PinLayout};
use weir_common::{
    AF_INET, AF_INET6, BACKEND_ACTIVE, BACKEND_TERMINATING, Backend, CT_IN, CT_OUT, CtKey, EndpointInfo,
    EndpointKey, IPPROTO_TCP, IPPROTO_UDP, MAGLEV_TABLE_SIZE, MaglevTable, NodeAddrs, SCOPE_INTERNAL,
    SVC_F_AFFINITY, SVC_F_DROP_EMPTY, SVC_F_EXT_LOCAL, SVC_F_MAGLEV, SVC_F_TWO_SCOPES, ServiceKey,
    ServiceValue,
    programs::{FROM_NETDEV, FROM_NETDEV_XDP, FROM_POD, TO_NETDEV, TO_POD},
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const CLIENT: [u8; 4] = [10, 0, 0, 1];
const BACKEND_A: [u8; 4] = [10, 0, 0, 2];
const BACKEND_B: [u8; 4] = [10, 0, 0, 3];
const VIP: [u8; 4] = [10, 96, 0, 10];
const CLIENT6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const BACKEND6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const VIP6: [u8; 16] = [0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const HAIRPIN6: [u8; 16] = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42];

struct Lab {
    root: PathBuf,
    dp: Datapath,
}

impl Lab {
    fn new(tag: &str) -> Self {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test runs eBPF programs: run it as root"
        );
        let root = PathBuf::from(format!("/sys/fs/bpf/weir-test-pkt-{tag}-{}", std::process::id()));
        let dp = Datapath::load(PinLayout::new(&root)).unwrap_or_else(|e| {
            // What it pinned before failing would hold the maps' memory
            // (hundreds of MiB a lab) until the machine restarts.
            let _ = std::fs::remove_dir_all(&root);
            panic!("load datapath: {e:?}")
        });
        Self { root, dp }
    }

    /// A frontend VIP:80/proto with the given backends (port 8080).
    fn service(&mut self, proto: u8, backends: &[[u8; 4]], flags: u32) {
        let backends: Vec<_> = backends.iter().map(|b| a16(*b)).collect();
        self.service_of(AF_INET, a16(VIP), proto, &backends, flags);
    }

    /// The same for IPv6: VIP6 with backends on port 8080.
    fn service6(&mut self, proto: u8, backends: &[[u8; 16]]) {
        self.service_of(AF_INET6, VIP6, proto, backends, 0);
    }

    fn service_of(&mut self, family: u8, vip: [u8; 16], proto: u8, backends: &[[u8; 16]], flags: u32) {
        let key = |slot| ServiceKey {
            addr: vip,
            port: 80u16.to_be(),
            slot,
            proto,
            family,
            ..Default::default()
        };
        for (i, b) in backends.iter().enumerate() {
            let id = i as u32 + 1;
            let backend = Backend {
                addr: *b,
                port: 8080u16.to_be(),
                proto,
                family,
                state: BACKEND_ACTIVE,
                ..Default::default()
            };
            self.dp.backends.insert(id, backend, 0).expect("backend");
            self.dp
                .services
                .insert(
                    key(id as u16),
                    ServiceValue {
                        backend_id: id,
                        rev_nat_id: 1,
                        ..Default::default()
                    },
                    0,
                )
                .expect("slot");
        }
        let svc = ServiceValue {
            count: backends.len() as u16,
            rev_nat_id: 1,
            flags,
            affinity_timeout: 600,
            ..Default::default()
        };
        self.dp.services.insert(key(0), svc, 0).expect("service");
    }

    /// Runs `from_pod` on a frame sent by the pod whose address it carries:
    /// that address lives on this veth (the test run's device, `lo`) while the
    /// frame runs, as the anti-spoofing check wants. Returns the verdict and the
    /// frame after it.
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let source = match frame[12..14] {
            [0x08, 0x00] => EndpointKey::v4([frame[26], frame[27], frame[28], frame[29]]),
            _ => EndpointKey::v6(frame[22..38].try_into().expect("IPv6 source")),
        };
        let added = self.dp.endpoints.get(&source, 0).is_err();
        if added {
            let on_lo = EndpointInfo {
                ifindex: 1,
                ..Default::default()
            };
            self.dp
                .endpoints
                .insert(source, on_lo, 0)
                .expect("source endpoint");
        }
        let out = self.run_on(FROM_POD, frame);
        if added {
            self.dp.endpoints.remove(&source).expect("source endpoint");
        }
        out
    }

    /// Runs `program` on a frame; returns the verdict and the frame after it.
    fn run_on(&self, program: &'static str, frame: &[u8]) -> (u32, Vec<u8>) {
        if program == FROM_NETDEV_XDP {
            return test_run(self.dp.xdp_program(program).expect("program"), frame);
        }
        test_run(self.dp.program(program).expect("program"), frame)
    }
}

/// `BPF_PROG_TEST_RUN` of `prog` on a frame: the verdict and the frame after it.
fn test_run(
    prog: &impl for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
    frame: &[u8],
) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; 256];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn a16(a: [u8; 4]) -> [u8; 16] {
    let mut x = [0u8; 16];
    x[..4].copy_from_slice(&a);
    x
}

const MAC_DST: [u8; 6] = [2, 0, 0, 0, 0, 0xaa];
const MAC_SRC: [u8; 6] = [2, 0, 0, 0, 0, 0xbb];
const PAYLOAD: &[u8] = b"hello";

/// A TCP segment (with `tcp_flags`) or a UDP datagram of `PAYLOAD`, on an
/// IP step of etherparse's builder (which writes every length and checksum).
fn l4_frame(
    ip: etherparse::PacketBuilderStep<etherparse::IpHeaders>,
    proto: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
) -> Vec<u8> {
    let mut f = Vec::new();
    if proto == IPPROTO_TCP {
        let mut tcp = ip.tcp(sport, dport, 1, 64_240);
        if tcp_flags & 0x01 != 0 {
            tcp = tcp.fin();
        }
        if tcp_flags & 0x02 != 0 {
            tcp = tcp.syn();
        }
        if tcp_flags & 0x04 != 0 {
            tcp = tcp.rst();
        }
        if tcp_flags & 0x10 != 0 {
            tcp = tcp.ack(0);
        }
        tcp.write(&mut f, PAYLOAD).expect("frame");
    } else {
        ip.udp(sport, dport).write(&mut f, PAYLOAD).expect("frame");
    }
    f
}

/// Ethernet + IPv4 + TCP (with `tcp_flags`) or UDP, with correct checksums.
fn frame(proto: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, tcp_flags: u8) -> Vec<u8> {
    let ip = etherparse::PacketBuilder::ethernet2(MAC_SRC, MAC_DST).ipv4(src, dst, 64);
    l4_frame(ip, proto, sport, dport, tcp_flags)
}

/// Ethernet + IPv6 + TCP (with `tcp_flags`) or UDP, with a correct checksum.
fn frame6(proto: u8, src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, tcp_flags: u8) -> Vec<u8> {
    let ip = etherparse::PacketBuilder::ethernet2(MAC_SRC, MAC_DST).ipv6(src, dst, 64);
    l4_frame(ip, proto, sport, dport, tcp_flags)
}

/// A frame's headers, every checksum in it checked against etherparse's own
/// computation (IPv4 header; TCP, UDP, ICMP, ICMPv6 over their pseudo-header).
fn checked(f: &[u8]) -> etherparse::PacketHeaders<'_> {
    use etherparse::{NetHeaders, TransportHeader};
    let h = etherparse::PacketHeaders::from_ethernet_slice(f).expect("a frame etherparse reads");
    let payload = h.payload.slice();
    let (src, dst) = match &h.net {
        Some(NetHeaders::Ipv4(ip, _)) => {
            assert_eq!(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "bad IPv4 header checksum"
            );
            (None, Some(ip.clone()))
        }
        Some(NetHeaders::Ipv6(ip, _)) => (Some((ip.source, ip.destination)), None),
        other => panic!("not IP: {other:?}"),
    };
    let want = match (&h.transport, &dst, src) {
        (Some(TransportHeader::Tcp(t)), Some(ip4), _) => {
            t.calc_checksum_ipv4(ip4, payload).map(|c| (t.checksum, c))
        }
        (Some(TransportHeader::Tcp(t)), None, Some((s, d))) => {
            t.calc_checksum_ipv6_raw(s, d, payload).map(|c| (t.checksum, c))
        }
        (Some(TransportHeader::Udp(u)), Some(ip4), _) => {
            u.calc_checksum_ipv4(ip4, payload).map(|c| (u.checksum, c))
        }
        (Some(TransportHeader::Udp(u)), None, Some((s, d))) => {
            u.calc_checksum_ipv6_raw(s, d, payload).map(|c| (u.checksum, c))
        }
        (Some(TransportHeader::Icmpv4(i)), _, _) => Ok((i.checksum, i.icmp_type.calc_checksum(payload))),
        (Some(TransportHeader::Icmpv6(i)), None, Some((s, d))) => {
            i.icmp_type.calc_checksum(s, d, payload).map(|c| (i.checksum, c))
        }
        other => panic!("no transport header etherparse checks: {other:?}"),
    };
    let (got, want) = want.expect("a length a checksum covers");
    assert_eq!(got, want, "bad L4 checksum");
    h
}

/// (src, sport, dst, dport) of an IPv4 frame, asserting its checksums are valid.
fn tuple(f: &[u8]) -> ([u8; 4], u16, [u8; 4], u16) {
    let h = checked(f);
    let Some(etherparse::NetHeaders::Ipv4(ip, _)) = &h.net else {
        panic!("not IPv4")
    };
    let (sport, dport) = ports(&h);
    (ip.source, sport, ip.destination, dport)
}

/// (src, sport, dst, dport) of an IPv6 frame, asserting its checksum is valid.
fn tuple6(f: &[u8]) -> ([u8; 16], u16, [u8; 16], u16) {
    let h = checked(f);
    let Some(etherparse::NetHeaders::Ipv6(ip, _)) = &h.net else {
        panic!("not IPv6")
    };
    let (sport, dport) = ports(&h);
    (ip.source, sport, ip.destination, dport)
}

fn ports(h: &etherparse::PacketHeaders<'_>) -> (u16, u16) {
    match &h.transport {
        Some(etherparse::TransportHeader::Tcp(t)) => (t.source_port, t.destination_port),
        Some(etherparse::TransportHeader::Udp(u)) => (u.source_port, u.destination_port),
        other => panic!("neither TCP nor UDP: {other:?}"),
    }
}

#[test]
fn root_clusterip_is_translated_both_ways_with_valid_checksums() {
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        let mut lab = Lab::new(&format!("nat{proto}"));
        lab.service(proto, &[BACKEND_A], 0);
        let (verdict, out) = lab.run(&frame(proto, CLIENT, 40000, VIP, 80, 0x02));
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(
            tuple(&out),
            (CLIENT, 40000, BACKEND_A, 8080),
            "proto {proto}: DNAT to the backend"
        );
        // Both conntrack entries exist.
        let ct = |saddr, daddr, sport: u16, dport: u16, dir| CtKey {
            saddr: a16(saddr),
            daddr: a16(daddr),
            sport: sport.to_be(),
            dport: dport.to_be(),
            proto,
            family: AF_INET,
            dir,
            _pad: 0,
        };
        assert!(
            lab.dp
                .conntrack
                .get(&ct(CLIENT, VIP, 40000, 80, CT_OUT), 0)
                .is_ok(),
            "no CT_OUT entry"
        );
        assert!(
            lab.dp
                .conntrack
                .get(&ct(BACKEND_A, CLIENT, 8080, 40000, CT_IN), 0)
                .is_ok(),
            "no CT_IN entry"
        );
        // The backend's reply comes from the frontend.
        let (verdict, out) = lab.run(&frame(proto, BACKEND_A, 8080, CLIENT, 40000, 0x12));
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(
            tuple(&out),
            (VIP, 80, CLIENT, 40000),
            "proto {proto}: reverse NAT"
        );
        // Unrelated traffic passes untouched.
        let plain = frame(proto, CLIENT, 40001, BACKEND_B, 9999, 0x02);
        assert_eq!(lab.run(&plain), (TC_ACT_OK, plain.clone()));
    }
}

#[test]
fn root_hairpin_rewrites_the_source_and_back() {
    let mut lab = Lab::new("hairpin");
    lab.service(IPPROTO_TCP, &[CLIENT], 0);
    let (_, out) = lab.run(&frame(IPPROTO_TCP, CLIENT, 40000, VIP, 80, 0x02));
    assert_eq!(tuple(&out), ([169, 254, 42, 1], 40000, CLIENT, 8080));
    let (_, out) = lab.run(&frame(IPPROTO_TCP, CLIENT, 8080, [169, 254, 42, 1], 40000, 0x12));
    assert_eq!(tuple(&out), (VIP, 80, CLIENT, 40000));
}

#[test]
fn root_service_without_endpoints_answers_icmp_port_unreachable() {
    let mut lab = Lab::new("reject");
    lab.service(IPPROTO_TCP, &[], 0);
    let syn = frame(IPPROTO_TCP, CLIENT, 40000, VIP, 80, 0x02);
    let (verdict, out) = lab.run(&syn);
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent back, not dropped");
    assert_eq!(out.len(), 14 + 20 + 8 + 28);
    assert_eq!(
        (&out[0..6], &out[6..12]),
        (&syn[6..12], &syn[0..6]),
        "MACs swapped"
    );
    checked(&out);
    assert_eq!(out[23], 1, "ICMP");
    assert_eq!(
        (&out[26..30], &out[30..34]),
        (&VIP[..], &CLIENT[..]),
        "from the frontend to the client"
    );
    assert_eq!(
        (out[34], out[35]),
        (3, 3),
        "destination unreachable / port unreachable"
    );
    assert_eq!(&out[42..], &syn[14..42], "quotes the original header and ports");
}

#[test]
fn root_affinity_pins_a_client_and_random_choice_spreads() {
    let mut lab = Lab::new("affinity");
    lab.service(IPPROTO_TCP, &[BACKEND_A, BACKEND_B], SVC_F_AFFINITY);
    let backend_of =
        |lab: &mut Lab, sport| tuple(&lab.run(&frame(IPPROTO_TCP, CLIENT, sport, VIP, 80, 0x02)).1).2;
    let first = backend_of(&mut lab, 30000);
    assert!(
        (1..40).all(|i| backend_of(&mut lab, 30000 + i) == first),
        "affinity broken"
    );

    let mut lab = Lab::new("random");
    lab.service(IPPROTO_TCP, &[BACKEND_A, BACKEND_B], 0);
    let hits_a = (0..200)
        .filter(|i| backend_of(&mut lab, 30000 + i) == BACKEND_A)
        .count();
    assert!(
        (60..=140).contains(&hits_a),
        "200 new flows over 2 backends: {hits_a} on the first"
    );
}

#[test]
fn root_maglev_table_decides_the_backend() {
    let mut lab = Lab::new("maglev");
    lab.service(IPPROTO_TCP, &[BACKEND_A, BACKEND_B], SVC_F_MAGLEV);
    // A table that sends everything to backend id 2.
    lab.dp
        .maglev
        .insert(1, MaglevTable([2; MAGLEV_TABLE_SIZE]), 0)
        .expect("maglev table");
    for sport in 30000..30050 {
        let (_, out) = lab.run(&frame(IPPROTO_TCP, CLIENT, sport, VIP, 80, 0x02));
        assert_eq!(tuple(&out).2, BACKEND_B);
    }
}

#[test]
fn root_a_syn_reusing_a_closed_flows_tuple_starts_a_new_flow() {
    let mut lab = Lab::new("reuse");
    lab.service(IPPROTO_TCP, &[BACKEND_A], 0);
    let (_, out) = lab.run(&frame(IPPROTO_TCP, CLIENT, 40000, VIP, 80, 0x02));
    assert_eq!(tuple(&out).2, BACKEND_A);
    // The connection ends with a RST; then backend A leaves the service for B.
    lab.run(&frame(IPPROTO_TCP, CLIENT, 40000, VIP, 80, 0x04));
    lab.service(IPPROTO_TCP, &[BACKEND_B], 0);
    // A later packet of the old connection still goes where it went...
    let (_, out) = lab.run(&frame(IPPROTO_TCP, CLIENT, 40000, VIP, 80, 0x10));
    assert_eq!(tuple(&out).2, BACKEND_A, "a closing flow keeps its backend");
    // ...but a new connection from the same port is a new flow, on a current backend.
    let (_, out) = lab.run(&frame(IPPROTO_TCP, CLIENT, 40000, VIP, 80, 0x02));
    assert_eq!(
        tuple(&out).2,
        BACKEND_B,
        "a SYN on a closing entry must pick a backend afresh"
    );
}

#[test]
fn root_conntrack_gc_keeps_live_pairs_and_removes_dead_ones() {
    use weir_agent::conntrack::Hygiene;
    let now = || {
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    };
    let mut lab = Lab::new("gc");
    lab.service(IPPROTO_TCP, &[BACKEND_A], 0);
    lab.run(&frame(IPPROTO_TCP, CLIENT, 40000, VIP, 80, 0x02));
    let mut hygiene = Hygiene::open(&PinLayout::new(&lab.root)).expect("open maps");
    let report = hygiene.gc_conntrack(now(), usize::MAX).expect("gc");
    assert_eq!(report.deleted, 0, "a live flow lost entries to GC: {report:?}");
    // The reply is still translated after the GC pass.
    let (_, out) = lab.run(&frame(IPPROTO_TCP, BACKEND_A, 8080, CLIENT, 40000, 0x12));
    assert_eq!(tuple(&out), (VIP, 80, CLIENT, 40000), "reverse NAT after GC");
    // Long after its lifetime, both entries of the pair go.
    let report = hygiene
        .gc_conntrack(now() + 30_000 * 1_000_000_000, usize::MAX)
        .expect("gc");
    assert_eq!(report.deleted, 2, "{report:?}");
    assert_eq!(lab.dp.conntrack.keys().count(), 0);
}

#[test]
fn root_pods_use_the_cluster_wide_entry_of_a_two_scope_frontend() {
    let mut lab = Lab::new("scopes");
    // External scope (externalTrafficPolicy: Local): only backend A, on this node.
    lab.service(IPPROTO_TCP, &[BACKEND_A], SVC_F_TWO_SCOPES);
    // Internal scope: every endpoint of the cluster, here backend B (id 7).
    let b = Backend {
        addr: a16(BACKEND_B),
        port: 8080u16.to_be(),
        proto: IPPROTO_TCP,
        family: AF_INET,
        state: BACKEND_ACTIVE,
        ..Default::default()
    };
    lab.dp.backends.insert(7, b, 0).expect("backend");
    let key = |slot| ServiceKey {
        addr: a16(VIP),
        port: 80u16.to_be(),
        slot,
        proto: IPPROTO_TCP,
        family: AF_INET,
        scope: SCOPE_INTERNAL,
        ..Default::default()
    };
    lab.dp
        .services
        .insert(
            key(1),
            ServiceValue {
                backend_id: 7,
                rev_nat_id: 2,
                ..Default::default()
            },
            0,
        )
        .expect("slot");
    lab.dp
        .services
        .insert(
            key(0),
            ServiceValue {
                count: 1,
                rev_nat_id: 2,
                ..Default::default()
            },
            0,
        )
        .expect("service");
    for sport in 30000..30020 {
        let (_, out) = lab.run(&frame(IPPROTO_TCP, CLIENT, sport, VIP, 80, 0x02));
        assert_eq!(
            tuple(&out).2,
            BACKEND_B,
            "a pod must get the cluster-wide (internal) entry"
        );
    }
}

#[test]
fn root_affinity_holds_on_terminating_fallback() {
    let mut lab = Lab::new("affterm");
    lab.service(IPPROTO_TCP, &[BACKEND_A, BACKEND_B], SVC_F_AFFINITY);
    // No ready endpoint left: the slots hold serving, terminating ones.
    for id in [1u32, 2] {
        let mut b = lab.dp.backends.get(&id, 0).expect("backend");
        b.state = BACKEND_TERMINATING;
        lab.dp.backends.insert(id, b, 0).expect("backend");
    }
    let backend_of =
        |lab: &mut Lab, sport| tuple(&lab.run(&frame(IPPROTO_TCP, CLIENT, sport, VIP, 80, 0x02)).1).2;
    let first = backend_of(&mut lab, 30000);
    assert!(
        (1..40).all(|i| backend_of(&mut lab, 30000 + i) == first),
        "affinity must hold on the terminating fallback"
    );
}

#[test]
fn root_ipv6_clusterip_is_translated_both_ways_with_valid_checksums() {
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        let mut lab = Lab::new(&format!("nat6-{proto}"));
        lab.service6(proto, &[BACKEND6]);
        let (verdict, out) = lab.run(&frame6(proto, CLIENT6, 40000, VIP6, 80, 0x02));
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(
            tuple6(&out),
            (CLIENT6, 40000, BACKEND6, 8080),
            "proto {proto}: DNAT to the backend"
        );
        let (verdict, out) = lab.run(&frame6(proto, BACKEND6, 8080, CLIENT6, 40000, 0x12));
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(
            tuple6(&out),
            (VIP6, 80, CLIENT6, 40000),
            "proto {proto}: reverse NAT"
        );
        // The next packet of the flow keeps its backend.
        let (_, out) = lab.run(&frame6(proto, CLIENT6, 40000, VIP6, 80, 0x10));
        assert_eq!(
            tuple6(&out),
            (CLIENT6, 40000, BACKEND6, 8080),
            "proto {proto}: established"
        );
        // Unrelated traffic passes untouched.
        let plain = frame6(proto, CLIENT6, 40001, BACKEND6, 9999, 0x02);
        assert_eq!(lab.run(&plain), (TC_ACT_OK, plain.clone()));
    }
}

#[test]
fn root_ipv6_hairpin_rewrites_the_source_and_back() {
    let mut lab = Lab::new("hairpin6");
    lab.service6(IPPROTO_TCP, &[CLIENT6]);
    let (_, out) = lab.run(&frame6(IPPROTO_TCP, CLIENT6, 40000, VIP6, 80, 0x02));
    assert_eq!(tuple6(&out), (HAIRPIN6, 40000, CLIENT6, 8080));
    let (_, out) = lab.run(&frame6(IPPROTO_TCP, CLIENT6, 8080, HAIRPIN6, 40000, 0x12));
    assert_eq!(tuple6(&out), (VIP6, 80, CLIENT6, 40000));
}

#[test]
fn root_ipv6_service_without_endpoints_answers_icmpv6_port_unreachable() {
    let mut lab = Lab::new("reject6");
    lab.service6(IPPROTO_UDP, &[]);
    let dgram = frame6(IPPROTO_UDP, CLIENT6, 40000, VIP6, 80, 0);
    let (verdict, out) = lab.run(&dgram);
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent back, not dropped");
    assert_eq!(out.len(), 14 + 40 + 8 + 48);
    assert_eq!(
        (&out[0..6], &out[6..12]),
        (&dgram[6..12], &dgram[0..6]),
        "MACs swapped"
    );
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    assert_eq!(
        (out[14] >> 4, out[20], u16::from_be_bytes([out[18], out[19]])),
        (6, 58, 56),
        "IPv6, ICMPv6, length"
    );
    assert_eq!(
        (&out[22..38], &out[38..54]),
        (&VIP6[..], &CLIENT6[..]),
        "from the frontend to the client"
    );
    assert_eq!(
        (out[54], out[55]),
        (1, 4),
        "destination unreachable / port unreachable"
    );
    checked(&out);
    assert_eq!(&out[62..], &dgram[14..62], "quotes the original header and ports");
}

const EXTERNAL: [u8; 4] = [192, 168, 7, 7];
const NODE_IP: [u8; 4] = [192, 168, 7, 1];

/// A NodePort frontend NODE_IP:30080 of the given backends; backend A is a local pod.
fn nodeport_lab(tag: &str, backends: &[[u8; 4]], flags: u32) -> Lab {
    nodeport_lab_of(tag, IPPROTO_TCP, backends, flags)
}

/// [`nodeport_lab`] of protocol `proto`.
fn nodeport_lab_of(tag: &str, proto: u8, backends: &[[u8; 4]], flags: u32) -> Lab {
    let mut lab = Lab::new(tag);
    let backends16: Vec<_> = backends.iter().map(|b| a16(*b)).collect();
    lab.service_of(AF_INET, a16(NODE_IP), proto, &backends16, flags);
    // The frontend port is 80 in `service_of`: move it to 30080 by re-keying.
    let entries: Vec<_> = lab.dp.services.iter().map(|e| e.expect("entry")).collect();
    for (k, v) in entries {
        lab.dp.services.remove(&k).expect("remove");
        lab.dp
            .services
            .insert(
                ServiceKey {
                    port: 30080u16.to_be(),
                    ..k
                },
                v,
                0,
            )
            .expect("insert");
    }
    let local = EndpointKey::v4(BACKEND_A);
    lab.dp
        .endpoints
        .insert(
            local,
            EndpointInfo {
                ifindex: 1,
                ..Default::default()
            },
            0,
        )
        .expect("endpoint");
    lab.dp
        .node
        .set(
            0,
            NodeAddrs {
                v4: a16(NODE_IP),
                v6: [0; 16],
                netns_cookie: 0,
                ephemeral: [32768, 60999],
                ..Default::default()
            },
            0,
        )
        .expect("node");
    lab
}

#[test]
fn root_nodeport_to_a_local_endpoint_keeps_the_client_address() {
    let mut lab = nodeport_lab("np-local", &[BACKEND_A], 0);
    let (verdict, out) = lab.run_on(
        FROM_NETDEV,
        &frame(IPPROTO_TCP, EXTERNAL, 40000, NODE_IP, 30080, 0x02),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT, "straight to the pod's veth");
    assert_eq!(tuple(&out), (EXTERNAL, 40000, BACKEND_A, 8080));
    // The pod's reply leaves it from the node port, routed by the program itself.
    let (_, out) = lab.run(&frame(IPPROTO_TCP, BACKEND_A, 8080, EXTERNAL, 40000, 0x12));
    assert_eq!(tuple(&out), (NODE_IP, 30080, EXTERNAL, 40000));
}

#[test]
fn root_nodeport_to_a_remote_endpoint_comes_from_the_node_and_back() {
    let lab = nodeport_lab("np-remote", &[BACKEND_B], 0);
    let (_, out) = lab.run_on(
        FROM_NETDEV,
        &frame(IPPROTO_TCP, EXTERNAL, 40000, NODE_IP, 30080, 0x02),
    );
    let (src, sport, dst, dport) = tuple(&out);
    assert_eq!(
        (src, dst, dport),
        (NODE_IP, BACKEND_B, 8080),
        "DNAT to the backend, SNAT to the node"
    );
    assert!(
        sport >= 1024 && !(32768..=60999).contains(&sport),
        "source port {sport} inside the node's ephemeral range"
    );
    // The backend's reply, arriving on the node device, goes back to the client.
    let (_, out) = lab.run_on(
        FROM_NETDEV,
        &frame(IPPROTO_TCP, BACKEND_B, 8080, NODE_IP, sport, 0x12),
    );
    assert_eq!(tuple(&out), (NODE_IP, 30080, EXTERNAL, 40000));
    // The client's next packet takes the same translation.
    let (_, out) = lab.run_on(
        FROM_NETDEV,
        &frame(IPPROTO_TCP, EXTERNAL, 40000, NODE_IP, 30080, 0x10),
    );
    assert_eq!(tuple(&out), (NODE_IP, sport, BACKEND_B, 8080));
    // Traffic that is not for a frontend passes untouched.
    let plain = frame(IPPROTO_TCP, EXTERNAL, 40001, NODE_IP, 22, 0x02);
    assert_eq!(lab.run_on(FROM_NETDEV, &plain), (TC_ACT_OK, plain.clone()));
}

const ROUTER: [u8; 4] = [192, 168, 7, 254];
const HAIRPIN: [u8; 4] = [169, 254, 42, 1];

/// A router's "fragmentation needed" from `src` to `dst` about the IP packet
/// of the frame `about`, which it quotes whole; valid checksums.
fn icmp4_error(src: [u8; 4], dst: [u8; 4], about: &[u8]) -> Vec<u8> {
    use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_SRC, MAC_DST)
        .ipv4(src, dst, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
        ))
        .write(&mut f, &about[14..])
        .expect("frame");
    f
}

/// An ICMPv4 error's addresses and the tuple (src, sport, dst, dport) of the
/// packet it quotes, asserting every checksum its receiver relies on: the
/// IPv4 header's, the ICMP message's, the quoted IPv4 header's.
type Error4 = ([u8; 4], [u8; 4], ([u8; 4], u16, [u8; 4], u16));

fn error_tuple(f: &[u8]) -> Error4 {
    let h = checked(f);
    let Some(etherparse::NetHeaders::Ipv4(ip, _)) = &h.net else {
        panic!("not IPv4")
    };
    let (inner, rest) = etherparse::Ipv4Header::from_slice(h.payload.slice()).expect("a quoted IPv4 header");
    assert_eq!(
        inner.header_checksum,
        inner.calc_header_checksum(),
        "bad quoted IPv4 header checksum"
    );
    let port = |at: usize| u16::from_be_bytes([rest[at], rest[at + 1]]);
    (
        ip.source,
        ip.destination,
        (inner.source, port(0), inner.destination, port(2)),
    )
}

/// [`error_tuple`] for ICMPv6 (no header checksums; the ICMPv6 checksum
/// covers the addresses).
type Error6 = ([u8; 16], [u8; 16], ([u8; 16], u16, [u8; 16], u16));

fn error_tuple6(f: &[u8]) -> Error6 {
    let h = checked(f);
    let Some(etherparse::NetHeaders::Ipv6(ip, _)) = &h.net else {
        panic!("not IPv6")
    };
    let (inner, rest) = etherparse::Ipv6Header::from_slice(h.payload.slice()).expect("a quoted IPv6 header");
    let port = |at: usize| u16::from_be_bytes([rest[at], rest[at + 1]]);
    (
        ip.source,
        ip.destination,
        (inner.source, port(0), inner.destination, port(2)),
    )
}

/// Recomputes a frame's IPv4 header checksum (after a test edited the header).
fn fix_ipv4_header_checksum(f: &mut [u8]) {
    let (mut header, _) = etherparse::Ipv4Header::from_slice(&f[14..]).expect("IPv4");
    header.header_checksum = header.calc_header_checksum();
    f[14..34].copy_from_slice(&header.to_bytes());
}

/// ICMP errors about a NodePort's flows come to the node: a router's about
/// the reply (from the NodePort to the client), the remote backend's about
/// the source-NATed request. Each is turned back into the error the flow's
/// own end would have had, naming the flow as that end sent it, with valid
/// checksums (the quoted header's too). An error sent on to a source-NATed
/// backend comes from the node, as netfilter's source NAT makes it.
#[test]
fn root_icmp_errors_about_nodeport_flows_are_turned_back_with_valid_checksums() {
    let remote = nodeport_lab("icmp-np-remote", &[BACKEND_B], 0);
    let (_, out) = remote.run_on(
        FROM_NETDEV,
        &frame(IPPROTO_TCP, EXTERNAL, 40000, NODE_IP, 30080, 0x02),
    );
    let (_, sport, _, _) = tuple(&out);
    let reply = frame(IPPROTO_TCP, NODE_IP, 30080, EXTERNAL, 40000, 0x12);
    let (verdict, out) = remote.run_on(FROM_NETDEV, &icmp4_error(ROUTER, NODE_IP, &reply));
    assert_ne!(verdict, TC_ACT_SHOT, "sent on");
    assert_eq!(
        error_tuple(&out),
        (NODE_IP, BACKEND_B, (BACKEND_B, 8080, NODE_IP, sport)),
        "the router's error about the reply goes to the remote backend, about its reply to the node"
    );
    let request = frame(IPPROTO_TCP, NODE_IP, sport, BACKEND_B, 8080, 0x02);
    let (verdict, out) = remote.run_on(FROM_NETDEV, &icmp4_error(BACKEND_B, NODE_IP, &request));
    assert_ne!(verdict, TC_ACT_SHOT, "sent on");
    assert_eq!(
        error_tuple(&out),
        (NODE_IP, EXTERNAL, (EXTERNAL, 40000, NODE_IP, 30080)),
        "the backend's error about the request goes to the client, from the NodePort it dialled"
    );

    let mut local = nodeport_lab("icmp-np-local", &[BACKEND_A], 0);
    local.run_on(
        FROM_NETDEV,
        &frame(IPPROTO_TCP, EXTERNAL, 40000, NODE_IP, 30080, 0x02),
    );
    let (verdict, out) = local.run_on(FROM_NETDEV, &icmp4_error(ROUTER, NODE_IP, &reply));
    assert_eq!(verdict, TC_ACT_REDIRECT, "to the local backend's veth");
    assert_eq!(
        error_tuple(&out),
        (ROUTER, BACKEND_A, (BACKEND_A, 8080, EXTERNAL, 40000)),
        "the router's error about the reply goes to the local backend"
    );
    let request = frame(IPPROTO_TCP, EXTERNAL, 40000, BACKEND_A, 8080, 0x02);
    let (verdict, out) = local.run(&icmp4_error(BACKEND_A, EXTERNAL, &request));
    assert_ne!(verdict, TC_ACT_SHOT, "sent on");
    assert_eq!(
        error_tuple(&out),
        (NODE_IP, EXTERNAL, (EXTERNAL, 40000, NODE_IP, 30080)),
        "the local backend's own error goes to the client, from the NodePort"
    );
    // Only the backend's own: a pod may not make the node speak for it.
    let forged = icmp4_error(CLIENT, EXTERNAL, &request);
    assert_eq!(local.run(&forged), (TC_ACT_OK, forged.clone()));
    // An error about no flow of ours passes untouched.
    let other = frame(IPPROTO_TCP, NODE_IP, 22, EXTERNAL, 40001, 0x12);
    let unrelated = icmp4_error(ROUTER, NODE_IP, &other);
    assert_eq!(
        local.run_on(FROM_NETDEV, &unrelated),
        (TC_ACT_OK, unrelated.clone())
    );
    // Nor does one whose IP packet ends before the quoted ports: the bytes
    // past it are no part of it.
    let mut short = icmp4_error(ROUTER, NODE_IP, &reply);
    let total = 20 + 8 + 20 + 2;
    short[16..18].copy_from_slice(&(total as u16).to_be_bytes());
    fix_ipv4_header_checksum(&mut short);
    assert_eq!(local.run_on(FROM_NETDEV, &short), (TC_ACT_OK, short.clone()));
}

/// A hostNetwork endpoint's own error (the node's stack sends it, through
/// the device's egress) names the NodePort its client dialled.
#[test]
fn root_icmp_error_of_a_host_network_endpoint_names_the_nodeport() {
    let mut lab = nodeport_lab("icmp-np-host", &[NODE_IP], 0);
    lab.dp
        .node_ips
        .insert(EndpointKey::v4(NODE_IP), 1, 0)
        .expect("node ip");
    let (_, out) = lab.run_on(
        FROM_NETDEV,
        &frame(IPPROTO_TCP, EXTERNAL, 40000, NODE_IP, 30080, 0x02),
    );
    assert_eq!(tuple(&out), (EXTERNAL, 40000, NODE_IP, 8080));
    let (verdict, out) = lab.run_on(TO_NETDEV, &icmp4_error(NODE_IP, EXTERNAL, &out));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        error_tuple(&out),
        (NODE_IP, EXTERNAL, (EXTERNAL, 40000, NODE_IP, 30080))
    );
}

/// A client pod's own error about a reply from a frontend (its socket is
/// gone) goes to the backend, about the backend's reply; its egress policy
/// admits it as part of the client's flow to the frontend, and drops one
/// about a flow it never had.
#[test]
fn root_icmp_errors_of_clients_about_replies_go_to_the_backend() {
    use aya::maps::lpm_trie::Key;
    use weir_common::{IpcacheKey, POLICY_F_EGRESS, POLICY_PREFIX_FULL, PolicyEndpoint, PolicyKey};
    let mut lab = Lab::new("icmp-client");
    lab.service(IPPROTO_UDP, &[BACKEND_A], 0);
    // CLIENT's egress admits UDP 8080 to the pods of 10.0.0.0/24 alone.
    let isolated = PolicyEndpoint {
        id: 1,
        flags: POLICY_F_EGRESS,
    };
    lab.dp
        .policy_endpoints
        .insert(EndpointKey::v4(CLIENT), isolated, 0)
        .expect("policy endpoint");
    let pods = IpcacheKey {
        family: AF_INET,
        addr: a16([10, 0, 0, 0]),
    };
    lab.dp
        .ipcache
        .insert(&Key::new(8 + 24, pods), 256, 0)
        .expect("ipcache");
    let rule = PolicyKey {
        endpoint: 1,
        identity: 256,
        egress: 1,
        proto: IPPROTO_UDP,
        port: 8080u16.to_be(),
    };
    lab.dp
        .policy
        .insert(&Key::new(POLICY_PREFIX_FULL, rule), 1, 0)
        .expect("rule");
    let (_, out) = lab.run(&frame(IPPROTO_UDP, CLIENT, 40000, VIP, 80, 0));
    assert_eq!(tuple(&out), (CLIENT, 40000, BACKEND_A, 8080), "admitted");
    let reply = frame(IPPROTO_UDP, VIP, 80, CLIENT, 40000, 0);
    let (verdict, out) = lab.run(&icmp4_error(CLIENT, VIP, &reply));
    assert_ne!(verdict, TC_ACT_SHOT, "admitted as part of the client's flow");
    assert_eq!(
        error_tuple(&out),
        (CLIENT, BACKEND_A, (BACKEND_A, 8080, CLIENT, 40000))
    );
    let never = frame(IPPROTO_UDP, VIP, 80, CLIENT, 40001, 0);
    assert_eq!(
        lab.run(&icmp4_error(CLIENT, VIP, &never)).0,
        TC_ACT_SHOT,
        "an error about no flow of the client's"
    );
}

/// A pod that reached itself through its Service: its errors, as the
/// hairpinned backend (about the request) and as the client (about the
/// reply), go back to it through its own veth, each naming the flow as the
/// other end of it knows it.
#[test]
fn root_icmp_errors_of_a_hairpinned_pod_come_back_to_it() {
    let mut lab = Lab::new("icmp-hairpin");
    lab.service(IPPROTO_UDP, &[CLIENT], 0);
    let (_, request) = lab.run(&frame(IPPROTO_UDP, CLIENT, 40000, VIP, 80, 0));
    assert_eq!(tuple(&request), (HAIRPIN, 40000, CLIENT, 8080));
    let (verdict, out) = lab.run(&icmp4_error(CLIENT, HAIRPIN, &request));
    assert_eq!(verdict, TC_ACT_REDIRECT, "back to the pod's own veth");
    assert_eq!(error_tuple(&out), (VIP, CLIENT, (CLIENT, 40000, VIP, 80)));
    let (_, reply) = lab.run(&frame(IPPROTO_UDP, CLIENT, 8080, HAIRPIN, 40000, 0));
    assert_eq!(tuple(&reply), (VIP, 80, CLIENT, 40000));
    let (verdict, out) = lab.run(&icmp4_error(CLIENT, VIP, &reply));
    assert_eq!(verdict, TC_ACT_REDIRECT, "back to the pod's own veth");
    assert_eq!(
        error_tuple(&out),
        (HAIRPIN, CLIENT, (CLIENT, 8080, HAIRPIN, 40000))
    );
}

/// A backend's ICMPv6 error about a ClusterIP flow, as it reaches the client
/// pod (`to_pod`): from the frontend, about the client's packet to the
/// frontend, the ICMPv6 checksum (which covers every address rewritten) valid.
#[test]
fn root_icmpv6_error_about_a_clusterip_flow_names_the_frontend() {
    let mut lab = Lab::new("icmp6-vip");
    lab.service6(IPPROTO_TCP, &[BACKEND6]);
    let (_, out) = lab.run(&frame6(IPPROTO_TCP, CLIENT6, 40000, VIP6, 80, 0x02));
    assert_eq!(tuple6(&out), (CLIENT6, 40000, BACKEND6, 8080));
    let mut error = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_SRC, MAC_DST)
        .ipv6(BACKEND6, CLIENT6, 64)
        .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut error, &out[14..])
        .expect("frame");
    let (verdict, out) = lab.run_on(TO_POD, &error);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(error_tuple6(&out), (VIP6, CLIENT6, (CLIENT6, 40000, VIP6, 80)));
}

/// XDP's verdicts (`enum xdp_action`).
const XDP_PASS: u32 = 2;

/// The node devices' XDP program on flows it cannot finish alone (no route
/// to a remote backend here, so no `XDP_TX`; a local backend, whose veth
/// XDP never writes into): each packet, translated by XDP's own arithmetic
/// (XDP has no checksum helpers) and then put back as it came, is passed to
/// TC byte for byte as it arrived, checksums and all; XDP made the flow's
/// conntrack pair, and TC, finishing each packet, follows it (the request
/// source-NATed to a remote backend, the reply back to the client; to a
/// local one, the client's address kept) without a pair of its own. TCP and
/// UDP.
#[test]
fn root_xdp_hands_tc_the_packets_it_cannot_send_as_they_came() {
    for (proto, flags) in [(IPPROTO_TCP, [0x02, 0x12, 0x10]), (IPPROTO_UDP, [0; 3])] {
        let lab = nodeport_lab_of(&format!("np-xdp-{proto}"), proto, &[BACKEND_B], 0);
        let entries = || lab.dp.conntrack.keys().filter(|k| k.is_ok()).count();
        let through = |packet: Vec<u8>| {
            assert_eq!(
                lab.run_on(FROM_NETDEV_XDP, &packet),
                (XDP_PASS, packet.clone()),
                "proto {proto}: passed to TC as it came"
            );
            assert_eq!(entries(), 2, "proto {proto}: XDP's pair");
            let (verdict, out) = lab.run_on(FROM_NETDEV, &packet);
            // By route: redirected where the test's namespace has one (no
            // XDP_TX: not out of the device it came in by), else to the stack.
            assert!(
                verdict == TC_ACT_REDIRECT || verdict == TC_ACT_OK,
                "proto {proto}: sent on, not {verdict}"
            );
            assert_eq!(entries(), 2, "proto {proto}: TC follows XDP's pair");
            out
        };
        let out = through(frame(proto, EXTERNAL, 40000, NODE_IP, 30080, flags[0]));
        let (src, sport, dst, dport) = tuple(&out);
        assert_eq!((src, dst, dport), (NODE_IP, BACKEND_B, 8080));
        assert!(sport >= 1024 && !(32768..=60999).contains(&sport));
        let out = through(frame(proto, BACKEND_B, 8080, NODE_IP, sport, flags[1]));
        assert_eq!(tuple(&out), (NODE_IP, 30080, EXTERNAL, 40000));
        let out = through(frame(proto, EXTERNAL, 40000, NODE_IP, 30080, flags[2]));
        assert_eq!(tuple(&out), (NODE_IP, sport, BACKEND_B, 8080));

        let lab = nodeport_lab_of(&format!("np-xdp-local-{proto}"), proto, &[BACKEND_A], 0);
        let entries = || lab.dp.conntrack.keys().filter(|k| k.is_ok()).count();
        let syn = frame(proto, EXTERNAL, 40000, NODE_IP, 30080, flags[0]);
        assert_eq!(lab.run_on(FROM_NETDEV_XDP, &syn), (XDP_PASS, syn.clone()));
        assert_eq!(entries(), 2, "proto {proto}: XDP's pair");
        let (verdict, out) = lab.run_on(FROM_NETDEV, &syn);
        assert_eq!(entries(), 2, "proto {proto}: TC follows XDP's pair");
        assert_eq!(
            verdict, TC_ACT_REDIRECT,
            "proto {proto}: straight to the pod's veth"
        );
        assert_eq!(tuple(&out), (EXTERNAL, 40000, BACKEND_A, 8080));
    }
    let lab = nodeport_lab("np-xdp-plain", &[BACKEND_B], 0);
    let plain = frame(IPPROTO_TCP, EXTERNAL, 40001, NODE_IP, 22, 0x02);
    assert_eq!(lab.run_on(FROM_NETDEV_XDP, &plain), (XDP_PASS, plain.clone()));
}

#[test]
fn root_external_traffic_policy_local_without_endpoints_drops() {
    let lab = nodeport_lab("np-etp", &[], SVC_F_EXT_LOCAL | SVC_F_DROP_EMPTY);
    let (verdict, _) = lab.run_on(
        FROM_NETDEV,
        &frame(IPPROTO_TCP, EXTERNAL, 40000, NODE_IP, 30080, 0x02),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    let lab = nodeport_lab("np-empty", &[], 0);
    let (verdict, out) = lab.run_on(
        FROM_NETDEV,
        &frame(IPPROTO_TCP, EXTERNAL, 40000, NODE_IP, 30080, 0x02),
    );
    assert_eq!(
        (verdict, out[23]),
        (TC_ACT_REDIRECT, 1),
        "without the policy: ICMP port unreachable"
    );
}

#[test]
fn root_source_nat_shares_the_ports_of_a_node_that_takes_them_all() {
    // A node whose own connections may use every port (ip_local_port_range
    // 1024-65535): external flows to remote endpoints still get one.
    let mut lab = nodeport_lab("np-ports", &[BACKEND_B], 0);
    let node = NodeAddrs {
        v4: a16(NODE_IP),
        ephemeral: [1024, 65535],
        ..Default::default()
    };
    lab.dp.node.set(0, node, 0).expect("node");
    let (verdict, out) = lab.run_on(
        FROM_NETDEV,
        &frame(IPPROTO_TCP, EXTERNAL, 40000, NODE_IP, 30080, 0x02),
    );
    assert_ne!(verdict, TC_ACT_SHOT, "the flow must not be refused");
    let (src, sport, dst, _) = tuple(&out);
    assert_eq!((src, dst), (NODE_IP, BACKEND_B));
    assert!(sport >= 1024, "source port {sport}");
}

#[test]
fn root_a_pod_sending_from_an_address_not_its_own_is_dropped() {
    let mut lab = Lab::new("spoof");
    lab.service(IPPROTO_TCP, &[BACKEND_A], 0);
    let syn = frame(IPPROTO_TCP, CLIENT, 40000, VIP, 80, 0x02);
    assert_eq!(lab.run(&syn).0, TC_ACT_OK, "from its own address");
    // Nobody's address, or another pod's (on another veth): dropped, counted.
    assert_eq!(lab.run_on(FROM_POD, &syn).0, TC_ACT_SHOT);
    let elsewhere = EndpointInfo {
        ifindex: 77,
        ..Default::default()
    };
    lab.dp
        .endpoints
        .insert(EndpointKey::v4(CLIENT), elsewhere, 0)
        .expect("endpoint");
    assert_eq!(lab.run_on(FROM_POD, &syn).0, TC_ACT_SHOT);
}

const TC_ACT_SHOT: u32 = 2;

const XDP_DROP: u32 = 1;

impl Lab {
    /// The events the programs reported since the last call (this test is
    /// the ring buffer's one reader).
    fn events(&self) -> Vec<weir_common::Event> {
        let pins = PinLayout::new(&self.root);
        let data = aya::maps::MapData::from_pin(pins.map(weir_common::maps::EVENTS)).expect("events pin");
        let mut ring = aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(data)).expect("ring buffer");
        let mut out = Vec::new();
        while let Some(record) = ring.next() {
            out.push(weir_agent::ctl::decode(&record).expect("a whole event"));
        }
        out
    }

    fn trace(&mut self, on: bool) {
        self.dp
            .set_node_flag(weir_common::NODE_F_TRACE, on)
            .expect("trace switch");
    }
}

/// The one event of a run, checked to be a drop of `reason` seen at `dir`.
fn one_drop(
    events: &[weir_common::Event],
    reason: weir_common::Reason,
    dir: weir_common::Dir,
) -> weir_common::Event {
    assert_eq!(events.len(), 1, "{events:?}");
    let e = events[0];
    assert_eq!(
        (e.kind, e.reason, e.dir),
        (weir_common::EVENT_DROP, reason as u8, dir as u8),
        "{e:?}"
    );
    e
}

#[test]
fn root_every_drop_is_an_event_and_with_tracing_every_translation() {
    use weir_common::{Dir, EVENT_TRANSLATE, Reason};
    let mut lab = Lab::new("events");
    lab.service(IPPROTO_TCP, &[BACKEND_A], 0);
    let syn = frame(IPPROTO_TCP, CLIENT, 40000, VIP, 80, 0x02);

    // A spoofed source: the packet as it was, where, on which device.
    assert_eq!(lab.run_on(FROM_POD, &syn).0, TC_ACT_SHOT);
    let e = one_drop(&lab.events(), Reason::SpoofedSource, Dir::FromPod);
    assert_eq!(
        (
            e.saddr,
            e.daddr,
            u16::from_be(e.sport),
            u16::from_be(e.dport),
            e.proto,
            e.family
        ),
        (a16(CLIENT), a16(VIP), 40000, 80, IPPROTO_TCP, AF_INET)
    );
    assert_eq!(e.ifindex, 1, "the test run's device, lo");

    // A malformed packet (cut inside its TCP header): reported, its headers
    // unread.
    assert_eq!(lab.run(&syn[..14 + 20 + 3]).0, TC_ACT_SHOT);
    let e = one_drop(&lab.events(), Reason::Malformed, Dir::FromPod);
    assert_eq!(e.family, 0, "{e:?}");

    // Tracing off: a new flow is translated and reports nothing.
    assert_eq!(lab.run(&syn).0, TC_ACT_OK);
    assert_eq!(lab.events(), [], "tracing is off");
    // On: the next new flow's translation, once; its later packets nothing.
    lab.trace(true);
    let syn2 = frame(IPPROTO_TCP, CLIENT, 40001, VIP, 80, 0x02);
    assert_eq!(lab.run(&syn2).0, TC_ACT_OK);
    assert_eq!(
        lab.run(&frame(IPPROTO_TCP, CLIENT, 40001, VIP, 80, 0x10)).0,
        TC_ACT_OK
    );
    let events = lab.events();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = events[0];
    assert_eq!((e.kind, e.dir), (EVENT_TRANSLATE, Dir::FromPod as u8));
    assert_eq!(
        (e.saddr, u16::from_be(e.sport), e.daddr, u16::from_be(e.dport)),
        (a16(CLIENT), 40001, a16(VIP), 80),
        "the tuple as the client sent it"
    );
    assert_eq!(
        (e.nat_addr, u16::from_be(e.nat_port), e.rev_nat_id, e.nat2_addr),
        (a16(BACKEND_A), 8080, 1, [0; 16]),
        "to the backend, from the client's own address, by the Service"
    );
    lab.trace(false);
    assert_eq!(
        lab.run(&frame(IPPROTO_TCP, CLIENT, 40002, VIP, 80, 0x02)).0,
        TC_ACT_OK
    );
    assert_eq!(lab.events(), [], "tracing is off again");

    // A policy drop: one event, made where it is decided (with the endpoint),
    // not a second one as the hook returns.
    lab.dp
        .policy_endpoints
        .insert(
            EndpointKey::v4(CLIENT),
            weir_common::PolicyEndpoint {
                id: 5,
                flags: weir_common::POLICY_F_EGRESS,
            },
            0,
        )
        .expect("isolated endpoint");
    let direct = frame(IPPROTO_TCP, CLIENT, 40003, BACKEND_A, 8080, 0x02);
    assert_eq!(lab.run(&direct).0, TC_ACT_SHOT, "no rule admits it");
    let e = one_drop(&lab.events(), Reason::PolicyEgress, Dir::FromPod);
    assert_eq!((e.endpoint, e.daddr), (5, a16(BACKEND_A)));

    // A flood of drops: each counted, events within their rate (a burst of
    // 1,000 a CPU, then 1,000 a second), on one CPU: the rate is per CPU.
    let mut one_cpu = nix::sched::CpuSet::new();
    one_cpu.set(0).expect("cpu 0");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one_cpu).expect("pin to cpu 0");
    // The events above may have spent some of this CPU's burst; a second
    // without events gives it all back.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let start = std::time::Instant::now();
    for _ in 0..3000 {
        lab.run_on(FROM_POD, &syn);
    }
    // The burst, and one more for each millisecond the flood took by the
    // datapath's clock, the coarse one, which may tick once more within it.
    let tick = nix::time::clock_getres(nix::time::ClockId::CLOCK_MONOTONIC_COARSE).expect("coarse clock");
    let tick = std::time::Duration::from(tick);
    let most = 1001 + (start.elapsed() + tick).as_millis() as usize + 1;
    assert!(
        most < 3000,
        "the flood took too long to show a rate ({most} allowed)"
    );
    let flood = lab.events().len();
    assert!(
        (1000..=most).contains(&flood),
        "{flood} events of 3,000 drops (at most {most})"
    );
}

#[test]
fn root_a_service_without_usable_endpoints_is_an_event_naming_it() {
    use weir_common::{Dir, Reason};
    // No endpoint at all: rejected, reported with the packet as it came.
    let mut lab = Lab::new("ev-empty");
    lab.service(IPPROTO_TCP, &[], 0);
    assert_eq!(
        lab.run(&frame(IPPROTO_TCP, CLIENT, 40000, VIP, 80, 0x02)).0,
        TC_ACT_REDIRECT
    );
    let e = one_drop(&lab.events(), Reason::NoBackend, Dir::FromPod);
    assert_eq!(
        (e.saddr, e.daddr, u16::from_be(e.dport), e.rev_nat_id),
        (a16(CLIENT), a16(VIP), 80, 1)
    );
    // externalTrafficPolicy Local, no endpoint here: dropped, on TC and XDP.
    let lab = nodeport_lab("ev-etp", &[], SVC_F_EXT_LOCAL | SVC_F_DROP_EMPTY);
    let external = frame(IPPROTO_TCP, EXTERNAL, 40000, NODE_IP, 30080, 0x02);
    assert_eq!(lab.run_on(FROM_NETDEV, &external).0, TC_ACT_SHOT);
    let e = one_drop(&lab.events(), Reason::NoLocalBackend, Dir::FromNetdev);
    assert_eq!(
        (e.saddr, e.daddr, u16::from_be(e.dport), e.rev_nat_id),
        (a16(EXTERNAL), a16(NODE_IP), 30080, 1)
    );
    assert_eq!(lab.run_on(FROM_NETDEV_XDP, &external).0, XDP_DROP);
    one_drop(&lab.events(), Reason::NoLocalBackend, Dir::Xdp);
}
