//! Tier 1 (root + kernel): batched map writes (`BPF_MAP_UPDATE_BATCH`) through
//! the service syncer's path: what a batch writes is read back from the
//! kernel's map, and a batch that meets a full map says how far it got, the
//! rest failing one by one with the map's own error (`E2BIG`), counted as
//! failures, never lost silently.

use std::path::PathBuf;

use aya::maps::IterableMap as _;
use weir_agent::{
    datapath::{Datapath, PinLayout, batch},
    sync::{ServiceOp, SharedDatapath, Tally},
};
use weir_common::{RevNat, maps as names};

/// Unpins a test's maps when it ends, passed or failed: pinned, they would
/// hold their memory until the machine restarts.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(tag: &str) -> (Pins, Datapath) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test loads eBPF maps: run it as root"
    );
    let root = PathBuf::from(format!(
        "/sys/fs/bpf/weir-test-batch-{tag}-{}",
        std::process::id()
    ));
    let pins = Pins(root.clone());
    let dp = Datapath::load(PinLayout::new(&root)).expect("load datapath");
    (pins, dp)
}

fn revnat(i: u32) -> RevNat {
    RevNat {
        port: (i as u16).to_be(),
        ..RevNat::default()
    }
}

#[test]
fn root_batched_writes_land_in_the_map_and_stop_at_a_full_one() {
    let (_pins, dp) = load("full");
    let capacity = weir_agent::datapath::maps::REVNAT.max_entries;

    // 10,000 writes in one batch: every one is there.
    let keys: Vec<u32> = (1..=10_000).collect();
    let values: Vec<RevNat> = keys.iter().map(|&k| revnat(k)).collect();
    batch::update(dp.revnat.map(), &keys, &values).expect("batch of 10,000");
    for &k in keys.iter().step_by(997) {
        assert_eq!(dp.revnat.get(&k, 0).expect("written"), revnat(k));
    }

    // Through the syncer's maps: all but the last 5 of what fits, in runs, then 10 more than fit.
    let mut maps = SharedDatapath(std::sync::Arc::new(std::sync::Mutex::new(dp)));
    let ops: Vec<ServiceOp> = (10_001..=capacity + 5)
        .map(|k| ServiceOp::PutRevNat(k, revnat(k)))
        .collect();
    let mut tally = Tally::default();
    let took = tally.write_many(&mut maps, &ops);
    // Two batches go to the kernel at once: which 5 find the map full is
    // theirs to race for. (The kernel checks that a map is full and counts
    // a new entry in two steps: two CPUs inserting as it fills may both get
    // in, one entry past its size.)
    let written = took.iter().filter(|t| **t).count() as u32;
    assert!(
        (capacity - 10_000..=capacity - 10_000 + 1).contains(&written),
        "every write that fits: {written}"
    );
    let failed = ops.len() - written as usize;
    assert_eq!(tally.failed, failed, "the writes past the map's capacity fail");
    assert!(failed >= 4, "{failed} failed");
    assert_eq!(
        tally.failures.get(&(names::REVNAT, "E2BIG".to_owned())),
        Some(&(failed as u64)),
        "{:?}",
        tally.failures
    );
    let dp = maps.lock();
    assert_eq!(dp.revnat.iter().count() as u32, 10_000 + written);
    for (op, took) in ops.iter().zip(&took) {
        let ServiceOp::PutRevNat(k, v) = op else {
            unreachable!()
        };
        match dp.revnat.get(k, 0) {
            Ok(got) => assert!(*took && got == *v, "{k}: in the map, so it took"),
            Err(_) => assert!(!took, "{k}: not in the map, so it failed"),
        }
    }
}
