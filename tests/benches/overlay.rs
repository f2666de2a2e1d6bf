//! Cross-node pod-to-pod traffic (issue 13): Weir's native routing and Weir's
//! VXLAN overlay against plain kernel routing and a flannel-style kernel VXLAN
//! overlay, in the same run.
//!
//! A benchmark, not a test: it prints markdown tables and asserts nothing about
//! speed. Needs root. Run (the bench finds `weir-agent`, `weirctl` and `weir-cni`
//! next to its own executable, i.e. in `target/release`, or in `$WEIR_BIN_DIR`):
//!
//! ```text
//! cargo build --release --bins && cargo bench -p weir-tests --bench overlay
//! ```
//!
//! Setup. One two-node lab per variant: two node namespaces on a switched
//! underlay ([`Underlay`], MTU 1500), a server pod on node A, a client pod on
//! node B.
//!
//! - `routed`: plain kernel routing, the baseline. Pods wired by the reference
//!   `ptp` plugin with `host-local` IPAM; each node routes the other's pod CIDR
//!   via the other's underlay address (static routes).
//! - `flannel`: the reference `bridge` plugin (`cni0`, `isGateway`, `host-local`,
//!   pod MTU 1450) and a kernel VXLAN device per node configured as flannel's
//!   `vxlan` backend does: `flannel.1`, VNI 1, port 8472, `nolearning`, MTU
//!   1450, the address `<pod CIDR>.0/32`, a permanent neighbour entry for the
//!   other node's VTEP (`<its pod CIDR>.0`), a static FDB entry sending that MAC
//!   to the other node's underlay address, and the route `<its pod CIDR> via
//!   <its pod CIDR>.0 dev flannel.1 onlink`.
//! - `weir-native`: `weir-agent --routing native` on both nodes, reading a
//!   manifest directory that holds the two Node objects (podCIDRs, InternalIP);
//!   pods wired by `weir-cni`; no route from the harness.
//! - `weir-vxlan`: the same with `--routing vxlan` and the pods' MTU 1450
//!   (`"mtu"` in the node's CNI configuration). Skipped, saying so, when
//!   `weir-agent run --help` does not offer `vxlan`.
//!
//! Measured, in rounds that visit the variants in a rotating order (so that the
//! machine's noise falls on all alike):
//!
//! 1. New TCP connections per second from the client pod to the server pod: an
//!    ordinary client (the kernel picks the source port; connect, a 3-byte
//!    request, the server's 1-byte answer and close, then the client's close), from
//!    `WEIR_BENCH_CLIENTS` threads for `WEIR_BENCH_SECS` seconds.
//! 2. TCP throughput of one stream: `iperf3 -c SERVER -t N -O 1 -J` in the client
//!    pod against `iperf3 -s` in the server pod (the first second, slow start, is
//!    omitted); the receiver's `bits_per_second`.
//!
//! Reported: medians and min-max per variant, ratios of medians (weir-vxlan /
//! flannel and weir-native / routed, the issue's goals; weir-native / flannel and
//! weir-vxlan / routed for information) with the range of the same ratio round by
//! round, and the agents' RSS.
//!
//! Environment: `WEIR_BENCH_ROUNDS` (default 6), `WEIR_BENCH_SECS` (seconds per
//! connection sample, default 2), `WEIR_BENCH_IPERF_SECS` (seconds per iperf3
//! run after the omitted first one, default 3), `WEIR_BENCH_CLIENTS` (client
//! threads, default 4), `WEIR_BENCH_VARIANTS` (a subset of
//! `routed,flannel,weir-native,weir-vxlan`), `WEIR_BENCH_JSON` (a file, or a
//! directory that gets `overlay.jsonl`: each variant's `conn_rate` and `throughput`
//! as JSON records, appended after the rounds; see [`weir_lab::bench_json`]).

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use weir_lab::{
    Agent, Netns, Node, Pod,
    bench::{
        Iperf3Server, conn_rate, host_local, iperf3, median, min_max, one_connection, reference_pod,
        syn_retransmits,
    },
    bench_json::{Sink, Stats},
    bins,
    connrate::Server,
    env_or, require_root,
    services::{ManifestDir, node_object},
    underlay::{Routing, Underlay},
};

const PORT: u16 = 8080;
/// What VXLAN over IPv4 takes from the underlay's MTU (outer IP, UDP, VXLAN, inner Ethernet).
const VXLAN_OVERHEAD: u32 = 50;
const UNDERLAY_MTU: u32 = 1500;
const VXLAN_PORT: u16 = 8472;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Routed,
    Flannel,
    WeirNative,
    WeirVxlan,
}

impl Variant {
    const ALL: [Self; 4] = [Self::Routed, Self::Flannel, Self::WeirNative, Self::WeirVxlan];

    fn name(self) -> &'static str {
        match self {
            Self::Routed => "routed",
            Self::Flannel => "flannel",
            Self::WeirNative => "weir-native",
            Self::WeirVxlan => "weir-vxlan",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Routed => "routed (ptp + static routes)",
            Self::Flannel => "flannel-style (bridge + kernel VXLAN)",
            Self::WeirNative => "Weir `--routing native`",
            Self::WeirVxlan => "Weir `--routing vxlan`",
        }
    }

    /// The lab's number: underlay `10.200.n.0/24`, pod CIDRs `10.n.{1,2}.0/24`.
    fn lab(self) -> u8 {
        match self {
            Self::Routed => 221,
            Self::Flannel => 222,
            Self::WeirNative => 223,
            Self::WeirVxlan => 224,
        }
    }
}

/// One variant's two-node lab. Fields drop in order: servers and pods, then the
/// agents, then the nodes and the underlay.
struct Lab {
    variant: Variant,
    _iperf: Iperf3Server,
    _server: Server,
    server: Pod,
    client: Pod,
    agents: Vec<Agent>,
    _dir: Option<ManifestDir>,
    _nodes: Vec<Node>,
    _underlay: Underlay,
}

impl Lab {
    fn new(variant: Variant) -> Self {
        let n = variant.lab();
        let underlay = Underlay::new(n);
        let routing = match variant {
            Variant::WeirVxlan => Routing::Vxlan,
            _ => Routing::Native,
        };
        // The pods' MTU (weir-cni's configuration) suits the routing.
        let mut nodes = vec![
            routing.node(&format!("10.{n}.1.0/24")),
            routing.node(&format!("10.{n}.2.0/24")),
        ];
        let ips = underlay.plug_nodes(&nodes.iter().collect::<Vec<_>>());
        let (mut agents, mut dir) = (Vec::new(), None);
        let (server, client) = match variant {
            Variant::Routed => {
                for (i, node) in nodes.iter().enumerate() {
                    let other = 1 - i;
                    node.ns.sh(&format!(
                        "ip route add {} via {}",
                        nodes[other].pod_cidr(),
                        ips[other]
                    ));
                }
                let ptp = |node: &Node| {
                    json!({
                        "type": "ptp",
                        "ipMasq": false,
                        "mtu": UNDERLAY_MTU,
                        "ipam": host_local(node),
                    })
                };
                (
                    reference_pod(&nodes[0], "server", &ptp(&nodes[0])),
                    reference_pod(&nodes[1], "client", &ptp(&nodes[1])),
                )
            }
            Variant::Flannel => {
                flannel_vxlan(&nodes, &ips);
                let bridge = |node: &Node| {
                    json!({
                        "type": "bridge",
                        "bridge": "cni0",
                        "isGateway": true,
                        "ipMasq": false,
                        "mtu": UNDERLAY_MTU - VXLAN_OVERHEAD,
                        "ipam": host_local(node),
                    })
                };
                (
                    reference_pod(&nodes[0], "server", &bridge(&nodes[0])),
                    reference_pod(&nodes[1], "client", &bridge(&nodes[1])),
                )
            }
            Variant::WeirNative | Variant::WeirVxlan => {
                let manifests = ManifestDir::new();
                let objects: Vec<Value> = nodes
                    .iter()
                    .zip(&ips)
                    .map(|(node, ip)| node_object(node.name(), &[&node.pod_cidr()], &[*ip]))
                    .collect();
                manifests.write("nodes.yaml", &objects);
                for node in &mut nodes {
                    agents.push(node.start_agent_with_source_and(manifests.path(), routing.flags()));
                }
                dir = Some(manifests);
                (nodes[0].add_pod("server"), nodes[1].add_pod("client"))
            }
        };
        let connrate_server = Server::start(&server.ns, SocketAddr::new(server.ipv4(), PORT), 0);
        let iperf = Iperf3Server::start(&server.ns, server.ipv4());
        let lab = Self {
            variant,
            _iperf: iperf,
            _server: connrate_server,
            server,
            client,
            agents,
            _dir: dir,
            _nodes: nodes,
            _underlay: underlay,
        };
        lab.wait_reachable();
        lab.check_path(&ips);
        lab
    }

    /// The client's node sends to the server's pod the way the variant says:
    /// straight over the underlay to node A, or into the overlay's device.
    fn check_path(&self, ips: &[IpAddr]) {
        let route = self._nodes[1]
            .ns
            .sh(&format!("ip route get {}", self.server.ipv4()));
        let want = match self.variant {
            Variant::Routed | Variant::WeirNative => format!("via {} ", ips[0]),
            Variant::Flannel => "dev flannel.1 ".to_owned(),
            Variant::WeirVxlan => "dev weir_vxlan ".to_owned(),
        };
        assert!(
            route.contains(&want),
            "{}: node B's route to the server pod is not `{want}`: {route}",
            self.variant.name()
        );
    }

    /// Until the client pod completes a connection to the server pod (the agents
    /// install their routes after they start).
    fn wait_reachable(&self) {
        let to = self.server_addr();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.client.ns.run(move || one_connection(to).is_ok());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the client pod cannot reach the server pod after 30 s\n{}",
                self.variant.name(),
                self.agents.first().map(Agent::log_text).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn server_addr(&self) -> SocketAddr {
        SocketAddr::new(self.server.ipv4(), PORT)
    }
}

/// The device of `ns` that holds `ip`.
fn device_of(ns: &Netns, ip: IpAddr) -> String {
    let want = format!("inet {ip}/");
    ns.sh("ip -o -4 addr show")
        .lines()
        .find(|l| l.contains(&want))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no device with {ip} in {}", ns.name()))
        .to_owned()
}

/// flannel's `vxlan` backend, by hand: what flanneld configures on each node
/// (the device, then the other node's VTEP as a permanent neighbour, an FDB
/// entry and a route).
fn flannel_vxlan(nodes: &[Node], ips: &[IpAddr]) {
    let vtep = |i: usize| {
        let cidr = nodes[i].pod_cidr();
        let net = cidr.split('/').next().expect("CIDR").to_owned();
        (cidr, net, format!("02:fe:00:00:00:{:02x}", i + 1))
    };
    for (i, node) in nodes.iter().enumerate() {
        let (_, my_net, my_mac) = vtep(i);
        let dev = device_of(&node.ns, ips[i]);
        node.ns.sh(&format!(
            "ip link add flannel.1 address {my_mac} type vxlan id 1 local {} dev {dev} dstport {VXLAN_PORT} nolearning \
             && ip link set flannel.1 mtu {} \
             && ip addr add {my_net}/32 dev flannel.1 \
             && ip link set flannel.1 up",
            ips[i],
            UNDERLAY_MTU - VXLAN_OVERHEAD,
        ));
        for (j, ip) in ips.iter().enumerate().filter(|(j, _)| *j != i) {
            let (cidr, net, mac) = vtep(j);
            node.ns.sh(&format!(
                "ip neigh add {net} lladdr {mac} dev flannel.1 nud permanent \
                 && bridge fdb append {mac} dev flannel.1 dst {ip} \
                 && ip route add {cidr} via {net} dev flannel.1 onlink"
            ));
        }
    }
}

/// Whether this `weir-agent` offers `--routing vxlan`.
fn agent_has_vxlan() -> bool {
    let out = Command::new(bins::path("weir-agent"))
        .args(["run", "--help"])
        .output()
        .expect("spawn weir-agent run --help");
    String::from_utf8_lossy(&out.stdout).contains("vxlan")
}

#[derive(Default)]
struct Samples {
    conn_rate: Vec<f64>,
    errors: u64,
    syn_retransmits: u64,
    gbps: Vec<f64>,
    retransmits: Vec<f64>,
}

fn main() {
    require_root();
    let rounds = env_or("WEIR_BENCH_ROUNDS", 6).max(1);
    let secs = env_or("WEIR_BENCH_SECS", 2.0);
    let iperf_secs = env_or("WEIR_BENCH_IPERF_SECS", 3u32).max(1);
    let clients = env_or("WEIR_BENCH_CLIENTS", 4).max(1);
    let d = Duration::from_secs_f64(secs);
    let started = Instant::now();
    let sink = Sink::from_env("overlay");

    let mut variants: Vec<Variant> = std::env::var("WEIR_BENCH_VARIANTS").map_or_else(
        |_| Variant::ALL.to_vec(),
        |list| {
            list.split(',')
                .map(|name| {
                    Variant::ALL
                        .into_iter()
                        .find(|v| v.name() == name.trim())
                        .unwrap_or_else(|| {
                            panic!(
                                "WEIR_BENCH_VARIANTS: unknown variant {name:?} (routed, flannel, weir-native, weir-vxlan)"
                            )
                        })
                })
                .collect()
        },
    );
    if variants.contains(&Variant::WeirVxlan) && !agent_has_vxlan() {
        eprintln!(
            "overlay: SKIPPING weir-vxlan: `{} run --help` offers no `vxlan` (--routing vxlan is not in this build)",
            bins::path("weir-agent").display()
        );
        println!("\n**weir-vxlan skipped**: this `weir-agent` has no `--routing vxlan`.");
        variants.retain(|v| *v != Variant::WeirVxlan);
    }
    eprintln!(
        "overlay: {} over {rounds} rounds: {secs} s connection samples ({clients} client threads), \
         iperf3 -t {iperf_secs} -O 1",
        variants.iter().map(|v| v.name()).collect::<Vec<_>>().join(", ")
    );

    let labs: Vec<Lab> = variants.iter().map(|&v| Lab::new(v)).collect();
    eprintln!(
        "overlay: labs ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut samples: Vec<Samples> = labs.iter().map(|_| Samples::default()).collect();
    for round in 0..rounds {
        let order: Vec<usize> = (0..labs.len()).map(|k| (k + round) % labs.len()).collect();
        for &i in &order {
            let lab = &labs[i];
            let syn = syn_retransmits(&lab.client.ns);
            let (rate, errors) = conn_rate(&lab.client.ns, lab.server_addr(), clients, d);
            let syn = syn_retransmits(&lab.client.ns) - syn;
            eprintln!(
                "round {round}: {}: {rate:.0} conn/s, {errors} errors, {syn} SYNs sent again",
                lab.variant.name()
            );
            samples[i].conn_rate.push(rate);
            samples[i].errors += errors;
            samples[i].syn_retransmits += syn;
        }
        for &i in &order {
            let lab = &labs[i];
            let (bps, retransmits) = iperf3(&lab.client.ns, lab.server.ipv4(), iperf_secs);
            eprintln!(
                "round {round}: {}: {:.2} Gbit/s, {retransmits} retransmits",
                lab.variant.name(),
                bps / 1e9
            );
            samples[i].gbps.push(bps / 1e9);
            samples[i].retransmits.push(retransmits as f64);
        }
    }

    let records: Vec<_> = labs
        .iter()
        .zip(&samples)
        .flat_map(|(lab, s)| {
            let name = lab.variant.name();
            sink.traffic(
                name,
                Stats::new(median(&s.conn_rate), &s.conn_rate),
                Stats::new(median(&s.gbps), &s.gbps),
            )
        })
        .collect();
    sink.write(&records)
        .unwrap_or_else(|e| panic!("{}: {e:?}", weir_lab::bench_json::ENV));

    println!(
        "\n### Cross-node pod to pod: new TCP connections/s and one TCP stream's throughput\n\n\
         ({rounds} rounds; {secs} s connection samples from {clients} threads; iperf3 -t {iperf_secs} -O 1)\n"
    );
    println!(
        "| variant | conn/s | min-max | errors | SYNs sent again | iperf3 Gbit/s | min-max | retransmits (median) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (lab, s) in labs.iter().zip(&samples) {
        let (clo, chi) = min_max(&s.conn_rate);
        let (glo, ghi) = min_max(&s.gbps);
        println!(
            "| {} | {:.0} | {clo:.0}-{chi:.0} | {} | {} | {:.2} | {glo:.2}-{ghi:.2} | {:.0} |",
            lab.variant.label(),
            median(&s.conn_rate),
            s.errors,
            s.syn_retransmits,
            median(&s.gbps),
            median(&s.retransmits),
        );
    }

    let find = |v: Variant| labs.iter().position(|l| l.variant == v);
    let ratios = [
        (Variant::WeirVxlan, Variant::Flannel, "goal >= 1.0"),
        (Variant::WeirNative, Variant::Routed, "goal >= 0.95"),
        (Variant::WeirNative, Variant::Flannel, "information"),
        (Variant::WeirVxlan, Variant::Routed, "information"),
    ];
    println!(
        "\nRatios of medians (in brackets: the same ratio round by round, min-max; the variants of a round ran \
         back to back):\n"
    );
    println!("| ratio | conn/s | throughput | |");
    println!("| --- | ---: | ---: | --- |");
    for (a, b, what) in ratios {
        let (Some(a), Some(b)) = (find(a), find(b)) else {
            continue;
        };
        let ratio = |f: fn(&Samples) -> &Vec<f64>| {
            let per_round: Vec<f64> = f(&samples[a])
                .iter()
                .zip(f(&samples[b]))
                .map(|(x, y)| x / y)
                .collect();
            let (lo, hi) = min_max(&per_round);
            format!(
                "**{:.2}** ({lo:.2}-{hi:.2})",
                median(f(&samples[a])) / median(f(&samples[b]))
            )
        };
        println!(
            "| {} / {} | {} | {} | {what} |",
            labs[a].variant.name(),
            labs[b].variant.name(),
            ratio(|s| &s.conn_rate),
            ratio(|s| &s.gbps),
        );
    }

    println!("\nWeir agents after the run: memory, and the datapath's counters (`weirctl metrics`):\n");
    println!("| variant | node | RSS (MiB) | peak RSS (MiB) | packets by direction and reason |");
    println!("| --- | --- | ---: | ---: | --- |");
    for lab in &labs {
        for (agent, node) in lab.agents.iter().zip(["A (server)", "B (client)"]) {
            let (rss, hwm) = agent.rss_kib();
            let counters: Vec<String> = agent
                .weirctl(&["metrics"])
                .as_array()
                .map(|rows| {
                    rows.iter()
                        .map(|r| {
                            format!(
                                "{} {}: {}",
                                r["direction"].as_str().unwrap_or("?"),
                                r["reason"].as_str().unwrap_or("?"),
                                r["packets"]
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            println!(
                "| {} | {node} | {:.1} | {:.1} | {} |",
                lab.variant.name(),
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0,
                counters.join("; ")
            );
        }
    }
    eprintln!("overlay: done in {:.0} s", started.elapsed().as_secs_f64());
}
