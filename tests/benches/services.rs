//! ClusterIP Services: Weir's eBPF datapath against kube-proxy's iptables and
//! nftables rules, at 1, 1,000 and 10,000 Services of 10 endpoints each.
//!
//! A benchmark, not a test: it prints markdown tables and asserts nothing about speed.
//! Needs root. Run (the bench looks for `weir-agent`, `weirctl` and `weir-cni` next to
//! its own executable, i.e. in `target/release`, or in `$WEIR_BIN_DIR`):
//!
//! ```text
//! cargo build --release --bins && cargo bench -p weir-tests --bench services
//! ```
//!
//! What is measured:
//!
//! 1. New TCP connections per second from a client pod (connect, a 3-byte request, a
//!    1-byte answer, close), to a pod IP (`direct`, the ceiling), to a Weir ClusterIP,
//!    and to the same ClusterIP translated by kube-proxy-shaped iptables rules and by
//!    kube-proxy-shaped nftables rules ([`weir_lab::kube_proxy`]).
//! 2. Time to program the Services from empty: Weir (manifests renamed into the
//!    agent's source directory until the agent logs the sync), `iptables-restore`
//!    and `nft -f` of the equivalent rules.
//! 3. Weir only: time from an EndpointSlice change (the file renamed into place) until
//!    a fresh connection reaches the new backend.
//! 4. Weir only, last for each size: time from the agent's restart (killed, started
//!    again) until it logs its first sync, and from removing the manifests until
//!    it logs the sync that emptied the maps.
//!
//! Setup. Three lab nodes, each with one client pod per client thread and 10 backend
//! pods wired by `weir-cni`; every backend answers on port 8080 with its index
//! (0..=9), backend 0 also on 8081 as index 10 (the target of the endpoint change).
//! The measured Service sits in the middle of the list (kube-proxy writes
//! `KUBE-SERVICES` in map order: the middle is the average case) and has the 10
//! backends as endpoints; the other Services have 10 endpoints each at addresses
//! that exist nowhere (they are never hit; they make the maps and rule sets big).
//! Node `weir` runs the agent with `--source dir:`; nodes `iptables` and `nftables`
//! have no agent (their pods' host veths carry no programs, so only netfilter
//! translates), each with its rules in its own network namespace.
//!
//! Method. For each size, the three are programmed from empty (timed), then rounds of
//! one sample per variant in a rotating order; a sample is a fixed duration of
//! back-to-back connections from every client thread, counting the completed ones.
//! Clients close with `SO_LINGER` 0 (an RST: no TIME_WAIT) and are ordinary: the
//! kernel picks their source ports, and reuses one within seconds, while Weir's
//! conntrack still holds the closed flow, whose entry a new connection's SYN then
//! meets (and starts over), as real clients' do. `WEIR_BENCH_CLIENT=spread` binds
//! the ports instead, none reused within 12 s: each connection a tuple never seen
//! (the method of the runs before 2026-12-05's second session).
//!
//! Environment: `WEIR_BENCH_SIZES` (default `1,1000,10000`), `WEIR_BENCH_ROUNDS`
//! (default 5), `WEIR_BENCH_SECS` (seconds per sample, default 2), `WEIR_BENCH_CLIENTS`
//! (client threads, one client pod each, default 4: one client address stays under
//! 5,400 connections/s with the 12 s rule), `WEIR_BENCH_CHANGES` (endpoint changes per
//! size, default 4), `WEIR_BENCH_IPTABLES` (the restore binary, default
//! `iptables-restore`; `iptables-legacy-restore` for the legacy backend),
//! `WEIR_BENCH_IPTABLES_NOFLUSH=1` (pass `--noflush`), `WEIR_BENCH_AGENT_FLAGS` (more
//! flags for the agent, e.g. `--preallocate-bpf-maps`), `WEIR_BENCH_VARIANTS` (a subset
//! of `direct,weir,iptables,nftables`, `direct` first; without `weir`, `direct` runs on
//! a node without agent), `WEIR_BENCH_JSON` (a file, or a directory that gets
//! `services.jsonl`: one JSON record per variant, size and metric, appended as each
//! size is measured; see [`weir_lab::bench_json`]).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    process::Command,
    time::{Duration, Instant},
};

use weir_lab::{
    Agent, Node, Pod, TempDir,
    bench_json::{Record, Sink, Stats},
    connrate::{Clients, Sample, Server, connect_once, median_rate},
    env_or,
    kube_proxy::{Service, ServiceSet},
    require_root,
    services::ManifestDir,
};

const BACKENDS: usize = 10;
const PORT: u16 = 8080;
/// Backend 0's second port: the endpoint-change target.
const ALT_PORT: u16 = 8081;
const ALT_ID: u8 = BACKENDS as u8;
const CLUSTER_CIDR: &str = "10.244.0.0/16";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Direct,
    Weir,
    Iptables,
    Nftables,
}

impl Variant {
    const ALL: [Self; 4] = [Self::Direct, Self::Weir, Self::Iptables, Self::Nftables];

    fn parse(s: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|v| v.name() == s.trim())
            .unwrap_or_else(|| {
                panic!("WEIR_BENCH_VARIANTS: unknown variant {s:?} (direct, weir, iptables, nftables)")
            })
    }

    /// The name `WEIR_BENCH_VARIANTS` and the JSON records use.
    fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Weir => "weir",
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct (pod IPs)",
            Self::Weir => "Weir ClusterIP",
            Self::Iptables => "iptables ClusterIP",
            Self::Nftables => "nftables ClusterIP",
        }
    }
}

fn main() {
    require_root();
    let sizes: Vec<usize> = std::env::var("WEIR_BENCH_SIZES")
        .unwrap_or_else(|_| "1,1000,10000".to_owned())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("WEIR_BENCH_SIZES: {s:?} is not a number"))
        })
        .collect();
    let rounds = env_or("WEIR_BENCH_ROUNDS", 5).max(1);
    let secs = env_or("WEIR_BENCH_SECS", 2.0);
    let clients = env_or("WEIR_BENCH_CLIENTS", 4).max(1);
    let changes = env_or("WEIR_BENCH_CHANGES", 4);
    let iptables = std::env::var("WEIR_BENCH_IPTABLES").unwrap_or_else(|_| "iptables-restore".to_owned());
    let noflush = std::env::var_os("WEIR_BENCH_IPTABLES_NOFLUSH").is_some_and(|v| v == "1");
    let variants: Vec<Variant> = std::env::var("WEIR_BENCH_VARIANTS").map_or_else(
        |_| Variant::ALL.to_vec(),
        |v| v.split(',').map(Variant::parse).collect(),
    );
    assert_eq!(
        variants.first(),
        Some(&Variant::Direct),
        "WEIR_BENCH_VARIANTS starts with direct (the ratios' base)"
    );
    let with_weir = variants.contains(&Variant::Weir);
    let sample = Duration::from_secs_f64(secs);
    let started = Instant::now();
    let sink = Sink::from_env("services");

    eprintln!(
        "services: sizes {sizes:?}, {rounds} rounds of {secs} s samples, {clients} client threads, {changes} endpoint changes per size, {iptables}"
    );
    // Without the Weir variant, `direct` runs on a bare node (no agent, no rules).
    let mut weir = Bed::new("10.244.1.0/24", clients, with_weir);
    let mut ipt = Bed::new("10.244.2.0/24", clients, false);
    let mut nft = Bed::new("10.244.3.0/24", clients, false);
    let conntrack_max = ipt
        .node
        .ns
        .sh("cat /proc/sys/net/netfilter/nf_conntrack_max")
        .trim()
        .to_owned();

    let mut results = Vec::new();
    for &n in &sizes {
        let mut r = SizeResult {
            services: n,
            ..SizeResult::default()
        };

        // 1. Programming from empty.
        if with_weir {
            r.program_weir = Some(weir.program_weir(n));
        } else {
            weir.service_set(n);
        }
        if variants.contains(&Variant::Iptables) {
            r.program_ipt = Some(ipt.program_iptables(n, &iptables, noflush));
        }
        if variants.contains(&Variant::Nftables) {
            r.program_nft = Some(nft.program_nft(n));
        }
        eprintln!(
            "{n} services programmed: weir {:?} (agent sync_ms), {iptables} {:?}, nft -f {:?}",
            r.program_weir, r.program_ipt, r.program_nft
        );
        // Every variant works and spreads over every backend before anything is timed.
        for &v in &variants {
            let bed = bed_for(v, &mut weir, &mut ipt, &mut nft);
            let s = bed.sample_variant(v, Duration::from_millis(500));
            assert!(
                s.conns > 0 && s.errors == 0,
                "{} at {n} services does not work: {s:?}",
                v.label()
            );
            assert_eq!(s.backends_hit(), BACKENDS, "{}: {s:?}", v.label());
        }

        // 2. Endpoint changes (Weir).
        for i in 0..if with_weir { changes } else { 0 } {
            r.change.push(weir.change_endpoints(n, i % 2 == 0));
        }

        // 3. Connection rates, interleaved (the order rotates every round).
        // (Removal, Weir's last measure of a size, comes after them.)
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
        for round in 0..rounds {
            for k in 0..variants.len() {
                let i = (k + round) % variants.len();
                let v = variants[i];
                let bed = bed_for(v, &mut weir, &mut ipt, &mut nft);
                let s = bed.sample_variant(v, sample);
                if matches!(v, Variant::Iptables | Variant::Nftables) {
                    let count: u64 = bed
                        .node
                        .ns
                        .sh("cat /proc/sys/net/netfilter/nf_conntrack_count")
                        .trim()
                        .parse()
                        .unwrap_or(0);
                    r.conntrack_peak = r.conntrack_peak.max(count);
                }
                samples[i].push(s);
            }
        }
        eprintln!(
            "{n} services: rates {:?}",
            samples.iter().map(|s| median_rate(s) as u64).collect::<Vec<_>>()
        );
        r.samples = samples;
        // 4. The agent restarted under them, then everything removed (Weir).
        if with_weir {
            r.restart_weir = Some(weir.restart_weir(n));
            r.remove_weir = weir.remove_weir();
        }
        sink.write(&records(&sink, &r, &variants))
            .unwrap_or_else(|e| panic!("{}: {e:?}", weir_lab::bench_json::ENV));
        results.push(r);
    }
    let metrics = weir.agent.as_ref().map(|a| a.weirctl(&["metrics"]));

    print_report(
        &results,
        &variants,
        &iptables,
        rounds,
        secs,
        clients,
        &conntrack_max,
    );
    if let Some(m) = metrics {
        println!("\nWeir datapath counters after the run (`weirctl metrics`):\n\n```json\n{m:#}\n```");
    }
    eprintln!("services: done in {:.0} s", started.elapsed().as_secs_f64());
}

fn bed_for<'a>(v: Variant, weir: &'a mut Bed, ipt: &'a mut Bed, nft: &'a mut Bed) -> &'a mut Bed {
    match v {
        Variant::Direct | Variant::Weir => weir,
        Variant::Iptables => ipt,
        Variant::Nftables => nft,
    }
}

/// One size's figures as JSON records: each variant's connection rate, the
/// programming times (`program`; Weir's agent `sync_ms` as `map_sync`) and Weir's
/// endpoint changes (`endpoint_change`, `endpoint_change_synced`), as the tables show them.
fn records(sink: &Sink, r: &SizeResult, variants: &[Variant]) -> Vec<Record> {
    let size = Some(r.services as u64);
    let mut out = Vec::new();
    for (v, s) in variants.iter().zip(&r.samples) {
        let rates: Vec<f64> = s.iter().map(Sample::rate).collect();
        let stats = Stats::new(median_rate(s), &rates);
        out.push(sink.record(v.name(), size, "conn_rate", "conn/s", stats));
    }
    let programs = [
        ("weir", "program", r.program_weir.map(|p| p.0)),
        ("weir", "map_sync", r.program_weir.map(|p| p.1)),
        ("weir", "restart", r.restart_weir.map(|p| p.0)),
        ("weir", "restart_map_sync", r.restart_weir.map(|p| p.1)),
        ("weir", "remove", r.remove_weir.map(|p| p.0)),
        ("weir", "remove_map_sync", r.remove_weir.map(|p| p.1)),
        ("iptables", "program", r.program_ipt),
        ("nftables", "program", r.program_nft),
    ];
    for (variant, metric, d) in programs {
        if let Some(d) = d {
            out.push(sink.record(variant, size, metric, "ms", Stats::single(ms(d))));
        }
    }
    if !r.change.is_empty() {
        let seen: Vec<Duration> = r.change.iter().map(|c| c.0).collect();
        let synced: Vec<Duration> = r.change.iter().map(|c| c.1).collect();
        for (metric, d) in [("endpoint_change", seen), ("endpoint_change_synced", synced)] {
            let all: Vec<f64> = d.iter().copied().map(ms).collect();
            out.push(sink.record("weir", size, metric, "ms", Stats::new(ms(median(&d)), &all)));
        }
    }
    out
}

#[derive(Default)]
struct SizeResult {
    services: usize,
    /// Weir: (rename -> agent logged the sync, the agent's own `sync_ms`).
    program_weir: Option<(Duration, Duration)>,
    /// Weir: the agent killed and started again (start -> sync logged, `sync_ms`).
    restart_weir: Option<(Duration, Duration)>,
    /// Weir: every Service removed (remove -> sync logged, `sync_ms`).
    remove_weir: Option<(Duration, Duration)>,
    program_ipt: Option<Duration>,
    program_nft: Option<Duration>,
    /// Weir endpoint changes: (rename -> first connection to the new backend, rename -> sync logged).
    change: Vec<(Duration, Duration)>,
    samples: Vec<Vec<Sample>>,
    conntrack_peak: u64,
}

/// One lab node with its client and backend pods.
struct Bed {
    node: Node,
    agent: Option<Agent>,
    manifests: Option<ManifestDir>,
    state: TempDir,
    /// One client thread per client pod.
    load: Clients,
    _clients: Vec<Pod>,
    backends: Vec<Pod>,
    _servers: Vec<Server>,
    /// The measured Service (its endpoints are the real backends).
    measured: Option<Service>,
    /// Byte offset of the agent log already looked at.
    log_seen: usize,
}

impl Bed {
    fn new(pod_cidr: &str, clients: usize, with_agent: bool) -> Self {
        let mut node = Node::new(pod_cidr);
        let (agent, manifests) = if with_agent {
            let dir = ManifestDir::new();
            // More flags for the agent (e.g. `--preallocate-bpf-maps`), words
            // split on blanks.
            let flags = std::env::var("WEIR_BENCH_AGENT_FLAGS").unwrap_or_default();
            let flags = flags.split_whitespace().map(str::to_owned).collect();
            (
                Some(node.start_agent_with_source_and(dir.path(), flags)),
                Some(dir),
            )
        } else {
            (None, None)
        };
        let clients: Vec<Pod> = (0..clients)
            .map(|i| node.add_pod(&format!("client-{i}")))
            .collect();
        let backends: Vec<Pod> = (0..BACKENDS)
            .map(|i| node.add_pod(&format!("backend-{i}")))
            .collect();
        let mut servers = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            servers.push(Server::start(&b.ns, SocketAddr::new(b.ipv4(), PORT), i as u8));
        }
        servers.push(Server::start(
            &backends[0].ns,
            SocketAddr::new(backends[0].ipv4(), ALT_PORT),
            ALT_ID,
        ));
        Self {
            node,
            agent,
            manifests,
            state: TempDir::new("weir-bench-svc-"),
            load: Clients::new(&clients.iter().map(|p| &p.ns).collect::<Vec<_>>()),
            _clients: clients,
            backends,
            _servers: servers,
            measured: None,
            log_seen: 0,
        }
    }

    fn backend_addrs(&self, port: u16) -> Vec<SocketAddrV4> {
        self.backends
            .iter()
            .map(|b| SocketAddrV4::new(v4(b.ipv4()), port))
            .collect()
    }

    /// `n` synthetic Services, the middle one pointing at the real backends.
    fn service_set(&mut self, n: usize) -> ServiceSet {
        let mut set = ServiceSet::synthetic(n, BACKENDS, CLUSTER_CIDR);
        let mid = n / 2;
        set.services[mid].endpoints = self.backend_addrs(PORT);
        self.measured = Some(set.services[mid].clone());
        set
    }

    /// The pods' own addresses in turn (direct), or the measured ClusterIP.
    fn targets(&self, v: Variant) -> Vec<SocketAddrV4> {
        match v {
            Variant::Direct => self.backend_addrs(PORT),
            _ => {
                let m = self.measured.as_ref().expect("programmed");
                vec![SocketAddrV4::new(m.vip, m.port)]
            }
        }
    }

    fn sample_variant(&mut self, v: Variant, d: Duration) -> Sample {
        let targets = self.targets(v);
        self.load.sample(&targets, d)
    }

    /// Weir from empty: both manifest files removed (and that synced), then renamed in.
    /// Returns (rename -> sync logged, the agent's `sync_ms`).
    fn program_weir(&mut self, n: usize) -> (Duration, Duration) {
        let set = self.service_set(n);
        let dir = self.manifests.as_ref().expect("weir bed").path().to_owned();
        let (svc, slice) = (dir.join("services.yaml"), dir.join("measured.yaml"));
        self.remove_weir();
        // Every Service, and every slice but the measured one, in one file; the
        // measured slice alone in another (the endpoint change rewrites only it).
        let mid = n / 2;
        let mut text = String::with_capacity(n * 400);
        for (i, s) in set.services.iter().enumerate() {
            text.push_str(&if i == mid {
                s.service_manifest()
            } else {
                s.manifest()
            });
        }
        let (tmp_svc, tmp_slice) = (dir.join(".services.yaml.tmp"), dir.join(".measured.yaml.tmp"));
        std::fs::write(&tmp_svc, text).expect("write manifests");
        std::fs::write(&tmp_slice, set.services[mid].slice_manifest()).expect("write slice");
        let t0 = Instant::now();
        std::fs::rename(&tmp_slice, &slice).expect("rename");
        std::fs::rename(&tmp_svc, &svc).expect("rename");
        self.wait_synced(n, t0)
    }

    /// Weir's agent killed and started again under its `n` Services, as an
    /// upgrade does. Returns (the start -> its first sync logged, that sync's
    /// `sync_ms`: the maps read back and compared, nothing written).
    fn restart_weir(&mut self, n: usize) -> (Duration, Duration) {
        let name = self.node.name().to_owned();
        let agent = self.agent.as_mut().expect("weir bed");
        // Only what the new agent logs.
        self.log_seen = std::fs::metadata(&agent.log).map_or(0, |m| m.len() as usize);
        agent.kill();
        let t0 = Instant::now();
        agent.restart(&name);
        self.wait_synced(n, t0)
    }

    /// Weir to empty: both manifest files removed, if there. Returns (the
    /// first removal -> sync logged, the agent's `sync_ms`).
    fn remove_weir(&mut self) -> Option<(Duration, Duration)> {
        let dir = self.manifests.as_ref().expect("weir bed").path().to_owned();
        let (svc, slice) = (dir.join("services.yaml"), dir.join("measured.yaml"));
        if !svc.exists() && !slice.exists() {
            return None;
        }
        let t0 = Instant::now();
        let _ = std::fs::remove_file(&svc);
        let _ = std::fs::remove_file(&slice);
        Some(self.wait_synced(0, t0))
    }

    /// Waits for the agent's `services synced` line with `frontends=n`, after what
    /// was already seen; returns (since `t0`, the line's `sync_ms`).
    fn wait_synced(&mut self, n: usize, t0: Instant) -> (Duration, Duration) {
        let agent = self.agent.as_ref().expect("weir bed");
        let deadline = t0 + Duration::from_secs(120);
        loop {
            let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
            let fresh = &log[self.log_seen.min(log.len())..];
            // Only whole lines.
            let upto = fresh.rfind('\n').map_or(0, |i| i + 1);
            for line in fresh[..upto].lines() {
                if line.contains("services synced") && field(line, "frontends") == Some(n.to_string()) {
                    let elapsed = t0.elapsed();
                    self.log_seen += upto;
                    let sync_ms: f64 = field(line, "sync_ms")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(f64::NAN);
                    return (elapsed, Duration::from_secs_f64(sync_ms / 1e3));
                }
            }
            self.log_seen += upto;
            assert!(
                Instant::now() < deadline,
                "no sync of {n} services after 120 s:\n{}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Rewrites the measured slice: to backend 0's second port alone (`to_alt`) or
    /// back to the 10 backends; returns (rename -> a fresh connection reaches the new
    /// set, rename -> sync logged).
    fn change_endpoints(&mut self, n: usize, to_alt: bool) -> (Duration, Duration) {
        let mut m = self.measured.clone().expect("programmed");
        m.endpoints = if to_alt {
            vec![self.backend_addrs(ALT_PORT)[0]]
        } else {
            self.backend_addrs(PORT)
        };
        let dir = self.manifests.as_ref().expect("weir bed").path().to_owned();
        let tmp = dir.join(".measured.yaml.tmp");
        std::fs::write(&tmp, m.slice_manifest()).expect("write slice");
        let vip = SocketAddrV4::new(m.vip, m.port);
        let t0 = Instant::now();
        std::fs::rename(&tmp, dir.join("measured.yaml")).expect("rename");
        let seen = self.load.probe(move |ports| {
            let deadline = t0 + Duration::from_secs(60);
            while Instant::now() < deadline {
                let Some(port) = ports.take() else { continue };
                if connect_once(port, vip).is_ok_and(|id| (id == ALT_ID) == to_alt) {
                    return t0.elapsed();
                }
            }
            panic!("endpoint change not seen after 60 s");
        });
        let (synced, _) = self.wait_synced(n, t0);
        (seen, synced)
    }

    /// iptables from empty: the nat table flushed, then one `iptables-restore` of the
    /// whole table (`--noflush`, as kube-proxy passes it, with `noflush`: on an empty
    /// table the result is the same, but iptables-nft 1.8.9 takes 9x longer with it
    /// at 1,000 Services, and more at 10,000).
    fn program_iptables(&mut self, n: usize, restore: &str, noflush: bool) -> Duration {
        let save = restore.replace("-restore", "");
        self.node.ns.sh(&format!("{save} -t nat -F && {save} -t nat -X"));
        let file = self.state.join("iptables.rules");
        let rules = self.service_set(n).iptables_restore();
        std::fs::write(&file, rules).expect("write rules");
        let restore = restore.to_owned();
        self.node.ns.run(move || {
            let t0 = Instant::now();
            let mut cmd = Command::new(&restore);
            if noflush {
                cmd.arg("--noflush");
            }
            let out = cmd.arg(&file).output().expect("spawn iptables-restore");
            let t = t0.elapsed();
            assert!(
                out.status.success(),
                "{restore}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            t
        })
    }

    /// nftables from empty: table `ip kube-proxy` deleted, then one `nft -f`.
    fn program_nft(&mut self, n: usize) -> Duration {
        let _ = self.node.ns.exec(&["nft", "delete", "table", "ip", "kube-proxy"]);
        let file = self.state.join("kube-proxy.nft");
        let rules = self.service_set(n).nft_ruleset();
        std::fs::write(&file, rules).expect("write ruleset");
        self.node.ns.run(move || {
            let t0 = Instant::now();
            let out = Command::new("nft")
                .arg("-f")
                .arg(&file)
                .output()
                .expect("spawn nft");
            let t = t0.elapsed();
            assert!(
                out.status.success(),
                "nft -f: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            t
        })
    }
}

/// `key=value` (or `key="value"`) of a tracing line.
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"').to_owned())
}

fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => panic!("IPv4 expected"),
    }
}

fn print_report(
    results: &[SizeResult],
    variants: &[Variant],
    iptables: &str,
    rounds: usize,
    secs: f64,
    clients: usize,
    ct_max: &str,
) {
    println!(
        "\n### New TCP connections per second ({rounds} interleaved rounds of {secs} s samples, {clients} client threads; median, min-max)\n"
    );
    println!("| Services | variant | conn/s | min-max | / direct | errors | backends hit |");
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for r in results {
        let direct = median_rate(&r.samples[0]);
        for (v, s) in variants.iter().zip(&r.samples) {
            let rates: Vec<f64> = s.iter().map(Sample::rate).collect();
            let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = rates.iter().copied().fold(0.0, f64::max);
            let mut hit = [0u64; BACKENDS + 1];
            for x in s {
                for (a, b) in hit.iter_mut().zip(&x.hit) {
                    *a += b;
                }
            }
            let ratio = median_rate(s) / direct;
            let ratio = if *v == Variant::Direct {
                "1".to_owned()
            } else {
                format!("**{ratio:.2}**")
            };
            println!(
                "| {} | {} | {:.0} | {:.0}-{:.0} | {ratio} | {} | {}/{} |",
                r.services,
                v.label(),
                median_rate(s),
                lo,
                hi,
                s.iter().map(|x| x.errors).sum::<u64>(),
                hit.iter().filter(|&&c| c > 0).count(),
                BACKENDS,
            );
        }
    }
    let stalls: u64 = results
        .iter()
        .flat_map(|r| r.samples.iter().flatten())
        .map(|s| s.stalls)
        .sum();
    let ct_peak = results.iter().map(|r| r.conntrack_peak).max().unwrap_or(0);
    println!(
        "\nSource-port stalls (no port free of the 12 s rule): {stalls}; peak nf_conntrack_count on the netfilter nodes {ct_peak} of nf_conntrack_max {ct_max}."
    );

    println!("\n### Programming N Services x {BACKENDS} endpoints from empty (ms)\n");
    println!(
        "| Services | Weir: rename -> synced | Weir agent `sync_ms` (map writes) | `{iptables}` | `nft -f` | Weir: restarted -> synced | `sync_ms` | Weir: removed -> synced | `sync_ms` (map deletes) |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in results {
        let (w, s) = r.program_weir.unwrap_or_default();
        let (aw, as_) = r.restart_weir.unwrap_or_default();
        let (rw, rs) = r.remove_weir.unwrap_or_default();
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.services,
            ms(w),
            ms(s),
            ms(r.program_ipt.unwrap_or_default()),
            ms(r.program_nft.unwrap_or_default()),
            ms(aw),
            ms(as_),
            ms(rw),
            ms(rs)
        );
    }

    println!("\n### Weir: EndpointSlice change -> a fresh connection reaches the new backend (ms)\n");
    println!("| Services | changes | median | max | rename -> sync logged, median |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for r in results {
        if r.change.is_empty() {
            continue;
        }
        let seen: Vec<Duration> = r.change.iter().map(|c| c.0).collect();
        let synced: Vec<Duration> = r.change.iter().map(|c| c.1).collect();
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} |",
            r.services,
            seen.len(),
            ms(median(&seen)),
            ms(*seen.iter().max().expect("changes")),
            ms(median(&synced))
        );
    }
}

fn median(d: &[Duration]) -> Duration {
    let mut d = d.to_vec();
    d.sort_unstable();
    d[(d.len() - 1) / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
