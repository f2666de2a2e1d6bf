//! Pods' new connections to the internet: Weir's eBPF masquerade against
//! iptables' `MASQUERADE` on the same kind of node, and the same path without
//! any translation (the ceiling).
//!
//! A benchmark, not a test: it prints markdown tables and asserts nothing about
//! speed. Needs root. Run (the bench finds `weir-agent`, `weirctl` and `weir-cni`
//! next to its own executable, i.e. in `target/release`, or in `$WEIR_BIN_DIR`):
//!
//! ```text
//! cargo build --release --bins && cargo bench -p weir-tests --bench masquerade
//! ```
//!
//! Setup. Two one-node clusters, each on its own underlay with a router to an
//! internet host ([`weir_lab::internet`]; the router also routes the pod CIDR,
//! for the untranslated variant). The Weir node runs its agent with
//! `--masquerade=true` and 192.0.2.11 excepted (`--non-masquerade-cidrs`); the
//! iptables node runs its agent with `--masquerade=false` and
//! `iptables -t nat -A POSTROUTING -s POD_CIDR -d 192.0.2.10 -j MASQUERADE`.
//! Each node has client pods (one thread each); the internet host serves on
//! 192.0.2.10 (masqueraded) and 192.0.2.11 (untranslated).
//!
//! Measured: new TCP connections per second from the pods, by an ordinary
//! client (kernel-chosen source ports; connect, a 3-byte request, a 1-byte
//! answer, close), in rounds of one sample per variant in a rotating order;
//! medians are reported, with the Weir agent's RSS.
//!
//! Environment: `WEIR_BENCH_ROUNDS` (default 5), `WEIR_BENCH_SECS` (seconds per
//! sample, default 2), `WEIR_BENCH_CLIENTS` (client pods per node, default 2).

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use weir_lab::{
    Agent, Node, Pod,
    connrate::{Sample, Server, median_rate},
    env_or,
    internet::{self, Internet},
    require_root,
    services::{ManifestDir, node_object},
    underlay::Underlay,
};

const PORT: u16 = 8080;
const TIMEOUT: Duration = Duration::from_secs(2);

struct Cluster {
    _servers: Vec<Server>,
    pods: Vec<Pod>,
    agent: Agent,
    internet: Internet,
    _dir: ManifestDir,
    node: Node,
    _underlay: Underlay,
}

impl Cluster {
    fn new(n: u8, clients: usize, weir_masquerade: bool) -> Self {
        let underlay = Underlay::new(n);
        let mut node = Node::new(&format!("10.{n}.1.0/24"));
        let ips = underlay.plug_nodes(&[&node]);
        let internet = Internet::new(&underlay, &[&node]);
        internet.route_pods(&[&node], &ips);
        let dir = ManifestDir::new();
        dir.write(
            "nodes.yaml",
            &[node_object(node.name(), &[&node.pod_cidr()], &ips)],
        );
        let flags = if weir_masquerade {
            vec![
                "--masquerade=true".to_owned(),
                format!("--non-masquerade-cidrs={}/32", internet::HOST2),
            ]
        } else {
            vec!["--masquerade=false".to_owned()]
        };
        let agent = node.start_agent_with_source_and(dir.path(), flags);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !agent.log_text().contains("masquerade exceptions written") {
            assert!(Instant::now() < deadline, "no masquerade exceptions written");
            std::thread::sleep(Duration::from_millis(100));
        }
        if !weir_masquerade {
            node.ns.sh(&format!(
                "iptables -t nat -A POSTROUTING -s {} -d {}/32 -j MASQUERADE",
                node.pod_cidr(),
                internet::HOST
            ));
        }
        let pods: Vec<Pod> = (0..clients).map(|i| node.add_pod(&format!("c{i}"))).collect();
        let servers = [internet::HOST, internet::HOST2]
            .iter()
            .map(|ip| {
                Server::start(
                    &internet.host,
                    SocketAddr::new(ip.parse().expect("address"), PORT),
                    0,
                )
            })
            .collect();
        Self {
            _servers: servers,
            pods,
            agent,
            internet,
            _dir: dir,
            node,
            _underlay: underlay,
        }
    }

    /// What the kernels counted: the server's SYNs refused in TIME_WAIT
    /// (PAWS: another client's timestamps on a recycled tuple), and the
    /// clients' SYN retransmissions (each a connection that waited a second).
    fn kernel_counters(&self) -> [u64; 2] {
        let paws = self.internet.host.nstat("TcpExtPAWSTimewait");
        let retrans = self.pods.iter().map(|p| p.ns.nstat("TcpExtTCPSynRetrans")).sum();
        [paws, retrans]
    }

    /// Back-to-back connections from every pod to `to` for `d`.
    fn sample(&self, to: &str, d: Duration) -> Sample {
        let to = SocketAddr::new(to.parse::<IpAddr>().expect("address"), PORT);
        let barrier = Arc::new(Barrier::new(self.pods.len()));
        let threads: Vec<_> = self
            .pods
            .iter()
            .map(|pod| {
                let barrier = barrier.clone();
                pod.ns.spawn(move || {
                    let mut s = Sample::default();
                    barrier.wait();
                    let t0 = Instant::now();
                    while t0.elapsed() < d {
                        match connect_once(to) {
                            Ok(()) => s.conns += 1,
                            Err(_) => s.errors += 1,
                        }
                    }
                    s.secs = t0.elapsed().as_secs_f64();
                    s
                })
            })
            .collect();
        let mut total = Sample::default();
        for t in threads {
            let s = t.join().expect("client thread");
            total.conns += s.conns;
            total.errors += s.errors;
            total.secs = total.secs.max(s.secs);
        }
        total
    }
}

/// An ordinary client's connection: the kernel picks the source port; a
/// request, the answer, close.
fn connect_once(to: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&to, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.write_all(b"hi\n")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Direct,
    Weir,
    Iptables,
}

impl Variant {
    const ALL: [Self; 3] = [Self::Direct, Self::Weir, Self::Iptables];

    fn label(self) -> &'static str {
        match self {
            Self::Direct => "untranslated (pod address, routed back)",
            Self::Weir => "Weir eBPF masquerade",
            Self::Iptables => "iptables MASQUERADE (Weir --masquerade=false)",
        }
    }
}

fn main() {
    require_root();
    let rounds = env_or("WEIR_BENCH_ROUNDS", 5).max(1);
    let secs = env_or("WEIR_BENCH_SECS", 2.0);
    let clients = env_or("WEIR_BENCH_CLIENTS", 2).max(1);
    let d = Duration::from_secs_f64(secs);
    let started = Instant::now();
    eprintln!("masquerade: {rounds} rounds of {secs} s samples, {clients} client pods per node");

    let weir = Cluster::new(211, clients, true);
    let ipt = Cluster::new(212, clients, false);
    let (rss0, _) = weir.agent.rss_kib();

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); Variant::ALL.len()];
    let mut kernel = [[0u64; 2]; Variant::ALL.len()];
    for round in 0..rounds {
        for k in 0..Variant::ALL.len() {
            let i = (k + round) % Variant::ALL.len();
            let variant = Variant::ALL[i];
            let (cluster, to) = match variant {
                // The untranslated path on the Weir node (192.0.2.11 is excepted).
                Variant::Direct => (&weir, internet::HOST2),
                Variant::Weir => (&weir, internet::HOST),
                Variant::Iptables => (&ipt, internet::HOST),
            };
            let before = cluster.kernel_counters();
            let s = cluster.sample(to, d);
            let after = cluster.kernel_counters();
            let [paws, retrans] = [0, 1].map(|j| after[j] - before[j]);
            kernel[i][0] += paws;
            kernel[i][1] += retrans;
            eprintln!(
                "round {round}: {variant:?}: {:.0} conn/s, {} errors, {paws} SYNs refused in TIME_WAIT (PAWS), {retrans} SYNs retransmitted",
                s.rate(),
                s.errors
            );
            samples[i].push(s);
        }
    }
    let (rss1, hwm) = weir.agent.rss_kib();

    println!("\n### Pods to the internet: new TCP connections per second\n");
    println!(
        "| variant | conn/s | min-max | / untranslated | / iptables | errors | SYNs refused by PAWS | SYNs retransmitted |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let direct = median_rate(&samples[0]);
    let iptables = median_rate(&samples[2]);
    for (i, variant) in Variant::ALL.iter().enumerate() {
        let rates: Vec<f64> = samples[i].iter().map(Sample::rate).collect();
        let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rates.iter().copied().fold(0.0, f64::max);
        let m = median_rate(&samples[i]);
        let errors: u64 = samples[i].iter().map(|s| s.errors).sum();
        println!(
            "| {} | {m:.0} | {lo:.0}-{hi:.0} | {:.2} | **{:.2}** | {errors} | {} | {} |",
            variant.label(),
            m / direct,
            m / iptables,
            kernel[i][0],
            kernel[i][1],
        );
    }
    println!(
        "\nWeir agent RSS: {} MiB before the run, {} MiB after, peak {} MiB.",
        rss0 / 1024,
        rss1 / 1024,
        hwm / 1024
    );
    let masq = weir
        .agent
        .weirctl(&["conntrack"])
        .as_array()
        .map_or(0, |rows| rows.len());
    println!("Weir conntrack entries at the end: {masq}.");
    let m = weir.agent.weirctl(&["metrics"]);
    println!("\nWeir's datapath counters after the run (`weirctl metrics`):\n\n```json\n{m:#}\n```");
    let _ = &weir.node;
    let _ = &ipt.node;
    eprintln!("masquerade: done in {:.0} s", started.elapsed().as_secs_f64());
}
