//! What the event stream costs new connections: tracing off (the default),
//! tracing on with a `weirctl monitor --trace` following, and, when given, a
//! build of the agent from before the datapath reported anything but policy
//! drops.
//!
//! A benchmark, not a test: it prints a markdown table and asserts nothing
//! about speed. Needs root. Run:
//!
//! ```text
//! cargo build --release --bins && cargo bench -p weir-tests --bench tracing
//! ```
//!
//! Setup. One lab node per agent build (this one; the baseline's with
//! `WEIR_BENCH_BASELINE_AGENT=PATH`, e.g. `weir-agent` built at `541a318`),
//! each with `WEIR_BENCH_CLIENTS` client pods and 4 server pods answering on
//! 8080 behind one ClusterIP Service, the servers isolated by a policy that
//! admits the clients: every new connection takes the load balancer's and
//! policy's new-flow paths, where the trace events are made.
//!
//! Method. Rounds of one sample per variant in a rotating order; a sample is
//! a fixed duration of back-to-back new TCP connections to the Service from
//! every client (`weir_lab::connrate`, ordinary clients). The `tracing on`
//! variant is this build's node with a monitor following while it runs (the
//! monitor started before and stopped after each of its samples). Reported:
//! the median rate per variant, its ratio to `tracing off`, min-max, and each
//! agent's RSS.
//!
//! Environment: `WEIR_BENCH_ROUNDS` (default 7), `WEIR_BENCH_SECS` (seconds
//! per sample, default 2), `WEIR_BENCH_CLIENTS` (default 4).

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4},
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::json;
use weir_lab::{
    Agent, Node, Pod,
    bench::{median, min_max},
    connrate::{Clients, Sample, Server},
    env_or, require_root,
    services::{self, Ep, ManifestDir},
};

const SERVERS: usize = 4;
const PORT: u16 = 8080;
const VIP: &str = "10.96.0.10";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Off,
    On,
    Baseline,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Off => "tracing off",
            Variant::On => "tracing on, a monitor following",
            Variant::Baseline => "baseline build (no trace code)",
        }
    }
}

struct Bed {
    node: Node,
    agent: Agent,
    _dir: ManifestDir,
    _clients: Vec<Pod>,
    _servers: Vec<Pod>,
    _listeners: Vec<Server>,
    load: Clients,
}

impl Bed {
    fn new(cidr: &str, clients: usize, binary: Option<&str>) -> Self {
        let dir = ManifestDir::new();
        let mut node = Node::new(cidr);
        let extra = binary.map(|b| vec![format!("bin:{b}")]).unwrap_or_default();
        let agent = node.start_agent_with_source_and(dir.path(), extra);
        let clients: Vec<Pod> = (0..clients)
            .map(|i| node.add_pod(&format!("client-{i}")))
            .collect();
        let servers: Vec<Pod> = (0..SERVERS)
            .map(|i| node.add_pod(&format!("server-{i}")))
            .collect();
        let listeners = servers
            .iter()
            .enumerate()
            .map(|(i, s)| Server::start(&s.ns, SocketAddr::new(s.ipv4(), PORT), i as u8))
            .collect();
        let mut objects = vec![
            services::service("web", VIP, &[services::port("http", 80, "8080", "TCP")]),
            services::slice(
                "web-1",
                "web",
                node.name(),
                &[("http", PORT, "TCP")],
                &servers.iter().map(|s| Ep::ready(s.ipv4())).collect::<Vec<_>>(),
            ),
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": { "name": "servers", "namespace": "default" },
                "spec": {
                    "podSelector": { "matchLabels": { "app": "server" } },
                    "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "role": "client" } } }] }],
                },
            }),
        ];
        for (i, c) in clients.iter().enumerate() {
            objects.push(pod(
                &format!("client-{i}"),
                json!({ "role": "client" }),
                c.ipv4(),
                node.name(),
            ));
        }
        for (i, s) in servers.iter().enumerate() {
            objects.push(pod(
                &format!("server-{i}"),
                json!({ "app": "server" }),
                s.ipv4(),
                node.name(),
            ));
        }
        dir.write("bench.yaml", &objects);
        let load = Clients::new(&clients.iter().map(|p| &p.ns).collect::<Vec<_>>());
        Self {
            node,
            agent,
            _dir: dir,
            _clients: clients,
            _servers: servers,
            _listeners: listeners,
            load,
        }
    }

    fn sample(&mut self, d: Duration) -> Sample {
        let vip: std::net::Ipv4Addr = VIP.parse().expect("VIP");
        self.load.sample(&[SocketAddrV4::new(vip, 80)], d)
    }
}

fn pod(name: &str, labels: serde_json::Value, ip: IpAddr, node: &str) -> serde_json::Value {
    services::pod("default", name, labels, node, &[ip], json!([]))
}

fn main() {
    require_root();
    let rounds = env_or("WEIR_BENCH_ROUNDS", 7).max(1);
    let secs = env_or("WEIR_BENCH_SECS", 2.0);
    let clients = env_or("WEIR_BENCH_CLIENTS", 4).max(1);
    let baseline = std::env::var("WEIR_BENCH_BASELINE_AGENT").ok();
    let started = Instant::now();
    eprintln!("tracing: {rounds} rounds of {secs} s samples, {clients} client threads");
    let mut beds = vec![Bed::new("10.246.1.0/24", clients, None)];
    let mut variants = vec![Variant::Off, Variant::On];
    if let Some(b) = &baseline {
        beds.push(Bed::new("10.246.2.0/24", clients, Some(b)));
        variants.push(Variant::Baseline);
    }
    let bed_of = |v: Variant| usize::from(v == Variant::Baseline);

    // Every node serves through its Service and policy before anything is timed.
    for bed in &mut beds {
        let t0 = Instant::now();
        loop {
            let s = bed.sample(Duration::from_millis(300));
            if s.conns > 0 && s.errors == 0 && s.backends_hit() == SERVERS {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "a node does not serve: {s:?}"
            );
        }
    }

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        for k in 0..variants.len() {
            let i = (k + round) % variants.len();
            let v = variants[i];
            let bed = &mut beds[bed_of(v)];
            let mut monitor = (v == Variant::On).then(|| bed.agent.monitor_to(&["--trace"], Stdio::null()));
            samples[i].push(bed.sample(Duration::from_secs_f64(secs)));
            if let Some(m) = monitor.as_mut() {
                let _ = m.child.kill();
                let _ = m.child.wait();
                // The next sample starts with tracing off again.
                let t0 = Instant::now();
                while bed.agent.tracing() && t0.elapsed() < Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    println!(
        "## Tracing: new TCP connections/s to a ClusterIP with policy ({rounds} rounds of {secs} s, {clients} clients, {SERVERS} servers, medians)\n"
    );
    println!("| Variant | conn/s | ratio to tracing off | min-max conn/s | errors |");
    println!("|---|---:|---:|---:|---:|");
    let rates: Vec<Vec<f64>> = samples
        .iter()
        .map(|s| s.iter().map(Sample::rate).collect())
        .collect();
    let base = median(&rates[0]);
    for (i, v) in variants.iter().enumerate() {
        let (lo, hi) = min_max(&rates[i]);
        let errors: u64 = samples[i].iter().map(|x| x.errors).sum();
        println!(
            "| {} | {:.0} | {:.2} | {lo:.0}-{hi:.0} | {errors} |",
            v.label(),
            median(&rates[i]),
            median(&rates[i]) / base
        );
    }
    println!("\nPer-round rates:\n");
    for (i, v) in variants.iter().enumerate() {
        let r: Vec<String> = rates[i].iter().map(|x| format!("{x:.0}")).collect();
        println!("- {}: {}", v.label(), r.join(", "));
    }
    println!("\nAgent RSS (MiB, now / peak):\n");
    for (bed, label) in beds.iter().zip(["this build", "baseline build"]) {
        let (rss, hwm) = bed.agent.rss_kib();
        println!(
            "- {label} ({}): {:.1} / {:.1}",
            bed.node.name(),
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }
    eprintln!("tracing: done in {:.0} s", started.elapsed().as_secs_f64());
}
