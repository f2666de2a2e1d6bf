//! Where the agent's memory goes when it holds a large cluster (issue 14:
//! "measure each with a heap profiler"): the cluster of `agent_memory`
//! (10,000 Services of 10 endpoints, 10,000 Pods, 100 Namespaces, one Node)
//! taken in by the agent's own code, one stage at a time, with a counting
//! allocator: the heap each stage keeps (bytes asked for, and allocations, each
//! of which costs glibc at least a 32-byte chunk), after the stage's temporary
//! memory is gone.
//!
//! 1. the model, kind by kind (objects trimmed as the sources trim them,
//!    `Model::upsert`);
//! 2. the services compiler (`ServiceCompiler::compile_all`: the union of every
//!    Service's map entries and what an incremental compile looks things up by);
//! 3. what the service syncer keeps after a full sync (`ServiceSyncer::apply`
//!    into maps that keep nothing);
//! 4. the policy syncer's compile (no NetworkPolicy: nothing to keep).
//!
//! A benchmark, not a test: it prints a table and asserts nothing. No root, no
//! kernel. Run:
//!
//! ```text
//! cargo bench -p weir-tests --bench heap_breakdown
//! ```
//!
//! Environment: `WEIR_BENCH_SERVICES` (default 10000), `WEIR_BENCH_PODS`
//! (default 10000).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicIsize, Ordering::Relaxed},
};

use aya::maps::MapError;
use weir_agent::sync::{Maps, PolicyOp, PolicySyncer, ServiceMaps, ServiceOp, ServiceSyncer, SyncError};
use weir_common::{Backend, RevNat, ServiceKey, ServiceValue};
use weir_lab::{env_or, large_cluster::large_cluster};
use weir_model::{
    DesiredServices, Kind, Model, NodeContext, parse_documents, policy::DesiredPolicy, services::Changed,
};

/// The system allocator, counting what is live.
struct Counting;

static BYTES: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);
/// The most `BYTES` has been since the current stage began.
static PEAK: AtomicIsize = AtomicIsize::new(0);
/// Live allocations by size (the last counts every larger one).
static SIZES: [AtomicIsize; 1025] = [const { AtomicIsize::new(0) }; 1025];

fn by_size(size: usize, delta: isize) {
    SIZES[size.min(1024)].fetch_add(delta, Relaxed);
}

// SAFETY: every call is passed to the system allocator unchanged; the counters
// only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size() as isize;
        PEAK.fetch_max(BYTES.fetch_add(size, Relaxed) + size, Relaxed);
        BLOCKS.fetch_add(1, Relaxed);
        by_size(layout.size(), 1);
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        BYTES.fetch_sub(layout.size() as isize, Relaxed);
        BLOCKS.fetch_sub(1, Relaxed);
        by_size(layout.size(), -1);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let grow = new_size as isize - layout.size() as isize;
        PEAK.fetch_max(BYTES.fetch_add(grow, Relaxed) + grow, Relaxed);
        by_size(layout.size(), -1);
        by_size(new_size, 1);
        // SAFETY: as in `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live bytes, allocations, and allocations by size.
#[derive(Clone)]
struct Live {
    bytes: isize,
    blocks: isize,
    sizes: Vec<isize>,
}

fn live() -> Live {
    Live {
        bytes: BYTES.load(Relaxed),
        blocks: BLOCKS.load(Relaxed),
        sizes: SIZES.iter().map(|n| n.load(Relaxed)).collect(),
    }
}

impl Live {
    /// What `self` holds more than `before`.
    fn since(&self, before: &Live) -> Live {
        Live {
            bytes: self.bytes - before.bytes,
            blocks: self.blocks - before.blocks,
            sizes: self.sizes.iter().zip(&before.sizes).map(|(a, b)| a - b).collect(),
        }
    }

    /// The allocation sizes that hold the most, as `count x size`.
    fn largest(&self) -> String {
        let mut sizes: Vec<(usize, isize)> = self.sizes.iter().copied().enumerate().collect();
        sizes.sort_by_key(|&(size, n)| std::cmp::Reverse(size as isize * n));
        sizes
            .iter()
            .take(3)
            .filter(|(_, n)| *n > 0)
            .map(|(size, n)| {
                let size = if *size == 1024 {
                    ">=1024".to_owned()
                } else {
                    size.to_string()
                };
                format!("{n} x {size} B")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Maps that take every write and keep nothing.
struct Discard;

impl Maps<ServiceOp> for Discard {
    fn read(&self) -> Result<DesiredServices, SyncError> {
        Ok(DesiredServices::default())
    }

    fn apply(&mut self, _: &ServiceOp) -> Result<(), MapError> {
        Ok(())
    }
}

impl ServiceMaps for Discard {
    fn service(&self, _: &ServiceKey) -> Result<Option<ServiceValue>, MapError> {
        Ok(None)
    }

    fn backend(&self, _: u32) -> Result<Option<Backend>, MapError> {
        Ok(None)
    }

    fn revnat(&self, _: u32) -> Result<Option<RevNat>, MapError> {
        Ok(None)
    }

    fn maglev(&self, _: u32) -> Result<Option<Vec<u32>>, MapError> {
        Ok(None)
    }
}

impl Maps<PolicyOp> for Discard {
    fn read(&self) -> Result<DesiredPolicy, SyncError> {
        Ok(DesiredPolicy::default())
    }

    fn apply(&mut self, _: &PolicyOp) -> Result<(), MapError> {
        Ok(())
    }
}

fn main() {
    let services = env_or("WEIR_BENCH_SERVICES", 10_000);
    let pods = env_or("WEIR_BENCH_PODS", 10_000);
    let node = "node-a";
    // Each stage: what it keeps, and the most it held above its start
    // (its temporary memory too: what the RSS's high-water mark sees).
    let mut rows: Vec<(&str, Live, isize)> = Vec::new();
    let mut mark = live();
    PEAK.store(mark.bytes, Relaxed);
    let mut stage = |name: &'static str, rows: &mut Vec<_>| {
        let now = live();
        rows.push((name, now.since(&mark), PEAK.load(Relaxed) - mark.bytes));
        mark = now;
        PEAK.store(mark.bytes, Relaxed);
    };

    // 1. The model, kind by kind (each file parsed as the directory source
    //    parses it; the objects of other kinds dropped in that pass).
    let mut model = Model::new();
    model.set_slices_only(true);
    let kinds = [
        (Kind::Service, "model: Services"),
        (Kind::EndpointSlice, "model: EndpointSlices"),
        (Kind::Pod, "model: Pods"),
        (Kind::Namespace, "model: Namespaces, the Node"),
    ];
    for (kind, name) in kinds {
        for (file, objects) in large_cluster(node, services, pods) {
            let text: String = objects.iter().map(|o| format!("{o}\n---\n")).collect();
            let (parsed, problems) = parse_documents(&text, &file);
            assert!(problems.is_empty(), "{problems:?}");
            for object in parsed {
                let k = object.kind();
                if k == kind || (kind == Kind::Namespace && k == Kind::Node) {
                    model.upsert(object.trimmed(), &file);
                }
            }
        }
        stage(name, &mut rows);
    }
    // Packed, as the agent packs it once every kind is listed and the
    // changes settle.
    model.pack();
    stage("model: packed (full B-tree leaves)", &mut rows);

    // 2. The services compiler.
    let mut syncer = ServiceSyncer::new(&Discard).expect("read");
    let mut context = NodeContext::new(node);
    context.node_ips = vec!["10.200.99.1".parse().expect("ip")];
    let mut compiler = syncer.compiler(context);
    let problems = compiler.compile_all(&model);
    assert!(problems.is_empty(), "{problems:?}");
    stage("services compiler (the union and its indexes)", &mut rows);

    // 3. What the service syncer keeps (reference counts; no copy of the maps).
    let report = syncer.apply(&mut Discard, compiler.desired(), &Changed::All);
    assert!(report.complete(), "{report:?}");
    let written = report.tally.writes;
    drop(report);
    stage("service syncer (what it keeps)", &mut rows);

    // 4. The policy syncer, without policies.
    let mut policy = PolicySyncer::new(node, &Discard).expect("read");
    policy.compile(&model);
    policy.apply(&mut Discard);
    stage("policy syncer (no NetworkPolicy)", &mut rows);

    let d = compiler.desired();
    println!(
        "### The agent's heap, stage by stage: {services} Services x 10 endpoints, {pods} Pods ({written} map entries)\n"
    );
    println!(
        "| stage | heap kept (MiB) | peak above the stage's start (MiB) | allocations | at glibc's 32-byte minimum chunk (MiB) | per Service (bytes) | largest shares |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    let mib = |b: isize| b as f64 / (1024.0 * 1024.0);
    let mut total = (0, 0);
    for (name, stage, peak) in &rows {
        let (bytes, blocks) = (stage.bytes, stage.blocks);
        total = (total.0 + bytes, total.1 + blocks);
        println!(
            "| {name} | {:.1} | {:.1} | {blocks} | {:.1} | {} | {} |",
            mib(bytes),
            mib(*peak),
            mib(bytes + blocks * 16),
            bytes / services.max(1) as isize,
            stage.largest()
        );
    }
    println!(
        "| **all** | **{:.1}** | | {} | {:.1} | {} | |",
        mib(total.0),
        total.1,
        mib(total.0 + total.1 * 16),
        total.0 / services.max(1) as isize
    );
    println!(
        "\nmap entries held by the compiler: {} services, {} backends, {} rev-NAT, {} Maglev tables",
        d.services.len(),
        d.backends.len(),
        d.revnat.len(),
        d.maglev.len()
    );
    // Kept alive until here: what each stage measured is what the agent keeps.
    drop((model, compiler, syncer, policy));
}
