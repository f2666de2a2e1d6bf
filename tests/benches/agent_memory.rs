//! The agent's memory holding a large cluster: 10,000 Services of 10 endpoints
//! each and 10,000 Pods (in 100 Namespaces), read from the API (`--source kube`,
//! the lab's API server: paged lists and watches over HTTPS) and from a manifest
//! directory (`--source dir:`), against the same agent with an empty cluster.
//!
//! A benchmark, not a test: it prints a markdown table and asserts nothing.
//! Needs root. Run (release binaries, found as the other benchmarks find them):
//!
//! ```text
//! cargo build --release --bins && cargo bench -p weir-tests --bench agent_memory
//! ```
//!
//! Method. Each round starts one agent per variant, in a rotating order, on a
//! fresh lab node; once it is ready (every kind listed, the maps synced) and 2 s
//! more, its `VmRSS` (resident now) and `VmHWM` (the peak, during the first list
//! and compile) are read from `/proc`, with the two parts of `VmRSS`:
//! anonymous (`RssAnon`: heap, stacks) and file-backed (`RssFile`: the
//! binary's pages read in, about 17 MiB of its 30 MB, which the kernel may
//! drop and read again). Then everything but the Node is removed
//! (Services, EndpointSlices, Pods, Namespaces) and, once the agent's maps hold
//! no Service and its RSS has settled, `VmRSS` again ("emptied"). Medians over
//! the rounds.
//!
//! Environment: `WEIR_BENCH_SERVICES` (default 10000), `WEIR_BENCH_PODS` (default
//! 10000), `WEIR_BENCH_ROUNDS` (default 3), `WEIR_BENCH_VARIANTS` (a subset of
//! `empty,kube,dir`). Where the memory goes: run one variant under a heap profiler,
//! `WEIR_AGENT_WRAPPER="heaptrack -o /tmp/agent" WEIR_BENCH_VARIANTS=kube
//! WEIR_BENCH_ROUNDS=1`, then `heaptrack_print -f /tmp/agent.zst`.

use std::time::{Duration, Instant};

use weir_lab::{
    Agent, Node, env_or,
    large_cluster::{ENDPOINTS, large_cluster},
    require_root,
    services::{Cluster, SourceKind, node_object},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Empty,
    Kube,
    Dir,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Self::Empty => "empty cluster (`--source kube`)",
            Self::Kube => "`--source kube`",
            Self::Dir => "`--source dir:`",
        }
    }
}

/// One agent's figures, in KiB.
#[derive(Clone, Copy)]
struct Sample {
    /// `VmRSS` once ready and settled, and its anonymous and file-backed parts.
    rss: u64,
    anon: u64,
    file: u64,
    /// `VmHWM`.
    peak: u64,
    ready: Duration,
    /// `VmRSS` once everything but the Node has been removed again.
    emptied: u64,
}

/// The agent's `VmRSS` once it has not moved (by more than 256 KiB) for 6 s,
/// at most 60 s on: what it holds for as long as the cluster stays as it is,
/// once its sync loop has been idle for 5 s (it packs its model then) and
/// its allocator gave back what it no longer uses (after 1 s).
fn settled(agent: &Agent) -> u64 {
    let settle = Instant::now() + Duration::from_secs(60);
    let mut last = (agent.rss_kib().0, Instant::now());
    while Instant::now() < settle && last.1.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(500));
        let now = agent.rss_kib().0;
        if now.abs_diff(last.0) > 256 {
            last = (now, Instant::now());
        }
    }
    last.0
}

/// Starts an agent for `variant`, waits until it is ready and settled, and
/// measures it.
fn measure(variant: Variant, services: usize, pods: usize) -> Sample {
    let kind = if variant == Variant::Dir {
        SourceKind::Dir
    } else {
        SourceKind::Kube
    };
    let source = Cluster::new(kind);
    let mut node = Node::new("10.99.1.0/24");
    if variant != Variant::Empty {
        for (file, objects) in large_cluster(node.name(), services, pods) {
            source.write(&format!("{file}.yaml"), &objects);
        }
    } else {
        source.write(
            "node.yaml",
            &[node_object(
                node.name(),
                &["10.128.0.0/16"],
                &["10.200.99.1".parse().expect("ip")],
            )],
        );
    }
    let started = Instant::now();
    let agent: Agent = node.start_agent_for(&source);
    let deadline = Instant::now() + Duration::from_secs(300);
    while agent.health("/readyz").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "{variant:?}: never ready:\n{}",
            agent.health("/readyz").1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready = started.elapsed();
    let rss = settled(&agent);
    let hwm = agent.rss_kib().1;
    let (anon, file) = agent.rss_parts_kib();
    // The allocator's own figures: live heap, free chunks kept between live
    // ones (fragmentation), large blocks mapped.
    let log = agent.log_text();
    if let Some(line) = log
        .lines()
        .rev()
        .find(|l| l.contains("heap after giving memory back"))
    {
        println!("  {variant:?}: {}", line.trim());
    }
    // Then the cluster shrinks to nothing but its Node: every Service,
    // EndpointSlice, Pod and Namespace removed.
    let mut emptied = rss;
    if variant != Variant::Empty {
        for (file, _) in large_cluster(node.name(), services, pods).iter().skip(1) {
            source.remove(&format!("{file}.yaml"));
        }
        source.write(
            "base.yaml",
            &[node_object(
                node.name(),
                &["10.128.0.0/16"],
                &["10.200.99.1".parse().expect("ip")],
            )],
        );
        // Deleting 100,000 Services through the API takes minutes.
        let deadline = Instant::now() + Duration::from_secs(900);
        while !agent.weirctl(&["services"]).as_array().is_some_and(Vec::is_empty) {
            assert!(
                Instant::now() < deadline,
                "{variant:?}: Services never all removed"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        // The agent gives memory back once its sync loop has been idle for
        // 5 s after the last deletion reached it (the API source's arrive
        // one by one).
        emptied = settled(&agent);
    }
    Sample {
        rss,
        anon,
        file,
        peak: hwm,
        ready,
        emptied,
    }
}

fn median<T: Copy + Ord>(v: &[T]) -> T {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn main() {
    require_root();
    let services = env_or("WEIR_BENCH_SERVICES", 10_000);
    let pods = env_or("WEIR_BENCH_PODS", 10_000);
    let rounds = env_or("WEIR_BENCH_ROUNDS", 3).max(1);
    eprintln!("agent_memory: {services} Services x {ENDPOINTS} endpoints, {pods} Pods, {rounds} rounds");
    let variants: Vec<Variant> = std::env::var("WEIR_BENCH_VARIANTS").map_or_else(
        |_| vec![Variant::Empty, Variant::Kube, Variant::Dir],
        |v| {
            v.split(',')
                .map(|s| match s.trim() {
                    "empty" => Variant::Empty,
                    "kube" => Variant::Kube,
                    "dir" => Variant::Dir,
                    other => panic!("WEIR_BENCH_VARIANTS: unknown variant {other:?} (empty, kube, dir)"),
                })
                .collect()
        },
    );
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        for k in 0..variants.len() {
            let i = (round + k) % variants.len();
            let s = measure(variants[i], services, pods);
            eprintln!(
                "round {round}: {:?}: RSS {} MiB (anonymous {}, file {}), peak {} MiB, ready in {:.1?}, emptied {} MiB",
                variants[i],
                mib(s.rss),
                mib(s.anon),
                mib(s.file),
                mib(s.peak),
                s.ready,
                mib(s.emptied)
            );
            samples[i].push(s);
        }
    }
    // Ratios only against an empty agent measured in the same run.
    let base = variants
        .iter()
        .position(|v| *v == Variant::Empty)
        .map(|i| median(&samples[i].iter().map(|s| s.rss).collect::<Vec<_>>()));
    let ratio = |kib: u64| base.map_or_else(|| "-".to_owned(), |b| format!("{:.2}", kib as f64 / b as f64));
    println!(
        "\n| agent | RSS (MiB) | of it anonymous | of it file-backed | peak RSS (MiB) | RSS / empty | ready after | RSS emptied (MiB) | emptied / empty |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (v, s) in variants.iter().zip(&samples) {
        let of = |f: fn(&Sample) -> u64| median(&s.iter().map(f).collect::<Vec<_>>());
        let (rss, hwm, emptied) = (of(|x| x.rss), of(|x| x.peak), of(|x| x.emptied));
        let (anon, file) = (of(|x| x.anon), of(|x| x.file));
        let ready = median(&s.iter().map(|x| x.ready).collect::<Vec<_>>());
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.1?} | {} | {} |",
            v.label(),
            mib(rss),
            mib(anon),
            mib(file),
            mib(hwm),
            ratio(rss),
            ready,
            mib(emptied),
            ratio(emptied)
        );
    }
}
