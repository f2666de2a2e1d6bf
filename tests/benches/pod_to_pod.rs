//! Pod to pod (issue 14, "pod-to-pod without the host stack"): Weir's delivery
//! straight into the destination pod's namespace (`bpf_redirect_peer`) against
//! the reference `ptp` plugin's pods (plain kernel routing through the node)
//! and against Weir's previous path (`bpf_redirect_neigh` to the pod's host
//! veth, whose `to-pod` program judges the packet), in the same run.
//!
//! A benchmark, not a test: it prints markdown tables and asserts nothing about
//! speed. Needs root. Run (the bench finds `weir-agent`, `weirctl` and `weir-cni`
//! next to its own executable, i.e. in `target/release`, or in `$WEIR_BIN_DIR`):
//!
//! ```text
//! cargo build --release --bins && cargo bench -p weir-tests --bench pod_to_pod
//! ```
//!
//! Setup, one lab per variant and placement (`same`: server and client pods on
//! one node; `cross`: on two nodes joined by a switched underlay, MTU 1500,
//! each routing the other's pod CIDR via its address):
//!
//! - `ptp`: the reference `ptp` plugin with `host-local` IPAM, no masquerade:
//!   the node's routing (and netfilter, empty) between the pods' veths.
//! - `weir-peer`: `weir-agent` (`--routing native` across nodes, reading the
//!   two Node objects from a manifest directory), pods wired by `weir-cni`:
//!   today's path, a packet for a local pod handed straight into its namespace.
//! - `weir-neigh`: the same, but every endpoint's MACs are then cleared in the
//!   pinned endpoints map (`bpftool map update`), which is how the datapath
//!   sees a pod registered by an older `weir-cni`: packets for local pods go
//!   to their host veth by `bpf_redirect_neigh` and its `to-pod` program judges
//!   them, the path before `redirect_peer`. The same binaries, so the two
//!   differ by the delivery alone.
//!
//! Measured, in rounds that visit the labs in a rotating order (so that the
//! machine's noise falls on all alike): new TCP connections per second from
//! the client pod to the server pod (an ordinary client: the kernel picks the
//! source port; connect, a 3-byte request, the 1-byte answer, the server's
//! close, then ours), from `WEIR_BENCH_CLIENTS` threads for `WEIR_BENCH_SECS`
//! seconds; then one TCP stream's throughput, `iperf3 -c SERVER -t N -O 1 -J`
//! (the receiver's `bits_per_second`).
//!
//! Reported: medians and min-max per lab, and ratios of medians (weir-peer /
//! ptp, the issue's goal of 1.10; weir-peer / weir-neigh, what the new path
//! brings) with the range of the same ratio round by round.
//!
//! Environment: `WEIR_BENCH_ROUNDS` (default 6), `WEIR_BENCH_SECS` (default 2),
//! `WEIR_BENCH_IPERF_SECS` (default 3), `WEIR_BENCH_CLIENTS` (default 4),
//! `WEIR_BENCH_PLACEMENTS` (`same`, `cross` or `same,cross`, the default),
//! `WEIR_BENCH_VARIANTS` (a subset of `ptp,weir-peer,weir-neigh`),
//! `WEIR_BENCH_JSON` (a file, or a directory, for the machine-readable records
//! `scripts/charts.sh` draws).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use weir_lab::{
    Agent, Node, Pod,
    bench::{
        Iperf3Server, conn_rate, host_local, iperf3, median, min_max, one_connection, reference_pod,
        syn_retransmits,
    },
    bench_json::{Sink, Stats},
    connrate::Server,
    env_or, require_root,
    services::{ManifestDir, node_object},
    underlay::{Routing, Underlay},
};

const PORT: u16 = 8080;
const MTU: u32 = 1500;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Ptp,
    WeirPeer,
    WeirNeigh,
}

impl Variant {
    const ALL: [Self; 3] = [Self::Ptp, Self::WeirPeer, Self::WeirNeigh];

    fn name(self) -> &'static str {
        match self {
            Self::Ptp => "ptp",
            Self::WeirPeer => "weir-peer",
            Self::WeirNeigh => "weir-neigh",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Ptp => "reference `ptp` (kernel routing)",
            Self::WeirPeer => "Weir, `bpf_redirect_peer` into the pod",
            Self::WeirNeigh => "Weir, `bpf_redirect_neigh` to the host veth (before)",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    Same,
    Cross,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Self::Same => "same",
            Self::Cross => "cross",
        }
    }
}

/// One lab. Fields drop in order: servers and pods, then the agents, then the
/// nodes and the underlay.
struct Lab {
    variant: Variant,
    placement: Placement,
    _iperf: Iperf3Server,
    _server: Server,
    server: Pod,
    client: Pod,
    agents: Vec<Agent>,
    _dir: Option<ManifestDir>,
    _nodes: Vec<Node>,
    _underlay: Option<Underlay>,
}

impl Lab {
    fn new(variant: Variant, placement: Placement, n: u8) -> Self {
        let weir = variant != Variant::Ptp;
        let (mut nodes, underlay, ips) = match placement {
            Placement::Same => (vec![Node::new(&format!("10.{n}.1.0/24"))], None, Vec::new()),
            Placement::Cross => {
                let underlay = Underlay::new(n);
                let nodes = vec![
                    Routing::Native.node(&format!("10.{n}.1.0/24")),
                    Routing::Native.node(&format!("10.{n}.2.0/24")),
                ];
                let ips = underlay.plug_nodes(&nodes.iter().collect::<Vec<_>>());
                (nodes, Some(underlay), ips)
            }
        };
        let (mut agents, mut dir) = (Vec::new(), None);
        if weir {
            let manifests = ManifestDir::new();
            let objects: Vec<Value> = nodes
                .iter()
                .zip(&ips)
                .map(|(node, ip)| node_object(node.name(), &[&node.pod_cidr()], &[*ip]))
                .collect();
            manifests.write("nodes.yaml", &objects);
            let flags = match placement {
                Placement::Same => Vec::new(),
                Placement::Cross => Routing::Native.flags(),
            };
            for node in &mut nodes {
                agents.push(node.start_agent_with_source_and(manifests.path(), flags.clone()));
            }
            dir = Some(manifests);
        } else if placement == Placement::Cross {
            for (i, node) in nodes.iter().enumerate() {
                let other = 1 - i;
                node.ns.sh(&format!(
                    "ip route add {} via {}",
                    nodes[other].pod_cidr(),
                    ips[other]
                ));
            }
        }
        let client_node = nodes.len() - 1;
        let (server, client) = if weir {
            (nodes[0].add_pod("server"), nodes[client_node].add_pod("client"))
        } else {
            let ptp =
                |node: &Node| json!({ "type": "ptp", "ipMasq": false, "mtu": MTU, "ipam": host_local(node) });
            (
                reference_pod(&nodes[0], "server", &ptp(&nodes[0])),
                reference_pod(&nodes[client_node], "client", &ptp(&nodes[client_node])),
            )
        };
        if variant == Variant::WeirNeigh {
            for node in &nodes {
                forget_macs(node);
            }
        }
        let connrate_server = Server::start(&server.ns, SocketAddr::new(server.ipv4(), PORT), 0);
        let iperf = Iperf3Server::start(&server.ns, server.ipv4());
        let lab = Self {
            variant,
            placement,
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
        lab
    }

    fn name(&self) -> String {
        format!("{} {}", self.placement.name(), self.variant.name())
    }

    /// Until the client pod completes a connection to the server pod.
    fn wait_reachable(&self) {
        let to = self.server_addr();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.client.ns.run(move || one_connection(to).is_ok()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the client pod cannot reach the server pod after 30 s\n{}",
                self.name(),
                self.agents.first().map(Agent::log_text).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn server_addr(&self) -> SocketAddr {
        SocketAddr::new(self.server.ipv4(), PORT)
    }

    /// The to-pod packets this lab's agents delivered by redirect_peer.
    fn peer_packets(&self) -> u64 {
        self.agents
            .iter()
            .flat_map(|a| a.weirctl(&["metrics"]).as_array().cloned().unwrap_or_default())
            .filter(|r| {
                r["direction"] == "to-pod"
                    && r["reason"].as_str().is_some_and(|s| s.contains("redirect_peer"))
            })
            .map(|r| r["packets"].as_u64().unwrap_or(0))
            .sum()
    }
}

/// Clears the MACs of every endpoint in `node`'s pinned endpoints map, as an
/// older `weir-cni` registered pods: their packets then go by the host veth.
fn forget_macs(node: &Node) {
    // From the harness's own namespaces: `ip netns exec` mounts a fresh
    // /sys, without bpffs.
    let bpftool = |args: &[&str]| -> String {
        let out = std::process::Command::new("bpftool")
            .args(args)
            .output()
            .expect("spawn bpftool (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "bpftool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let map = node.bpffs_root.join("maps").join(weir_common::maps::ENDPOINTS);
    let map = map.to_str().expect("UTF-8 pin path");
    let dump: Value = serde_json::from_str(&bpftool(&["-j", "map", "dump", "pinned", map]))
        .expect("bpftool -j map dump: JSON");
    for entry in dump.as_array().expect("entries") {
        let bytes = |v: &Value| -> Vec<u8> {
            v.as_array()
                .expect("bytes")
                .iter()
                .map(|b| {
                    let s = b.as_str().expect("hex byte");
                    u8::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex byte")
                })
                .collect()
        };
        let (key, mut value) = (bytes(&entry["key"]), bytes(&entry["value"]));
        value[4..].fill(0);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>();
        let mut args = vec!["map", "update", "pinned", map, "key", "hex"]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        args.extend(hex(&key));
        args.extend(["value", "hex"].map(str::to_owned));
        args.extend(hex(&value));
        args.push("exist".to_owned());
        bpftool(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

#[derive(Default)]
struct Samples {
    conn_rate: Vec<f64>,
    errors: u64,
    syn_retransmits: u64,
    gbps: Vec<f64>,
    retransmits: Vec<f64>,
}

fn parse_list<T: Copy>(var: &str, all: &[T], name: fn(T) -> &'static str) -> Vec<T> {
    std::env::var(var).map_or_else(
        |_| all.to_vec(),
        |list| {
            list.split(',')
                .map(|item| {
                    all.iter()
                        .copied()
                        .find(|v| name(*v) == item.trim())
                        .unwrap_or_else(|| panic!("{var}: unknown item {item:?}"))
                })
                .collect()
        },
    )
}

fn main() {
    require_root();
    let rounds = env_or("WEIR_BENCH_ROUNDS", 6).max(1);
    let secs = env_or("WEIR_BENCH_SECS", 2.0);
    let iperf_secs = env_or("WEIR_BENCH_IPERF_SECS", 3u32).max(1);
    let clients = env_or("WEIR_BENCH_CLIENTS", 4).max(1);
    let d = Duration::from_secs_f64(secs);
    let started = Instant::now();
    let sink = Sink::from_env("pod_to_pod");
    let variants = parse_list("WEIR_BENCH_VARIANTS", &Variant::ALL, Variant::name);
    let placements = parse_list(
        "WEIR_BENCH_PLACEMENTS",
        &[Placement::Same, Placement::Cross],
        Placement::name,
    );
    eprintln!(
        "pod_to_pod: {} x {} over {rounds} rounds: {secs} s connection samples ({clients} client threads), \
         iperf3 -t {iperf_secs} -O 1",
        placements.iter().map(|p| p.name()).collect::<Vec<_>>().join(","),
        variants.iter().map(|v| v.name()).collect::<Vec<_>>().join(","),
    );
    let mut labs = Vec::new();
    let mut n = 231u8;
    for &p in &placements {
        for &v in &variants {
            labs.push(Lab::new(v, p, n));
            n += 1;
        }
    }
    eprintln!(
        "pod_to_pod: labs ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let peer_before: Vec<u64> = labs.iter().map(Lab::peer_packets).collect();

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
                lab.name()
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
                lab.name(),
                bps / 1e9
            );
            samples[i].gbps.push(bps / 1e9);
            samples[i].retransmits.push(retransmits as f64);
        }
    }

    println!(
        "\n### Pod to pod: new TCP connections/s and one TCP stream's throughput\n\n\
         ({rounds} rounds; {secs} s connection samples from {clients} threads; iperf3 -t {iperf_secs} -O 1)\n"
    );
    println!(
        "| placement | variant | conn/s | min-max | errors | SYNs sent again | iperf3 Gbit/s | min-max | \
         retransmits (median) | to-pod packets by redirect_peer |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for ((lab, s), before) in labs.iter().zip(&samples).zip(&peer_before) {
        let (clo, chi) = min_max(&s.conn_rate);
        let (glo, ghi) = min_max(&s.gbps);
        let peer = if lab.agents.is_empty() {
            "-".to_owned()
        } else {
            (lab.peer_packets() - before).to_string()
        };
        println!(
            "| {} | {} | {:.0} | {clo:.0}-{chi:.0} | {} | {} | {:.2} | {glo:.2}-{ghi:.2} | {:.0} | {peer} |",
            lab.placement.name(),
            lab.variant.label(),
            median(&s.conn_rate),
            s.errors,
            s.syn_retransmits,
            median(&s.gbps),
            median(&s.retransmits),
        );
    }

    // Machine-readable: one record per lab and metric, the variant named
    // `placement-variant` (`same-ptp`, `cross-weir-peer`, ...).
    let records: Vec<_> = labs
        .iter()
        .zip(&samples)
        .flat_map(|(lab, s)| {
            let name = format!("{}-{}", lab.placement.name(), lab.variant.name());
            sink.traffic(
                &name,
                Stats::new(median(&s.conn_rate), &s.conn_rate),
                Stats::new(median(&s.gbps), &s.gbps),
            )
        })
        .collect();
    sink.write(&records)
        .unwrap_or_else(|e| panic!("{}: {e:?}", weir_lab::bench_json::ENV));

    let find = |v: Variant, p: Placement| labs.iter().position(|l| l.variant == v && l.placement == p);
    println!(
        "\nRatios of medians (in brackets: the same ratio round by round, min-max; the labs of a round ran back \
         to back):\n"
    );
    println!("| placement | ratio | conn/s | throughput | |");
    println!("| --- | --- | ---: | ---: | --- |");
    for &p in &placements {
        for (a, b, what) in [
            (Variant::WeirPeer, Variant::Ptp, "goal >= 1.10"),
            (Variant::WeirPeer, Variant::WeirNeigh, "after / before"),
            (Variant::WeirNeigh, Variant::Ptp, "before"),
        ] {
            let (Some(a), Some(b)) = (find(a, p), find(b, p)) else {
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
                "| {} | {} / {} | {} | {} | {what} |",
                p.name(),
                labs[a].variant.name(),
                labs[b].variant.name(),
                ratio(|s| &s.conn_rate),
                ratio(|s| &s.gbps),
            );
        }
    }
    eprintln!("pod_to_pod: done in {:.0} s", started.elapsed().as_secs_f64());
}
