//! NetworkPolicy: what enforcement costs new connections, and how soon a change
//! takes effect.
//!
//! A benchmark, not a test: it prints markdown tables and asserts nothing about
//! speed. Needs root. Run:
//!
//! ```text
//! cargo build --release --bins && cargo bench -p weir-tests --bench policy
//! ```
//!
//! Setup. Three lab nodes, each with its own agent, `WEIR_BENCH_CLIENTS` client
//! pods (`role: client`) and 4 server pods (`app: server`) answering on 8080, all
//! in namespace `bench`. They differ only in the policies of the namespace:
//! - `no policy`: none (the servers are not isolated);
//! - `1 policy`: one policy isolating the servers for ingress and admitting the
//!   clients on TCP 8080;
//! - `1,000 policies`: that one plus 999 more selecting the servers, each
//!   admitting another /24 (an `ipBlock`) on another port: the servers' rules and
//!   the ipcache hold about a thousand entries each.
//!
//! Method. Rounds of one sample per node in a rotating order; a sample is a fixed
//! duration of back-to-back new TCP connections (connect, request, answer,
//! close) from every client to the servers in turn (`weir_lab::connrate`).
//! Reported: the median rate per variant and its ratio to `no policy`.
//!
//! Then the time for a change to take effect, on the `1 policy` and
//! `1,000 policies` nodes: from the rename of the changed manifest (the 999
//! other policies sit in a file of their own, written once) into the agent's
//! source directory until a fresh connection attempt (every 2 ms, each with a
//! 5 ms connect timeout) shows the new verdict: the allowing policy removed
//! (denied) and put back (allowed), and the client's label changed so that it
//! is no longer, then again, an admitted peer.
//!
//! Environment: `WEIR_BENCH_ROUNDS` (default 7), `WEIR_BENCH_SECS` (seconds per
//! sample, default 2), `WEIR_BENCH_CLIENTS` (default 4), `WEIR_BENCH_CHANGES`
//! (changes of each kind, default 6).

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use weir_lab::{
    Agent, Node, Pod,
    connrate::{Clients, Sample, Server, median_rate},
    env_or, require_root,
    services::{self, ManifestDir},
};

const SERVERS: usize = 4;
const PORT: u16 = 8080;
const NS: &str = "bench";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    None,
    One,
    Thousand,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::None, Variant::One, Variant::Thousand];

    fn label(self) -> &'static str {
        match self {
            Variant::None => "no policy",
            Variant::One => "1 policy",
            Variant::Thousand => "1,000 policies",
        }
    }
}

struct Bed {
    variant: Variant,
    node: Node,
    agent: Agent,
    dir: ManifestDir,
    clients: Vec<Pod>,
    servers: Vec<Pod>,
    _listeners: Vec<Server>,
    load: Clients,
}

impl Bed {
    fn new(variant: Variant, cidr: &str, clients: usize) -> Self {
        let dir = ManifestDir::new();
        let mut node = Node::new(cidr);
        let agent = node.start_agent_with_source(dir.path());
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
        let load = Clients::new(&clients.iter().map(|p| &p.ns).collect::<Vec<_>>());
        let bed = Self {
            variant,
            node,
            agent,
            dir,
            clients,
            servers,
            _listeners: listeners,
            load,
        };
        bed.write_others();
        bed.write(true, "client");
        bed
    }

    fn targets(&self) -> Vec<SocketAddrV4> {
        self.servers
            .iter()
            .map(|s| match s.ipv4() {
                IpAddr::V4(v4) => SocketAddrV4::new(v4, PORT),
                IpAddr::V6(_) => unreachable!("IPv4 lab"),
            })
            .collect()
    }

    /// The namespace, its pods (the first client labelled `role: first_role`, the
    /// others `role: client`) and the variant's policies (`allow`: with the one
    /// admitting the clients).
    fn write(&self, allow: bool, first_role: &str) {
        let mut objects = vec![json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": NS, "labels": { "kubernetes.io/metadata.name": NS } },
        })];
        for (i, c) in self.clients.iter().enumerate() {
            let role = if i == 0 { first_role } else { "client" };
            objects.push(pod(
                &format!("client-{i}"),
                json!({ "role": role }),
                c.ipv4(),
                self.node.name(),
            ));
        }
        for (i, s) in self.servers.iter().enumerate() {
            objects.push(pod(
                &format!("server-{i}"),
                json!({ "app": "server" }),
                s.ipv4(),
                self.node.name(),
            ));
        }
        if self.variant != Variant::None {
            // Isolates the servers whatever else is there.
            objects.push(policy(
                "isolate",
                json!({ "podSelector": { "matchLabels": { "app": "server" } } }),
            ));
            if allow {
                objects.push(policy(
                    "allow-clients",
                    json!({
                        "podSelector": { "matchLabels": { "app": "server" } },
                        "ingress": [{
                            "from": [{ "podSelector": { "matchLabels": { "role": "client" } } }],
                            "ports": [{ "port": PORT }],
                        }],
                    }),
                ));
            }
        }
        self.dir.write("bench.yaml", &objects);
    }

    /// The 999 other policies of the `1,000 policies` node, in a file of their
    /// own: written once, as an API server would not resend them with each
    /// change (the directory source re-reads only the files that change).
    fn write_others(&self) {
        let mut objects = Vec::new();
        if self.variant == Variant::Thousand {
            for i in 0..999u32 {
                objects.push(policy(
                    &format!("other-{i}"),
                    json!({
                        "podSelector": { "matchLabels": { "app": "server" } },
                        "ingress": [{
                            "from": [{ "ipBlock": { "cidr": format!("10.{}.{}.0/24", 100 + i / 256, i % 256) } }],
                            "ports": [{ "port": 9000 + i, "protocol": if i % 2 == 0 { "TCP" } else { "UDP" } }],
                        }],
                    }),
                ));
            }
        }
        self.dir.write("others.yaml", &objects);
    }

    fn sample(&mut self, d: Duration) -> Sample {
        let targets = self.targets();
        self.load.sample(&targets, d)
    }

    /// Whether a fresh connection from the first client to the first server
    /// gets through within 5 ms.
    fn attempt(&self) -> bool {
        let to = SocketAddr::new(self.servers[0].ipv4(), PORT);
        self.clients[0]
            .ns
            .run(move || TcpStream::connect_timeout(&to, Duration::from_millis(5)).is_ok())
    }

    /// Writes a change, then times how long until attempts show `want`.
    fn time_change(&self, allow: bool, first_role: &str, want: bool) -> Duration {
        let t0 = Instant::now();
        self.write(allow, first_role);
        loop {
            if self.attempt() == want {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{}: change never took effect:\n{}",
                self.variant.label(),
                self.agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn pod(name: &str, labels: Value, ip: IpAddr, node: &str) -> Value {
    services::pod(NS, name, labels, node, &[ip], json!([]))
}

fn policy(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": { "name": name, "namespace": NS },
        "spec": spec,
    })
}

fn main() {
    require_root();
    let rounds = env_or("WEIR_BENCH_ROUNDS", 7).max(1);
    let secs = env_or("WEIR_BENCH_SECS", 2.0);
    let clients = env_or("WEIR_BENCH_CLIENTS", 4).max(1);
    let changes = env_or("WEIR_BENCH_CHANGES", 6);
    let started = Instant::now();
    eprintln!(
        "policy: {rounds} rounds of {secs} s samples, {clients} client threads, {changes} changes of each kind"
    );
    let mut beds: Vec<Bed> = Variant::ALL
        .iter()
        .enumerate()
        .map(|(i, v)| Bed::new(*v, &format!("10.245.{}.0/24", i + 1), clients))
        .collect();

    // Every node works (the policies are in force) before anything is timed.
    for bed in &mut beds {
        let t0 = Instant::now();
        loop {
            let s = bed.sample(Duration::from_millis(300));
            if s.conns > 0 && s.errors == 0 && s.backends_hit() == SERVERS {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{} does not work: {s:?}",
                bed.variant.label()
            );
        }
    }

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); beds.len()];
    for round in 0..rounds {
        for k in 0..beds.len() {
            let i = (k + round) % beds.len();
            samples[i].push(beds[i].sample(Duration::from_secs_f64(secs)));
        }
    }

    // Changes: the allowing policy removed and restored, the client relabelled.
    let mut change_rows = Vec::new();
    for bed in beds.iter().filter(|b| b.variant != Variant::None) {
        let mut kinds: [(&str, Vec<Duration>); 4] = [
            ("policy removed: denied", Vec::new()),
            ("policy added: allowed", Vec::new()),
            ("pod relabelled: denied", Vec::new()),
            ("pod relabelled: allowed", Vec::new()),
        ];
        for _ in 0..changes {
            kinds[0].1.push(bed.time_change(false, "client", false));
            kinds[1].1.push(bed.time_change(true, "client", true));
            kinds[2].1.push(bed.time_change(true, "other", false));
            kinds[3].1.push(bed.time_change(true, "client", true));
        }
        let sync_ms: Vec<f64> = bed
            .agent
            .log_text()
            .lines()
            .filter(|l| l.contains("policies synced"))
            .filter_map(|l| l.split("policy_ms=\"").nth(1)?.split('"').next()?.parse().ok())
            .collect();
        change_rows.push((bed.variant.label(), kinds, sync_ms));
    }

    println!(
        "## NetworkPolicy: new TCP connections/s ({rounds} rounds of {secs} s, {clients} clients, {SERVERS} servers, medians)\n"
    );
    println!("| Variant | conn/s | ratio to no policy | errors |");
    println!("|---|---:|---:|---:|");
    let base = median_rate(&samples[0]);
    for (bed, s) in beds.iter().zip(&samples) {
        let rate = median_rate(s);
        let errors: u64 = s.iter().map(|x| x.errors).sum();
        println!(
            "| {} | {rate:.0} | {:.2} | {errors} |",
            bed.variant.label(),
            rate / base
        );
    }
    println!("\nPer-round rates:\n");
    for (bed, s) in beds.iter().zip(&samples) {
        let rates: Vec<String> = s.iter().map(|x| format!("{:.0}", x.rate())).collect();
        println!("- {}: {}", bed.variant.label(), rates.join(", "));
    }
    println!(
        "\n## Time for a change to take effect (rename to first connection with the new verdict; medians, max)\n"
    );
    println!("| Node | change | median ms | max ms |");
    println!("|---|---|---:|---:|");
    for (label, kinds, _) in &change_rows {
        for (kind, d) in kinds {
            let mut d = d.clone();
            d.sort();
            let med = d.get(d.len() / 2).copied().unwrap_or_default();
            let max = d.last().copied().unwrap_or_default();
            println!(
                "| {label} | {kind} | {:.1} | {:.1} |",
                med.as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3
            );
        }
    }
    println!("\nWhat each agent holds (its last `policies synced` line):\n");
    for bed in &beds {
        let log = bed.agent.log_text();
        let last = log
            .lines()
            .rev()
            .find(|l| l.contains("policies synced"))
            .unwrap_or("-");
        let fields: Vec<&str> = last
            .split_whitespace()
            .filter(|f| {
                ["endpoints=", "identities=", "rules="]
                    .iter()
                    .any(|k| f.starts_with(k))
            })
            .collect();
        println!("- {}: {}", bed.variant.label(), fields.join(" "));
    }
    println!("\nAgent compile + sync per change (`policy_ms` in its log, median):\n");
    for (label, _, ms) in &change_rows {
        let mut ms = ms.clone();
        ms.sort_by(f64::total_cmp);
        println!(
            "- {label}: {:.2} ms over {} syncs",
            ms.get(ms.len() / 2).copied().unwrap_or(f64::NAN),
            ms.len()
        );
    }
    eprintln!("policy: done in {:.0} s", started.elapsed().as_secs_f64());
}
