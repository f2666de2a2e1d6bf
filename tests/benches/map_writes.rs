//! Programming the service maps of a large cluster: the syncer's writes one
//! system call each (`BPF_MAP_UPDATE_ELEM`) against batched
//! (`BPF_MAP_UPDATE_BATCH`, 4,096 per call, what the agent does), for
//! 100,000 Services of 10 endpoints: 1,000,000 backends, 100,000 reverse-NAT
//! entries, 1,100,000 service entries (a head and 10 slots each), written
//! through the syncer's maps into the kernel's.
//!
//! A benchmark, not a test: it prints a markdown table and asserts nothing.
//! Needs root (it loads the datapath under a bpffs root of its own). Run:
//!
//! ```text
//! cargo bench -p weir-tests --bench map_writes
//! ```
//!
//! Rounds alternate the variants (each starts from empty maps, a fresh
//! datapath); medians and min-max. Environment: `WEIR_BENCH_SERVICES`
//! (default 100000), `WEIR_BENCH_ROUNDS` (default 3).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use weir_agent::{
    datapath::{Datapath, PinLayout},
    sync::{ServiceOp, SharedDatapath, Tally},
};
use weir_common::{AF_INET, Backend, IPPROTO_TCP, RevNat, SCOPE_EXTERNAL, ServiceKey, ServiceValue};
use weir_lab::{env_or, require_root};

const ENDPOINTS: u32 = 10;

fn ops(services: u32) -> Vec<ServiceOp> {
    let mut out = Vec::new();
    for s in 0..services {
        for e in 0..ENDPOINTS {
            let id = s * ENDPOINTS + e + 1;
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&(0x0a00_0000u32 + id).to_be_bytes());
            out.push(ServiceOp::PutBackend(
                id,
                Backend {
                    addr,
                    port: 8080u16.to_be(),
                    proto: IPPROTO_TCP,
                    family: AF_INET,
                    ..Backend::default()
                },
            ));
        }
    }
    for s in 0..services {
        out.push(ServiceOp::PutRevNat(s + 1, RevNat::default()));
    }
    for s in 0..services {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&(0x0a60_0000u32 + s).to_be_bytes());
        let key = |slot| ServiceKey {
            addr,
            port: 80u16.to_be(),
            slot,
            proto: IPPROTO_TCP,
            family: AF_INET,
            scope: SCOPE_EXTERNAL,
            ..ServiceKey::default()
        };
        for slot in 1..=ENDPOINTS as u16 {
            out.push(ServiceOp::PutService(
                key(slot),
                ServiceValue {
                    backend_id: s * ENDPOINTS + u32::from(slot),
                    ..ServiceValue::default()
                },
            ));
        }
        out.push(ServiceOp::PutService(
            key(0),
            ServiceValue {
                count: ENDPOINTS as u16,
                rev_nat_id: s + 1,
                ..ServiceValue::default()
            },
        ));
    }
    out
}

fn run(batched: bool, ops: &[ServiceOp], round: usize) -> Duration {
    let root = PathBuf::from(format!(
        "/sys/fs/bpf/weir-bench-writes-{}-{round}-{batched}",
        std::process::id()
    ));
    let dp = Datapath::load(PinLayout::new(&root)).expect("load datapath");
    let mut maps = SharedDatapath(Arc::new(Mutex::new(dp)));
    let mut tally = Tally::default();
    let start = Instant::now();
    if batched {
        tally.write_many(&mut maps, ops);
    } else {
        for op in ops {
            tally.write(&mut maps, op);
        }
    }
    let took = start.elapsed();
    assert_eq!(tally.failed, 0, "{:?}", tally.failures);
    drop(maps);
    let _ = std::fs::remove_dir_all(&root);
    took
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    require_root();
    let services: u32 = env_or("WEIR_BENCH_SERVICES", 100_000);
    let rounds: usize = env_or("WEIR_BENCH_ROUNDS", 3);
    let ops = ops(services);
    println!(
        "{} writes ({services} Services x {ENDPOINTS} endpoints), {rounds} rounds",
        ops.len()
    );
    let (mut single, mut batched) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first.
        for b in if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            let t = run(b, &ops, round);
            println!(
                "  round {round}: {} {:.2} s",
                if b { "batched" } else { "one by one" },
                t.as_secs_f64()
            );
            if b { batched.push(t) } else { single.push(t) }
        }
    }
    let (lo_s, hi_s) = (
        single.iter().min().copied().unwrap_or_default(),
        single.iter().max().copied().unwrap_or_default(),
    );
    let (lo_b, hi_b) = (
        batched.iter().min().copied().unwrap_or_default(),
        batched.iter().max().copied().unwrap_or_default(),
    );
    let (ms, mb) = (median(&mut single), median(&mut batched));
    println!();
    println!("| writes | one system call each (s) | batched (s) | speed-up |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| {} | {:.2} ({:.2}-{:.2}) | {:.2} ({:.2}-{:.2}) | {:.1}x |",
        ops.len(),
        ms.as_secs_f64(),
        lo_s.as_secs_f64(),
        hi_s.as_secs_f64(),
        mb.as_secs_f64(),
        lo_b.as_secs_f64(),
        hi_b.as_secs_f64(),
        ms.as_secs_f64() / mb.as_secs_f64()
    );
}
