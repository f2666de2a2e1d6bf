//! Tier 1 (root + kernel): batched map reads (`BPF_MAP_LOOKUP_BATCH`) and
//! writes (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`) through
//! the service syncer's path: what a batch writes is read back from the
//! kernel's map, and a batch that meets a full map says how far it got, the
//! rest failing one by one with the map's own error (`E2BIG`), counted as
//! failures, never lost silently. A large sync's writes, made on a thread of
//! their own while the syncer decides the rest, end as the syncer decided
//! them, each failure counted and what depends on it held back.

use std::path::PathBuf;

use aya::maps::IterableMap as _;
use weir_agent::{
    datapath::{Datapath, PinLayout, batch},
    sync::{Maps, ServiceOp, ServiceSyncer, SharedDatapath, Tally},
};
use weir_common::{Backend, RevNat, SCOPE_EXTERNAL, ServiceKey, ServiceValue, maps as names};
use weir_model::{DesiredServices, services::Changed};

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
    let mut maps = shared(dp);
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

#[test]
fn root_batched_reads_return_every_entry_once_whatever_room_a_call_has() {
    let (_pins, dp) = load("read");
    let read = |per_call: usize| {
        let mut reader = batch::HashReader::<u32, RevNat>::new(per_call);
        let (mut entries, mut calls) = (Vec::new(), 0);
        while let Some((keys, values)) = reader.next(dp.revnat.map()).expect("read") {
            assert_eq!(keys.len(), values.len());
            entries.extend(keys.iter().copied().zip(values.iter().copied()));
            calls += 1;
        }
        assert!(reader.next(dp.revnat.map()).expect("read at the end").is_none());
        entries.sort_by_key(|e| e.0);
        (entries, calls)
    };
    assert_eq!(read(4_096), (Vec::new(), 0), "an empty map");

    let keys: Vec<u32> = (1..=20_000).collect();
    let values: Vec<RevNat> = keys.iter().map(|&k| revnat(k)).collect();
    batch::update(dp.revnat.map(), &keys, &values).expect("batch of 20,000");
    let want: Vec<(u32, RevNat)> = keys.iter().copied().zip(values).collect();
    let (got, calls) = read(4_096);
    assert_eq!(got, want);
    assert!((5..=6).contains(&calls), "4,096 at a time: {calls} calls");
    // Room for one entry: a bucket of two (20,000 keys in 262,144 buckets:
    // hundreds of them) makes room for more (ENOSPC), nothing is lost.
    assert_eq!(read(1).0, want);

    // The syncer's whole read is the same walk.
    let maps = shared(dp);
    let got = Maps::<ServiceOp>::read(&maps).expect("read the maps");
    assert_eq!(got.revnat.len(), 20_000);
    assert!(got.services.is_empty() && got.backends.is_empty());
}

#[test]
fn root_batched_deletes_leave_the_map_empty_and_a_missing_key_is_no_failure() {
    let (_pins, dp) = load("delete");
    let keys: Vec<u32> = (1..=20_000).collect();
    let values: Vec<RevNat> = keys.iter().map(|&k| revnat(k)).collect();
    batch::update(dp.revnat.map(), &keys, &values).expect("batch of 20,000");

    // The kernel stops a batch at a key that is not there, and says where.
    batch::delete(dp.revnat.map(), &keys[..5_000]).expect("5,000 deleted");
    let (deleted, error) = batch::delete(dp.revnat.map(), &[5_001, 5_002, 3, 5_003]).expect_err("3 is gone");
    assert_eq!(deleted, 2, "{error}");
    assert!(
        dp.revnat.get(&5_003, 0).is_ok(),
        "not deleted past the missing key"
    );

    // Through the syncer's maps, with keys already gone among them: every
    // delete took, none failed, the map is empty.
    let mut maps = shared(dp);
    let ops: Vec<ServiceOp> = (1..=20_000).map(ServiceOp::DelRevNat).collect();
    let mut tally = Tally::default();
    let took = tally.write_many(&mut maps, &ops);
    assert!(took.iter().all(|t| *t));
    assert_eq!((tally.deletes, tally.failed), (20_000, 0), "{tally:?}");
    assert_eq!(maps.lock().revnat.iter().count(), 0);
}

/// `n` Services of 10 backends each, as the compiler writes them: a head
/// counting 10 slots, each slot naming its own backend, a reverse-NAT entry.
fn services(n: u32, port: u16) -> DesiredServices {
    let mut desired = DesiredServices::default();
    for i in 1..=n {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&(0x0a60_0000 + i).to_be_bytes());
        let head = ServiceKey {
            addr,
            port: port.to_be(),
            slot: 0,
            proto: 6,
            family: 4,
            scope: SCOPE_EXTERNAL,
            _pad: 0,
        };
        for slot in 1..=10u16 {
            let id = i * 10 + u32::from(slot);
            let mut b = Backend {
                port: 8080u16.to_be(),
                proto: 6,
                family: 4,
                ..Backend::default()
            };
            b.addr[..4].copy_from_slice(&(0x0a00_0000 + id).to_be_bytes());
            desired.backends.insert(id, b);
            let value = ServiceValue {
                backend_id: id,
                rev_nat_id: i,
                ..ServiceValue::default()
            };
            desired.services.insert(ServiceKey { slot, ..head }, value);
        }
        let value = ServiceValue {
            rev_nat_id: i,
            count: 10,
            ..ServiceValue::default()
        };
        desired.services.insert(head, value);
        desired.revnat.insert(i, revnat(i));
    }
    desired
}

fn shared(dp: Datapath) -> SharedDatapath {
    SharedDatapath(std::sync::Arc::new(std::sync::Mutex::new(dp)))
}

#[test]
fn root_a_large_sync_writes_on_a_second_thread_and_the_maps_hold_what_was_desired() {
    let (_pins, dp) = load("writer");
    let mut maps = shared(dp);
    let mut syncer = ServiceSyncer::new(&maps).expect("read back");

    // 2,000 Services: 20,000 slots in one step, more than one chunk.
    let desired = services(2_000, 80);
    let report = syncer.apply(&mut maps, &desired, &Changed::All);
    assert!(report.complete(), "{report:?}");
    assert!(
        report.background_writes >= 8_192,
        "a large step's writes go to the writer thread: {}",
        report.background_writes
    );
    let entries = desired.services.len() + desired.backends.len() + desired.revnat.len();
    assert_eq!(report.tally.writes, entries);
    let got = Maps::<ServiceOp>::read(&maps).expect("read the maps");
    assert_eq!(got.services, desired.services);
    assert_eq!(got.backends, desired.backends);
    assert_eq!(got.revnat, desired.revnat);

    // Half of them go, the other half move to another port: the maps follow.
    let smaller = services(1_000, 81);
    let report = syncer.apply(&mut maps, &smaller, &Changed::All);
    assert!(report.complete(), "{report:?}");
    // Every entry of port 80, and the backends and reverse-NAT entries of the
    // Services that went.
    assert_eq!(
        report.tally.deletes,
        2_000 * 11 + 1_000 * 10 + 1_000,
        "{report:?}"
    );
    let got = Maps::<ServiceOp>::read(&maps).expect("read the maps");
    assert_eq!(got.services, smaller.services);
    assert_eq!(got.backends, smaller.backends);
    assert_eq!(got.revnat, smaller.revnat);
}

#[test]
fn root_a_large_sync_that_meets_a_full_map_counts_each_failure_and_keeps_the_rest_consistent() {
    let (_pins, dp) = load("writer-full");
    // The backends map full but for 5,000 entries (ids far from the Services').
    let room = 5_000;
    let fill = weir_agent::datapath::maps::BACKENDS.max_entries - room;
    let keys: Vec<u32> = (0..fill).map(|k| 10_000_000 + k).collect();
    let values = vec![Backend::default(); keys.len()];
    for (k, v) in keys.chunks(65_536).zip(values.chunks(65_536)) {
        batch::update(dp.backends.map(), k, v).expect("fill the backends map");
    }
    let mut maps = shared(dp);
    let mut syncer = ServiceSyncer::new(&maps).expect("read back");

    // 1,000 Services want 10,000 backends: about half fit.
    let desired = services(1_000, 80);
    let report = syncer.apply(&mut maps, &desired, &Changed::All);
    assert!(!report.complete());
    assert!(report.background_writes > 0, "{report:?}");
    let failed = report.tally.failed;
    // Two batches at once race for the last entries: one may get in past the size.
    assert!(
        (10_000 - room as usize - 1..=10_000 - room as usize).contains(&failed),
        "every backend that did not fit failed: {failed}"
    );
    assert_eq!(
        report.tally.failures.get(&(names::BACKENDS, "E2BIG".to_owned())),
        Some(&(failed as u64))
    );
    // Every slot in the map names a backend that is there, every head counts
    // slots that are there: what a failed write held back is deferred.
    let got = Maps::<ServiceOp>::read(&maps).expect("read the maps");
    for (key, value) in &got.services {
        if key.slot == 0 {
            for slot in 1..=value.count {
                assert!(got.services.contains_key(&ServiceKey { slot, ..*key }), "{key:?}");
            }
        } else {
            assert!(got.backends.contains_key(&value.backend_id), "{key:?}");
        }
    }
    assert!(report.deferred > 0, "{report:?}");
    // The entries no Service names are the syncer's to delete (after the
    // writes: their room came too late for this sync).
    assert_eq!(report.tally.deletes, fill as usize);
    assert_eq!(got.backends.len(), 10_000 - failed);
    assert!(
        got.backends
            .iter()
            .all(|(id, b)| desired.backends.get(id) == Some(b))
    );
}
