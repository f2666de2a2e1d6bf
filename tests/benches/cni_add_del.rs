//! CNI ADD+DEL latency: `weir-cni` against the reference `bridge` + `host-local` plugins.
//!
//! A benchmark, not a test: it prints a markdown table and asserts nothing about speed.
//! Needs root. Run (the bench looks for `weir-cni` next to its own executable, i.e. in
//! `target/release`, or in `$WEIR_BIN_DIR`):
//!
//! ```text
//! cargo build --release -p weir-cni && cargo bench -p weir-tests --bench cni_add_del
//! ```
//!
//! Method. Both variants run in the same lab node (a network namespace), in rounds that
//! alternate them (A B A B ...) so that machine noise falls on both alike. Each cycle
//! takes a fresh pod namespace from a pool created before the round (outside the timing),
//! then times `ADD` and `DEL`, each from spawning the plugin to its exit, exactly as a
//! runtime invokes it (environment + stdin). The plugins are spawned from a thread that
//! has entered the node's namespace (not through `ip netns exec`, which would add its own
//! start-up to every call).
//!
//! Environment: `WEIR_BENCH_CYCLES` (measured cycles per variant, default 200),
//! `WEIR_BENCH_ROUNDS` (default 10), `WEIR_BENCH_WARMUP` (unmeasured cycles per variant
//! before the first round, default 5).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use weir_lab::{CniCall, Netns, TempDir, bins, env_or, node::cni_path, require_root, unique};

#[derive(Clone)]
struct Variant {
    label: &'static str,
    plugin: PathBuf,
    conf: Value,
    cni_path: String,
}

#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    del: Vec<Duration>,
    cycle: Vec<Duration>,
}

fn main() {
    require_root();
    let cycles = env_or("WEIR_BENCH_CYCLES", 200);
    let rounds = env_or("WEIR_BENCH_ROUNDS", 10).clamp(1, cycles.max(1));
    let warmup = env_or("WEIR_BENCH_WARMUP", 5);

    let node = Netns::new(&unique("wbn"));
    node.sh("sysctl -qw net.ipv4.ip_forward=1");
    let state = TempDir::new("weir-bench-");
    let reference_dir = weir_lab::cni::reference_plugins_dir();

    let weir = Variant {
        label: "weir-cni",
        plugin: bins::path("weir-cni"),
        conf: json!({
            "cniVersion": "1.1.0",
            "name": "weir-bench",
            "type": "weir-cni",
            "ipam": {
                "ranges": [[{ "subnet": "10.244.0.0/16" }]],
                "dataDir": state.join("weir-ipam"),
            },
        }),
        cni_path: cni_path(),
    };
    let reference = Variant {
        label: "bridge+host-local",
        plugin: reference_dir.join("bridge"),
        // The reference plugins speak CNI up to 1.0.0.
        conf: json!({
            "cniVersion": "1.0.0",
            "name": "ref-bench",
            "type": "bridge",
            "bridge": "cni-bench0",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": "10.245.0.0/16" }]],
                "dataDir": state.join("host-local"),
            },
        }),
        cni_path: reference_dir.display().to_string(),
    };
    let variants = [weir, reference];

    eprintln!(
        "cni_add_del: {cycles} cycles per variant in {rounds} rounds, {warmup} warm-up cycles, node netns {}",
        node.name()
    );
    for v in &variants {
        run_round(&node, v, warmup);
    }
    let mut samples: Vec<Samples> = variants.iter().map(|_| Samples::default()).collect();
    for round in 0..rounds {
        // Spread the remainder over the first rounds.
        let n = cycles / rounds + usize::from(round < cycles % rounds);
        // Alternate which variant goes first, too.
        let order: Vec<usize> = if round % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        for i in order {
            let s = run_round(&node, &variants[i], n);
            samples[i].add.extend(s.add);
            samples[i].del.extend(s.del);
            samples[i].cycle.extend(s.cycle);
        }
    }

    print_report(&variants, &samples, cycles, rounds);
}

/// `n` cycles of one variant: a pool of `n` pod namespaces, then ADD and DEL for each,
/// timed, from a thread inside the node's namespace.
fn run_round(node: &Netns, v: &Variant, n: usize) -> Samples {
    let pods: Vec<Netns> = (0..n).map(|_| Netns::new(&unique("wbp"))).collect();
    let paths: Vec<String> = pods.iter().map(|p| p.path().display().to_string()).collect();
    let v = v.clone();
    let samples = node.run(move || {
        let mut s = Samples::default();
        for netns in paths {
            let call = |command: &str, container_id: &str| {
                CniCall {
                    container_id: Some(container_id.to_owned()),
                    netns: Some(netns.clone()),
                    ifname: Some("eth0".to_owned()),
                    // As kubelet passes them (the reference plugins refuse unknown args
                    // without `IgnoreUnknown`).
                    args: Some(format!(
                        "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={container_id};\
                     K8S_POD_INFRA_CONTAINER_ID={container_id}"
                    )),
                    path: Some(v.cni_path.clone()),
                    in_netns: None,
                    ..CniCall::new(&v.plugin, command)
                }
                .config(&v.conf)
            };
            let id = unique("bench-");
            let add = call("ADD", &id);
            let del = call("DEL", &id);

            let t0 = Instant::now();
            let out = add.run();
            let t_add = t0.elapsed();
            assert_eq!(
                out.exit_code, 0,
                "{} ADD failed: {} {}",
                v.label, out.stdout, out.stderr
            );

            let t1 = Instant::now();
            let out = del.run();
            let t_del = t1.elapsed();
            assert_eq!(
                out.exit_code, 0,
                "{} DEL failed: {} {}",
                v.label, out.stdout, out.stderr
            );

            s.add.push(t_add);
            s.del.push(t_del);
            s.cycle.push(t_add + t_del);
        }
        s
    });
    drop(pods);
    samples
}

fn print_report(variants: &[Variant], samples: &[Samples], cycles: usize, rounds: usize) {
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
    println!("\n### CNI ADD+DEL latency ({cycles} cycles per variant, {rounds} interleaved rounds; ms)\n");
    println!("| variant | ADD p50 | ADD p99 | DEL p50 | DEL p99 | ADD+DEL p50 | ADD+DEL p99 |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (v, s) in variants.iter().zip(samples) {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            v.label,
            ms(percentile(&s.add, 50)),
            ms(percentile(&s.add, 99)),
            ms(percentile(&s.del, 50)),
            ms(percentile(&s.del, 99)),
            ms(percentile(&s.cycle, 50)),
            ms(percentile(&s.cycle, 99)),
        );
    }
    let ratio = |f: fn(&Samples) -> &Vec<Duration>| {
        percentile(f(&samples[0]), 50).as_secs_f64() / percentile(f(&samples[1]), 50).as_secs_f64()
    };
    println!(
        "| **ratio of medians {} / {}** | {:.2} | | {:.2} | | {:.2} | |",
        variants[0].label,
        variants[1].label,
        ratio(|s| &s.add),
        ratio(|s| &s.del),
        ratio(|s| &s.cycle),
    );
}

/// Nearest-rank percentile.
fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    assert!(!sorted.is_empty(), "no samples");
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}
