//! NodePorts from outside the cluster: Weir's node program (TC, and with XDP in
//! front, `--nodeport-acceleration native`) against kube-proxy's iptables
//! NodePort rules, to an endpoint on the node the client dials (local) and to
//! one on another node (remote).
//!
//! A benchmark, not a test: it prints markdown tables and asserts nothing about
//! speed. Needs root. Run (the bench finds `weir-agent`, `weirctl` and `weir-cni`
//! next to its own executable, i.e. in `target/release`, or in `$WEIR_BIN_DIR`):
//!
//! ```text
//! cargo build --release --bins && cargo bench -p weir-tests --bench nodeport
//! ```
//!
//! Setup. Three clusters of two lab nodes each, every cluster on a switched underlay
//! with its own external client hosts (one per client thread): the Weir clusters
//! run an agent per node (one of them with XDP); the iptables cluster runs none
//! (its pods' veths carry no program) and node A holds kube-proxy's NodePort rules
//! ([`weir_lab::kube_proxy`]: `KUBE-NODEPORTS` -> `KUBE-EXT-*` with the masquerade
//! mark -> `KUBE-SVC-*` -> DNAT). Each cluster has a backend pod on node A
//! ("local") and one on node B ("remote"), and two NodePort Services with
//! externalTrafficPolicy Cluster: 30080 to the local pod, 30081 to the remote one.
//! The external clients route the pod networks via node A, so `direct` (to the pod
//! addresses themselves) takes the same path through node A: the ceiling. Every
//! switch port behaves as a wire towards XDP
//! ([`Underlay::take_xdp_frames`]: complete checksums, frames sent back by
//! XDP taken), in every cluster alike.
//!
//! Measured: new TCP connections per second from the external clients (connect, a
//! 3-byte request, a 1-byte answer, close; see [`weir_lab::connrate`]), in rounds
//! of one sample per variant in a rotating order; medians are reported.
//!
//! Then a UDP flood to a NodePort of a Service without endpoints, from two
//! senders: ordinary UDP sockets on the external hosts, and the same datagrams
//! as pre-built frames put on node A's cable at the switch
//! ([`weir_lab::flood`]), far cheaper per packet.
//!
//! Environment: `WEIR_BENCH_ROUNDS` (default 5), `WEIR_BENCH_SECS` (seconds per
//! sample, default 2), `WEIR_BENCH_CLIENTS` (client hosts, default 4),
//! `WEIR_BENCH_PARTS` (`conns,flood`, the default, or either).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use serde_json::json;
use weir_lab::{
    Agent, Netns, Node, Pod, TempDir,
    connrate::{Clients, Sample, Server, median_rate},
    env_or,
    kube_proxy::{Service, ServiceSet},
    require_root,
    services::{Ep, ManifestDir, merge, port, service, slice},
    underlay::Underlay,
    xdp_pass,
};

const PORT: u16 = 8080;
const LOCAL_NODE_PORT: u16 = 30080;
const REMOTE_NODE_PORT: u16 = 30081;
/// A UDP NodePort of a Service without endpoints: the flood's target.
const EMPTY_NODE_PORT: u16 = 30082;
/// `weirctl metrics`' reasons of a packet to a Service without endpoints.
const NO_ENDPOINTS: [&str; 2] = [
    "service without endpoints (rejected)",
    "service without endpoints, over the rejection rate (dropped)",
];
/// Answers of the local and the remote backend.
const LOCAL_ID: u8 = 0;
const REMOTE_ID: u8 = 1;

/// One two-node cluster with its external clients.
struct Cluster {
    clients: Clients,
    _servers: Vec<Server>,
    local: Pod,
    remote: Pod,
    externals: Vec<Netns>,
    /// The external hosts' underlay addresses.
    external_ips: Vec<Ipv4Addr>,
    node_a: IpAddr,
    _agents: Vec<Agent>,
    _dirs: Vec<ManifestDir>,
    nodes: Vec<Node>,
    underlay: Underlay,
}

/// What serves a cluster's NodePorts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dataplane {
    Iptables,
    Weir,
    WeirXdp,
}

impl Cluster {
    fn new(n: u8, clients: usize, dataplane: Dataplane) -> Self {
        let underlay = Underlay::new(n);
        let mut nodes = vec![
            Node::new(&format!("10.{n}.1.0/24")),
            Node::new(&format!("10.{n}.2.0/24")),
        ];
        let ips = underlay.join(&nodes.iter().collect::<Vec<_>>());
        let (mut agents, mut dirs) = (Vec::new(), Vec::new());
        if dataplane != Dataplane::Iptables {
            let flags = if dataplane == Dataplane::WeirXdp {
                vec!["--nodeport-acceleration".into(), "native".into()]
            } else {
                Vec::new()
            };
            for node in &mut nodes {
                let dir = ManifestDir::new();
                agents.push(node.start_agent_with_source_and(dir.path(), flags.clone()));
                dirs.push(dir);
            }
        }
        let local = nodes[0].add_pod("local");
        let remote = nodes[1].add_pod("remote");
        let servers = vec![
            Server::start(&local.ns, SocketAddr::new(local.ipv4(), PORT), LOCAL_ID),
            Server::start(&remote.ns, SocketAddr::new(remote.ipv4(), PORT), REMOTE_ID),
        ];
        let (externals, external_ips): (Vec<Netns>, Vec<Ipv4Addr>) = (0..clients)
            .map(|i| {
                let (ns, ip) = underlay.external_at(100 + i as u8);
                for node in &nodes {
                    ns.sh(&format!("ip route add {} via {}", node.pod_cidr(), ips[0]));
                }
                (ns, v4(ip))
            })
            .unzip();
        underlay.take_xdp_frames();
        Self {
            clients: Clients::new(&externals.iter().collect::<Vec<_>>()),
            _servers: servers,
            local,
            remote,
            externals,
            external_ips,
            node_a: ips[0],
            _agents: agents,
            _dirs: dirs,
            nodes,
            underlay,
        }
    }

    /// The two NodePort Services, for the Weir agents.
    fn program_weir(&self) {
        let mut objects = Vec::new();
        for (name, node_port, node, pod) in [
            ("np-local", LOCAL_NODE_PORT, &self.nodes[0], &self.local),
            ("np-remote", REMOTE_NODE_PORT, &self.nodes[1], &self.remote),
        ] {
            let mut svc = service(
                name,
                if node_port == LOCAL_NODE_PORT {
                    "10.96.0.1"
                } else {
                    "10.96.0.2"
                },
                &[port("http", 80, "8080", "TCP")],
            );
            merge(
                &mut svc,
                &json!({ "spec": { "type": "NodePort", "externalTrafficPolicy": "Cluster",
                "ports": [{ "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": node_port }] } }),
            );
            objects.push(svc);
            objects.push(slice(
                &format!("{name}-1"),
                name,
                node.name(),
                &[("http", PORT, "TCP")],
                &[Ep::ready(pod.ipv4())],
            ));
        }
        let mut empty = service("np-empty", "10.96.0.3", &[port("dns", 53, "53", "UDP")]);
        merge(
            &mut empty,
            &json!({ "spec": { "type": "NodePort", "externalTrafficPolicy": "Cluster",
            "ports": [{ "name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP", "nodePort": EMPTY_NODE_PORT }] } }),
        );
        objects.push(empty);
        for dir in &self._dirs {
            dir.write("nodeports.yaml", &objects);
        }
        for agent in &self._agents {
            agent.wait_services("both NodePorts", |s| {
                s.as_array().is_some_and(|all| {
                    all.iter()
                        .filter(|f| f["count"] == json!(1) && f["port"].as_u64() > Some(30000))
                        .count()
                        >= 2
                })
            });
        }
    }

    /// The same Services as kube-proxy's iptables rules on node A.
    fn program_iptables(&self) {
        let service = |name: &str, vip: [u8; 4], node_port, pod: &Pod| Service {
            namespace: "default".to_owned(),
            name: name.to_owned(),
            vip: Ipv4Addr::from(vip),
            port: 80,
            node_port: Some(node_port),
            endpoints: vec![SocketAddrV4::new(v4(pod.ipv4()), PORT)],
        };
        let set = ServiceSet {
            services: vec![
                service("np-local", [10, 96, 0, 1], LOCAL_NODE_PORT, &self.local),
                service("np-remote", [10, 96, 0, 2], REMOTE_NODE_PORT, &self.remote),
            ],
            cluster_cidr: "10.0.0.0/8".to_owned(),
        };
        let state = TempDir::new("weir-bench-np-");
        let file = state.join("rules");
        std::fs::write(&file, set.iptables_restore()).expect("write rules");
        self.nodes[0]
            .ns
            .sh(&format!("iptables-restore {}", file.display()));
        // kube-proxy's filter rules for a NodePort of a Service without
        // endpoints: REJECT (ICMP port unreachable, rate-limited by the kernel).
        std::fs::write(
            &file,
            format!(
                "*filter\n:KUBE-EXTERNAL-SERVICES - [0:0]\n\
                 -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
                 -A KUBE-EXTERNAL-SERVICES -m comment --comment \"default/np-empty:dns has no endpoints\" -m addrtype --dst-type LOCAL -m udp -p udp --dport {EMPTY_NODE_PORT} -j REJECT --reject-with icmp-port-unreachable\n\
                 COMMIT\n"
            ),
        )
        .expect("write filter rules");
        self.nodes[0]
            .ns
            .sh(&format!("iptables-restore --noflush {}", file.display()));
    }

    /// Packets to the Service without endpoints node A has disposed of
    /// (rejected or dropped) so far.
    fn disposed(&self) -> u64 {
        match self._agents.first() {
            Some(agent) => {
                let metrics = agent.weirctl(&["metrics"]);
                ["from-netdev", "xdp"]
                    .iter()
                    .flat_map(|dir| {
                        NO_ENDPOINTS.map(|reason| weir_lab::agent::counted(&metrics, dir, reason))
                    })
                    .sum()
            }
            None => {
                let rules = self.nodes[0]
                    .ns
                    .sh("iptables -t filter -nvxL KUBE-EXTERNAL-SERVICES");
                rules
                    .lines()
                    .find(|l| l.contains("REJECT"))
                    .and_then(|l| l.split_whitespace().next()?.parse().ok())
                    .expect("the REJECT rule's packet count")
            }
        }
    }

    /// Every external host sends 1-byte UDP datagrams to node A's NodePort of
    /// the Service without endpoints for `d`, as fast as `sender` can:
    /// (datagrams sent, disposed of by node A) per second. `ceiling`: node A's
    /// device drops everything first (an XDP program of two instructions), the
    /// most the lab's senders and wire deliver.
    fn flood(&self, d: Duration, sender: Sender, ceiling: bool) -> (f64, f64) {
        let device = self.nodes[0].ns.link_holding(self.node_a)["ifname"]
            .as_str()
            .expect("node A's underlay device")
            .to_owned();
        let disposed = || {
            if ceiling {
                xdp_pass::drops(&self.nodes[0].ns, &device)
            } else {
                self.disposed()
            }
        };
        if ceiling {
            xdp_pass::attach(&self.nodes[0].ns, &device, &xdp_pass::pinned_drop());
        }
        let to = SocketAddrV4::new(v4(self.node_a), EMPTY_NODE_PORT);
        // The wire and its frames are made before the clock starts.
        let wire = (sender == Sender::Wire).then(|| {
            let wire = self.underlay.wire_to(
                &self.nodes[0].ns,
                self.node_a,
                &self.externals[0],
                IpAddr::V4(self.external_ips[0]),
            );
            // The external hosts' datagrams, one source port each, as their
            // unconnected sockets have.
            let frames: Vec<_> = self
                .external_ips
                .iter()
                .map(|&ip| wire.udp_frame(SocketAddrV4::new(ip, 40000), to))
                .collect();
            (wire, frames)
        });
        let before = disposed();
        let started = Instant::now();
        let sent: u64 = match wire {
            None => {
                let senders: Vec<_> = self
                    .externals
                    .iter()
                    .map(|ns| {
                        ns.spawn(move || {
                            let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
                            let deadline = Instant::now() + d;
                            let mut sent = 0u64;
                            while Instant::now() < deadline {
                                for _ in 0..64 {
                                    sent += u64::from(socket.send_to(b"x", to).is_ok());
                                }
                            }
                            sent
                        })
                    })
                    .collect();
                senders.into_iter().map(|t| t.join().expect("sender")).sum()
            }
            Some((wire, frames)) => wire.send_for(frames, d),
        };
        let secs = started.elapsed().as_secs_f64();
        // What was queued when the senders stopped is disposed of next.
        std::thread::sleep(Duration::from_millis(200));
        let disposed = disposed() - before;
        if ceiling {
            xdp_pass::detach(&self.nodes[0].ns, &device);
        }
        (sent as f64 / secs, disposed as f64 / secs)
    }

    fn targets(&self, to: Path, via_node_port: bool) -> Vec<SocketAddrV4> {
        let addr = match (to, via_node_port) {
            (Path::Local, false) => SocketAddr::new(self.local.ipv4(), PORT),
            (Path::Remote, false) => SocketAddr::new(self.remote.ipv4(), PORT),
            (Path::Local, true) => SocketAddr::new(self.node_a, LOCAL_NODE_PORT),
            (Path::Remote, true) => SocketAddr::new(self.node_a, REMOTE_NODE_PORT),
        };
        vec![SocketAddrV4::new(v4(addr.ip()), addr.port())]
    }
}

/// What floods node A.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sender {
    /// An ordinary unconnected UDP socket per host.
    Socket,
    /// The same datagrams as pre-built frames put on node A's cable at the
    /// switch ([`weir_lab::flood`]): a sender far cheaper per packet than the
    /// node's work, as pktgen is.
    Wire,
}

impl Sender {
    fn label(self) -> &'static str {
        match self {
            Self::Socket => "UDP socket",
            Self::Wire => "frames on the wire",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Local,
    Remote,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Direct,
    Weir,
    WeirXdp,
    Iptables,
    /// The flood's ceiling ([`Cluster::flood`]).
    Ceiling,
}

impl Variant {
    const ALL: [Self; 4] = [Self::Direct, Self::Weir, Self::WeirXdp, Self::Iptables];

    fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct (pod IP, routed via node A)",
            Self::Weir => "Weir NodePort (TC)",
            Self::WeirXdp => "Weir NodePort (XDP, `--nodeport-acceleration native`)",
            Self::Iptables => "iptables NodePort",
            Self::Ceiling => "ceiling: node A's device drops all (XDP_DROP)",
        }
    }
}

fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => panic!("IPv4 expected"),
    }
}

/// The connection samples' table.
fn conn_table(cases: &[(Path, Variant)], samples: &[Vec<Sample>]) {
    println!("\n### NodePort from outside the cluster: new TCP connections per second\n");
    println!("| endpoint | variant | conn/s | min-max | / direct | / iptables | errors |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for (i, (path, variant)) in cases.iter().enumerate() {
        let of = |v: Variant| {
            let k = cases.iter().position(|c| *c == (*path, v)).expect("case");
            median_rate(&samples[i]) / median_rate(&samples[k])
        };
        let rates: Vec<f64> = samples[i].iter().map(Sample::rate).collect();
        let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rates.iter().copied().fold(0.0, f64::max);
        let ratio = |v: Variant| {
            if *variant == v {
                "1".to_owned()
            } else {
                format!("**{:.2}**", of(v))
            }
        };
        let errors: u64 = samples[i].iter().map(|s| s.errors).sum();
        println!(
            "| {} | {} | {:.0} | {lo:.0}-{hi:.0} | {} | {} | {errors} |",
            if *path == Path::Local {
                "local (node A)"
            } else {
                "remote (node B)"
            },
            variant.label(),
            median_rate(&samples[i]),
            ratio(Variant::Direct),
            ratio(Variant::Iptables),
        );
    }
}

/// Floods each cluster's node A from each sender, in rounds of a rotating
/// order, and prints the table.
fn flood_table(rounds: usize, d: Duration, ipt: &Cluster, weir: &Cluster, xdp: &Cluster) {
    // A UDP flood to a NodePort of a Service without endpoints, from each
    // sender.
    let floods: Vec<(Sender, Variant)> = [Sender::Socket, Sender::Wire]
        .iter()
        .flat_map(|&s| {
            [
                Variant::Iptables,
                Variant::Weir,
                Variant::WeirXdp,
                Variant::Ceiling,
            ]
            .map(move |v| (s, v))
        })
        .collect();
    let mut flood_samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); floods.len()];
    for round in 0..rounds {
        for k in 0..floods.len() {
            let i = (k + round) % floods.len();
            let (sender, variant) = floods[i];
            let cluster = match variant {
                Variant::Iptables | Variant::Ceiling => ipt,
                Variant::WeirXdp => xdp,
                Variant::Direct | Variant::Weir => weir,
            };
            let (sent, disposed) = cluster.flood(d, sender, variant == Variant::Ceiling);
            eprintln!(
                "round {round}: flood {sender:?} {variant:?}: {sent:.0} sent/s, {disposed:.0} disposed/s"
            );
            flood_samples[i].push((sent, disposed));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let disposed: Vec<f64> = flood_samples
        .iter()
        .map(|s| median(s.iter().map(|x| x.1).collect()))
        .collect();
    println!(
        "\n### UDP flood to a NodePort of a Service without endpoints: packets per second node A disposes of\n"
    );
    println!("| sender | variant | sent/s | disposed/s | min-max | / iptables |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for (i, (sender, variant)) in floods.iter().enumerate() {
        let d: Vec<f64> = flood_samples[i].iter().map(|x| x.1).collect();
        let lo = d.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = d.iter().copied().fold(0.0, f64::max);
        let iptables = floods
            .iter()
            .position(|c| *c == (*sender, Variant::Iptables))
            .expect("the sender's iptables case");
        println!(
            "| {} | {} | {:.0} | {:.0} | {lo:.0}-{hi:.0} | **{:.2}** |",
            sender.label(),
            variant.label(),
            median(flood_samples[i].iter().map(|x| x.0).collect()),
            disposed[i],
            disposed[i] / disposed[iptables],
        );
    }
}

fn main() {
    require_root();
    let rounds = env_or("WEIR_BENCH_ROUNDS", 5).max(1);
    let secs = env_or("WEIR_BENCH_SECS", 2.0);
    let clients = env_or("WEIR_BENCH_CLIENTS", 4).max(1);
    let d = Duration::from_secs_f64(secs);
    let parts = std::env::var("WEIR_BENCH_PARTS").unwrap_or_else(|_| "conns,flood".into());
    let parts: Vec<&str> = parts.split(',').map(str::trim).collect();
    if let Some(unknown) = parts.iter().find(|p| !["conns", "flood"].contains(p)) {
        panic!("WEIR_BENCH_PARTS: no part {unknown:?} (conns, flood)");
    }
    let part = |name: &str| parts.contains(&name);
    let started = Instant::now();
    eprintln!("nodeport: {rounds} rounds of {secs} s samples, {clients} external client hosts");

    let mut weir = Cluster::new(201, clients, Dataplane::Weir);
    let mut ipt = Cluster::new(202, clients, Dataplane::Iptables);
    let mut xdp = Cluster::new(203, clients, Dataplane::WeirXdp);
    weir.program_weir();
    xdp.program_weir();
    ipt.program_iptables();

    let cases: Vec<(Path, Variant)> = [Path::Local, Path::Remote]
        .iter()
        .flat_map(|&p| Variant::ALL.iter().map(move |&v| (p, v)))
        .collect();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); cases.len()];
    let conn_rounds = if part("conns") { rounds } else { 0 };
    for round in 0..conn_rounds {
        for k in 0..cases.len() {
            let i = (k + round) % cases.len();
            let (path, variant) = cases[i];
            let cluster = match variant {
                Variant::Iptables => &mut ipt,
                Variant::WeirXdp => &mut xdp,
                Variant::Direct | Variant::Weir => &mut weir,
                Variant::Ceiling => unreachable!("the ceiling is a flood's variant alone"),
            };
            let targets = cluster.targets(path, variant != Variant::Direct);
            let s = cluster.clients.sample(&targets, d);
            let want = if path == Path::Local { LOCAL_ID } else { REMOTE_ID };
            assert_eq!(
                s.hit[usize::from(want)],
                s.conns,
                "{path:?} {variant:?}: answered by the wrong backend"
            );
            eprintln!(
                "round {round}: {path:?} {variant:?}: {:.0} conn/s, {} errors",
                s.rate(),
                s.errors
            );
            samples[i].push(s);
        }
    }

    if part("conns") {
        conn_table(&cases, &samples);
    }
    if part("flood") {
        flood_table(rounds, d, &ipt, &weir, &xdp);
    }

    for (cluster, kind) in [(&weir, "TC"), (&xdp, "XDP")] {
        for (agent, node) in cluster._agents.iter().zip(["A", "B"]) {
            let m = agent.weirctl(&["metrics"]);
            println!(
                "\nWeir ({kind}) node {node}'s datapath counters after the run (`weirctl metrics`):\n\n```json\n{m:#}\n```"
            );
        }
    }
    eprintln!("nodeport: done in {:.0} s", started.elapsed().as_secs_f64());
}
