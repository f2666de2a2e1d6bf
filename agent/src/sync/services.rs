//! The service syncer: compiles each model snapshot and writes only the difference to the
//! pinned service maps, in an order that keeps the datapath consistent at every
//! instant:
//!
//! 1. backends and reverse-NAT entries are written;
//! 2. Maglev tables: a table is written only once every backend it names is there
//!    (a table of any length but [`weir_common::MAGLEV_TABLE_SIZE`] is a compiler
//!    bug: logged as an error, counted in [`ServiceReport::skipped`], never written);
//! 3. backend slots (slot >= 1): a slot is written only once its backend is there;
//! 4. service entries (slot 0): written only once every slot `1..=count`, the
//!    reverse-NAT entry and, for a Maglev frontend, its table hold what they
//!    should, so a growing service never counts a slot that is not there yet and
//!    a frontend never turns to Maglev before its table is in place;
//! 5. service entries no longer wanted are deleted;
//! 6. Maglev tables no frontend wants any more (only once the service entry in
//!    the map that used it holds its final value);
//! 7. then slots no longer wanted, and the slots beyond a shrunk count (only once
//!    the entry in the map no longer counts them);
//! 8. then backends and reverse-NAT entries that nothing in the map references (a
//!    slot or a Maglev table).
//!
//! The writes of each step go to the kernel in batches of one map's writes
//! (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`): none of them depends on
//! another of its step (internal service entries, which external ones look
//! at, are a step of their own when written, and external ones, which name
//! their internal twins, when deleted), so a large step's first writes are
//! made on a thread of their own while the rest are decided
//! ([`super::writer`]), and each step ends with all of them made.
//!
//! A write that fails (map full, ...) is logged and counted, the entries that depend
//! on it are deferred, and the next sync retries: nothing is ever flushed, so a
//! restarted agent reads the maps back, diffs and writes only what changed.
//!
//! A sync looks at every entry ([`Changed::All`], the first after a start: the
//! maps are read whole) or only at the keys a compile touched ([`Changed::Keys`]):
//! with 10,000 Services, a change of one EndpointSlice then costs what it
//! touches, not a walk of the maps. (A change that touches more keys than a
//! third of the entries the maps hold, such as a cluster's first Services or
//! its last, reads them whole instead: thousands of entries per system call,
//! the datapath's lock held for one call at a time, rather than a call per
//! key.)
//! The syncer keeps no copy of the maps: a sync reads from the kernel the keys
//! it looks at (the candidates, and what the ordering rules ask of others: a
//! frontend's slots, its twin, a table's backends). What the rules need to know
//! of everything else (which slots or tables name a backend, which entries use
//! a reverse-NAT id) is kept in reference counts updated with each write.

use std::{
    collections::BTreeMap,
    hash::Hash,
    time::{Duration, Instant},
};

use foldhash::{HashMap, HashSet};

use aya::maps::MapError;
use tracing::error;
use weir_common::{
    Backend, IPPROTO_TCP, MAGLEV_TABLE_SIZE, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_AFFINITY, SVC_F_MAGLEV,
    SVC_F_TWO_SCOPES, ServiceKey, ServiceValue, maps as names,
};
use weir_model::{
    DesiredServices, IdAllocator, NodeContext,
    merge::{merge_join, values_of},
    services::{Changed, ServiceCompiler},
};

use super::{
    SyncError, Tally,
    service_maps::{ServiceMaps, ServiceOp, maglev_value},
    writer::{Done, Writer},
};

#[cfg(test)]
#[path = "services_tests.rs"]
mod tests;

pub struct ServiceSyncer {
    /// What the maps held when the syncer started, until the first full sync
    /// has diffed against it (the compiler's ids come from it too).
    read_back: Option<DesiredServices>,
    refs: Refs,
    /// What reading the maps whole would cost ([`whole_read_cost`]), when
    /// known: as read back, after a sync that completed (what it desired),
    /// or after one that read them whole (what it left). Unknown after an
    /// incomplete sync of single-key reads.
    whole_cost: Option<usize>,
    /// Failed writes since the agent started.
    pub failures_total: u64,
}

/// What references what in the maps, kept with each write: the ordering rules
/// ask it of keys no sync would otherwise read.
#[derive(Debug, Default, PartialEq, Eq)]
struct Refs {
    /// Backend id -> slots naming it.
    slots: HashMap<u32, u32>,
    /// Backend id -> Maglev tables naming it.
    tables: HashMap<u32, u32>,
    /// Reverse-NAT id -> entries (slot 0 and slots) using it.
    revnat: HashMap<u32, u32>,
    /// Rev-NAT id -> affinity timeout of the frontends with session affinity.
    affinity: BTreeMap<u32, u32>,
}

fn bump(map: &mut HashMap<u32, u32>, id: u32, delta: i32) {
    let n = map.entry(id).or_default();
    *n = n.saturating_add_signed(delta);
    if *n == 0 {
        map.remove(&id);
    }
}

impl Refs {
    /// The references among `maps`' contents.
    fn of(maps: &DesiredServices) -> Self {
        let mut refs = Self::default();
        for (key, value) in &maps.services {
            refs.count(key, value, 1);
        }
        for table in maps.maglev.values() {
            refs.table(table, 1);
        }
        refs
    }

    fn count(&mut self, key: &ServiceKey, value: &ServiceValue, delta: i32) {
        bump(&mut self.revnat, value.rev_nat_id, delta);
        if key.slot != 0 {
            bump(&mut self.slots, value.backend_id, delta);
        } else if delta > 0 && value.flags & SVC_F_AFFINITY != 0 {
            self.affinity.insert(value.rev_nat_id, value.affinity_timeout);
        } else if delta < 0 {
            self.affinity.remove(&value.rev_nat_id);
        }
    }

    /// A table's backends, each once.
    fn table(&mut self, table: &[u32], delta: i32) {
        for id in distinct(table) {
            bump(&mut self.tables, id, delta);
        }
    }
}

/// The backends a Maglev table names, each once, in id order.
fn distinct(table: &[u32]) -> Vec<u32> {
    let mut named = table.to_vec();
    named.sort_unstable();
    named.dedup();
    named
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct ServiceReport {
    /// Writes, deletes and failures (reads of the maps that failed too).
    pub tally: Tally,
    /// Entries held back because what they depend on failed to be written.
    pub deferred: usize,
    /// Desired entries that cannot be written at all (a Maglev table of the wrong
    /// size): logged as errors; retrying would not help.
    pub skipped: usize,
    /// UDP/SCTP backends (address, port, protocol) that are gone: their conntrack
    /// entries should be flushed so that clients move on.
    pub gone_datagram_backends: Vec<Backend>,
    /// Writes made on the writer thread (a large step's; [`super::writer`]).
    pub background_writes: usize,
    pub duration: Duration,
}

impl ServiceReport {
    /// Whether the maps now hold exactly what was desired.
    pub fn complete(&self) -> bool {
        self.tally.failed == 0 && self.deferred == 0
    }
}

impl ServiceSyncer {
    /// Reads what the maps hold (left by an earlier agent, or empty).
    pub fn new(maps: &dyn ServiceMaps) -> Result<Self, SyncError> {
        let read_back = maps.read()?;
        Ok(Self {
            refs: Refs::of(&read_back),
            whole_cost: Some(whole_read_cost(&read_back)),
            read_back: Some(read_back),
            failures_total: 0,
        })
    }

    /// A compiler for `node` that keeps the ids found in the maps, so established
    /// flows keep their backend and rev-NAT ids (before the first sync: the
    /// ids read back).
    pub fn compiler(&self, node: NodeContext) -> ServiceCompiler {
        let ids = self
            .read_back
            .as_ref()
            .map_or_else(IdAllocator::new, IdAllocator::from_desired);
        ServiceCompiler::new(node, ids)
    }

    /// What the maps held when the syncer started, until the first full sync.
    pub fn read_back(&self) -> Option<&DesiredServices> {
        self.read_back.as_ref()
    }

    /// `rev_nat_id -> affinity timeout (s)` of the frontends with session affinity
    /// now in the maps (for the affinity GC).
    pub fn affinity_timeouts(&self) -> BTreeMap<u32, u32> {
        self.refs.affinity.clone()
    }

    /// Whether the references kept agree with those among `maps` (tests).
    #[cfg(test)]
    fn refs_agree_with(&self, maps: &DesiredServices) -> bool {
        self.refs == Refs::of(maps)
    }

    /// Writes the difference between the maps and `desired` (among the keys
    /// `changed` names: [`Changed::All`] reads the maps whole, and so does a
    /// change of more keys than reading them whole costs).
    pub fn apply(
        &mut self,
        maps: &mut dyn ServiceMaps,
        desired: &DesiredServices,
        changed: &Changed,
    ) -> ServiceReport {
        let start = Instant::now();
        let mut report = ServiceReport::default();
        // What the maps held at the start is what they hold only until the
        // first sync writes.
        let read_back = self.read_back.take();
        // A change larger than the maps (a cluster's first Services) reads
        // them whole: a system call per key it touches would cost more.
        let whole = match changed {
            Changed::All => true,
            Changed::Keys(touched) => self.whole_cost.is_some_and(|cost| cost < touched.len()),
        };
        let current = if whole {
            match read_back.map_or_else(|| maps.read(), Ok) {
                Ok(held) => {
                    self.refs = Refs::of(&held);
                    Current {
                        held,
                        whole: true,
                        ..Current::default()
                    }
                }
                Err(SyncError::Read { map, source }) => {
                    report.tally.read_failed(map, &source);
                    self.failures_total += 1;
                    report.duration = start.elapsed();
                    return report;
                }
            }
        } else {
            Current::default()
        };
        let keys = Candidates::of(changed, &current, desired);
        let mut run = Run {
            maps,
            current,
            refs: &mut self.refs,
            report,
            queued: Vec::new(),
            writer: None,
            writer_tried: false,
        };
        run.report.gone_datagram_backends = run.gone_datagram_backends(desired, &keys.backends);
        let tables = run.valid_tables(desired, &keys.maglev);
        // Each step reads what the steps before it wrote: each ends with its
        // queued writes made.
        run.put_backends_and_revnat(desired, &keys);
        run.flush();
        run.put_maglev(&tables);
        run.flush();
        run.put_slots(desired, &keys.services);
        run.flush();
        run.put_heads(desired, &tables, &keys.services);
        run.flush();
        run.delete_heads(desired, &keys.services);
        run.delete_maglev(desired, &tables, &keys);
        run.flush();
        run.delete_slots(desired, &keys.services);
        run.flush();
        run.delete_unreferenced(desired, &keys);
        run.flush();
        // A sync that read the maps whole knows what it left in them, even
        // if some writes failed (their retry may read whole again).
        self.whole_cost = if run.current.whole {
            Some(whole_read_cost(&run.current.held))
        } else {
            run.report.complete().then(|| whole_read_cost(desired))
        };
        let mut report = run.report;
        report.tally.finish();
        self.failures_total += report.tally.failed as u64;
        report.duration = start.elapsed();
        report
    }
}

/// What reading `maps` whole costs, in single-key reads: a third of one per
/// entry (read 4,096 at a time, `BPF_MAP_LOOKUP_BATCH`: 0.4 us an entry
/// against 1.4 us a key looked up, 200,000 entries here), and a Maglev
/// table's 64 KiB copied.
fn whole_read_cost(maps: &DesiredServices) -> usize {
    /// A Maglev table's copy, in single-key reads of small entries.
    const TABLE: usize = 32;
    (maps.services.len() + maps.backends.len() + maps.revnat.len()).div_ceil(3) + TABLE * maps.maglev.len()
}

/// The keys a sync looks at, per map, in key order (the order of the writes).
struct Candidates {
    services: Vec<ServiceKey>,
    backends: Vec<u32>,
    revnat: Vec<u32>,
    maglev: Vec<u32>,
}

impl Candidates {
    fn of(changed: &Changed, current: &Current, desired: &DesiredServices) -> Self {
        /// The keys of both, in order, by one merge walk into one vector (a
        /// `BTreeSet` of them was a million small nodes at 100,000 Services,
        /// freed at the end of the sync among the entries kept).
        fn union<K: Ord + Copy, A, B>(a: &BTreeMap<K, A>, b: &BTreeMap<K, B>) -> Vec<K> {
            merge_join(a, b).map(|(k, _, _)| *k).collect()
        }
        let held = &current.held;
        match changed {
            Changed::All => Self {
                services: union(&held.services, &desired.services),
                backends: union(&held.backends, &desired.backends),
                revnat: union(&held.revnat, &desired.revnat),
                maglev: union(&held.maglev, &desired.maglev),
            },
            Changed::Keys(t) => Self {
                services: t.services.iter().copied().collect(),
                backends: t.backends.iter().copied().collect(),
                revnat: t.revnat.iter().copied().collect(),
                maglev: t.maglev.iter().copied().collect(),
            },
        }
    }
}

/// The keys of `keys` (in order) that `map` does not hold.
fn absent<'m, K: Ord + Copy, V>(keys: &'m [K], map: &'m BTreeMap<K, V>) -> impl Iterator<Item = K> {
    values_of(keys, map).filter(|(_, v)| v.is_none()).map(|(k, _)| *k)
}

/// What the maps hold, as far as this sync has asked: everything (a full sync
/// reads them whole) or the keys its steps looked at, each read once and then
/// kept up to date with the sync's own writes. Dropped with the sync: the
/// syncer keeps no copy of the maps between syncs (at 10,000 Services that
/// copy was 13 MiB, with Maglev tables 64 KiB per frontend more).
#[derive(Default)]
struct Current {
    held: DesiredServices,
    /// `held` is everything the maps hold.
    whole: bool,
    asked: Asked,
}

/// Keys read one by one, whether the map had them or not.
#[derive(Default)]
struct Asked {
    services: HashSet<ServiceKey>,
    backends: HashSet<u32>,
    revnat: HashSet<u32>,
    maglev: HashSet<u32>,
}

/// `map[key]` as the maps hold it: from what is known, else read once.
fn known<'h, K: Ord + Hash + Copy, V>(
    held: &'h mut BTreeMap<K, V>,
    asked: &mut HashSet<K>,
    whole: bool,
    key: K,
    read: impl FnOnce() -> Result<Option<V>, MapError>,
) -> Result<Option<&'h V>, MapError> {
    if !whole && !asked.contains(&key) {
        if let Some(value) = read()? {
            held.insert(key, value);
        }
        asked.insert(key);
    }
    Ok(held.get(&key))
}

struct Run<'a> {
    maps: &'a mut dyn ServiceMaps,
    current: Current,
    refs: &'a mut Refs,
    report: ServiceReport,
    /// Writes of the current step not made yet.
    queued: Vec<ServiceOp>,
    /// The thread making a large step's first writes while the rest are
    /// decided: started by the sync's first [`CHUNK`], if the maps have one.
    writer: Option<Writer<ServiceOp>>,
    writer_tried: bool,
}

/// Queued writes handed to the writer thread at once: two batches, what the
/// kernel's maps take under one hold of the datapath's lock. (Tests: a few,
/// so that small syncs take the writer's path too.)
#[cfg(not(test))]
const CHUNK: usize = 2 * super::service_maps::BATCH;
#[cfg(test)]
const CHUNK: usize = 4;

fn head_of(key: &ServiceKey) -> ServiceKey {
    ServiceKey { slot: 0, ..*key }
}

/// The slots `1..=count` of the frontend `head` that `map` holds, in slot order.
fn slots(
    map: &BTreeMap<ServiceKey, ServiceValue>,
    head: ServiceKey,
    count: u16,
) -> impl Iterator<Item = (&ServiceKey, &ServiceValue)> {
    let first = ServiceKey {
        slot: 1,
        proto: 0,
        family: 0,
        scope: 0,
        _pad: 0,
        ..head
    };
    let last = ServiceKey {
        slot: count,
        proto: u8::MAX,
        family: u8::MAX,
        scope: u8::MAX,
        _pad: u8::MAX,
        ..head
    };
    map.range(first..=last).filter(move |(k, _)| head_of(k) == head)
}

/// What the maps hold, key by key. A read that fails counts as a failure of
/// the sync (retried) and answers "absent": what is then written is written
/// again next time, what would have been deleted waits for that retry.
impl Run<'_> {
    fn service(&mut self, key: &ServiceKey) -> Option<ServiceValue> {
        let (maps, c) = (&*self.maps, &mut self.current);
        let got = known(&mut c.held.services, &mut c.asked.services, c.whole, *key, || {
            maps.service(key)
        });
        match got {
            Ok(value) => value.copied(),
            Err(e) => {
                self.report.tally.read_failed(names::SERVICES, &e);
                None
            }
        }
    }

    fn backend(&mut self, id: u32) -> Option<Backend> {
        let (maps, c) = (&*self.maps, &mut self.current);
        match known(&mut c.held.backends, &mut c.asked.backends, c.whole, id, || {
            maps.backend(id)
        }) {
            Ok(value) => value.copied(),
            Err(e) => {
                self.report.tally.read_failed(names::BACKENDS, &e);
                None
            }
        }
    }

    fn has_revnat(&mut self, id: u32) -> bool {
        let (maps, c) = (&*self.maps, &mut self.current);
        match known(&mut c.held.revnat, &mut c.asked.revnat, c.whole, id, || {
            maps.revnat(id)
        }) {
            Ok(value) => value.is_some(),
            Err(e) => {
                self.report.tally.read_failed(names::REVNAT, &e);
                false
            }
        }
    }

    fn revnat_is(&mut self, id: u32, want: &weir_common::RevNat) -> bool {
        self.has_revnat(id) && self.current.held.revnat.get(&id) == Some(want)
    }

    fn maglev(&mut self, id: u32) -> Option<&[u32]> {
        let (maps, c) = (&*self.maps, &mut self.current);
        match known(&mut c.held.maglev, &mut c.asked.maglev, c.whole, id, || {
            maps.maglev(id)
        }) {
            Ok(table) => table.map(Vec::as_slice),
            Err(e) => {
                self.report.tally.read_failed(names::MAGLEV, &e);
                None
            }
        }
    }

    /// Makes sure the key `op` writes was read before it is written (the
    /// references follow the value it replaces). A sync that read the maps
    /// whole knows every key already: a search per write of what it holds
    /// (two million at 100,000 Services) took time from the writers' cores.
    fn know(&mut self, op: &ServiceOp) {
        if self.current.whole {
            return;
        }
        match op {
            ServiceOp::PutService(key, _) | ServiceOp::DelService(key) => {
                self.service(key);
            }
            ServiceOp::PutBackend(id, _) | ServiceOp::DelBackend(id) => {
                self.backend(*id);
            }
            ServiceOp::PutRevNat(id, _) | ServiceOp::DelRevNat(id) => {
                self.has_revnat(*id);
            }
            ServiceOp::PutMaglev(id, _) | ServiceOp::DelMaglev(id) => {
                self.maglev(*id);
            }
        }
    }
}

impl Run<'_> {
    /// A write or delete of this sync. Those of one step, which depend on
    /// nothing written in that same step, are queued and go in chunks to the
    /// writer thread or at the step's end ([`Run::flush`]).
    fn op(&mut self, op: ServiceOp) {
        self.know(&op);
        self.queued.push(op);
        if self.queued.len() >= CHUNK {
            self.send_queued();
        }
    }

    /// Hands what is queued to the writer thread, if the maps have one, and
    /// takes in what it has written meanwhile.
    fn send_queued(&mut self) {
        if !self.writer_tried {
            self.writer_tried = true;
            self.writer = self.maps.background().and_then(Writer::start);
        }
        let Some(writer) = &mut self.writer else {
            return;
        };
        let done = match writer.send(std::mem::take(&mut self.queued)) {
            Ok(()) => writer.ready(),
            // The thread is gone: it panicked, and collecting what it had
            // says so here.
            Err(ops) => {
                self.queued = ops;
                writer.collect()
            }
        };
        self.written(done);
    }

    /// What the writer thread did: counted, and what took is known.
    fn written(&mut self, done: Vec<Done<ServiceOp>>) {
        for (ops, results) in done {
            self.report.background_writes += ops.len();
            let took = self.report.tally.record_many(&ops, results);
            self.took_each(&ops, took);
        }
    }

    fn took_each(&mut self, ops: &[ServiceOp], took: Vec<bool>) {
        for (op, took) in ops.iter().zip(took) {
            self.took(op, took);
        }
    }

    /// Ends a step: every write it queued made, those sent to the writer
    /// thread first (decided first); what is known of the maps follows what
    /// took. (What took may be known before the step ends: no decision of a
    /// step looks at a key written earlier in that same step.)
    fn flush(&mut self) {
        let sent = self.writer.as_mut().map(Writer::collect).unwrap_or_default();
        self.written(sent);
        if self.queued.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.queued);
        let took = self.report.tally.write_many(&mut *self.maps, &ops);
        self.took_each(&ops, took);
    }

    fn took(&mut self, op: &ServiceOp, took: bool) {
        if !took {
            return;
        }
        if let ServiceOp::PutMaglev(id, _) | ServiceOp::DelMaglev(id) = op
            && let Some(old) = self.current.held.maglev.get(id)
        {
            self.refs.table(old, -1);
        }
        if let ServiceOp::PutMaglev(_, table) = op {
            self.refs.table(&table.0, 1);
        }
        if let Some((key, old)) = op.apply_to(&mut self.current.held) {
            self.refs.count(&key, &old, -1);
        }
        if let ServiceOp::PutService(key, value) = op {
            self.refs.count(key, value, 1);
        }
    }

    fn put_backends_and_revnat(&mut self, desired: &DesiredServices, keys: &Candidates) {
        for (id, backend) in values_of(&keys.backends, &desired.backends) {
            if let Some(backend) = backend
                && self.backend(*id).as_ref() != Some(backend)
            {
                self.op(ServiceOp::PutBackend(*id, *backend));
            }
        }
        for (id, revnat) in values_of(&keys.revnat, &desired.revnat) {
            if let Some(revnat) = revnat
                && !self.revnat_is(*id, revnat)
            {
                self.op(ServiceOp::PutRevNat(*id, *revnat));
            }
        }
    }

    /// The desired Maglev tables that can be written: the others are reported
    /// and skipped.
    fn valid_tables<'d>(&mut self, desired: &'d DesiredServices, ids: &[u32]) -> BTreeMap<u32, &'d [u32]> {
        let mut valid = BTreeMap::new();
        for (&id, table) in ids.iter().filter_map(|id| desired.maglev.get_key_value(id)) {
            if table.len() == MAGLEV_TABLE_SIZE {
                valid.insert(id, table.as_slice());
            } else {
                self.report.skipped += 1;
                error!(
                    map = names::MAGLEV,
                    rev_nat_id = id,
                    entries = table.len(),
                    expected = MAGLEV_TABLE_SIZE,
                    "maglev table of the wrong size skipped; the frontend picks backends at random"
                );
            }
        }
        valid
    }

    fn put_maglev(&mut self, tables: &BTreeMap<u32, &[u32]>) {
        for (&id, &table) in tables {
            if self.maglev(id) == Some(table) {
                continue;
            }
            if !distinct(table).into_iter().all(|b| self.backend(b).is_some()) {
                self.report.deferred += 1;
                continue;
            }
            // `valid_tables` checked the size.
            if let Some(value) = maglev_value(table) {
                self.op(ServiceOp::PutMaglev(id, value));
            }
        }
    }

    fn put_slots(&mut self, desired: &DesiredServices, keys: &[ServiceKey]) {
        for (key, value) in values_of(keys, &desired.services)
            .filter(|(k, _)| k.slot != 0)
            .filter_map(|(k, v)| Some((k, v?)))
        {
            if self.service(key).as_ref() == Some(value) {
                continue;
            }
            if self.backend(value.backend_id).is_none() {
                self.report.deferred += 1;
                continue;
            }
            self.op(ServiceOp::PutService(*key, *value));
        }
    }

    /// Scope-internal entries first: an external entry that says it has a twin
    /// (`SVC_F_TWO_SCOPES`) is written only once the twin is what it should be.
    fn put_heads(&mut self, desired: &DesiredServices, tables: &BTreeMap<u32, &[u32]>, keys: &[ServiceKey]) {
        for scope in [SCOPE_INTERNAL, SCOPE_EXTERNAL] {
            let heads = keys.iter().filter(|k| k.slot == 0 && k.scope == scope);
            self.put_heads_of(desired, tables, heads);
            // External entries look at their internal twins as written.
            self.flush();
        }
    }

    fn put_heads_of<'k>(
        &mut self,
        desired: &DesiredServices,
        tables: &BTreeMap<u32, &[u32]>,
        heads: impl Iterator<Item = &'k ServiceKey>,
    ) {
        for (key, value) in heads.filter_map(|k| desired.services.get_key_value(k)) {
            if self.service(key).as_ref() == Some(value) {
                continue;
            }
            let twin = ServiceKey {
                scope: SCOPE_INTERNAL,
                ..*key
            };
            let twin_ready = value.flags & SVC_F_TWO_SCOPES == 0
                || key.scope == SCOPE_INTERNAL
                || desired
                    .services
                    .get(&twin)
                    .is_some_and(|t| self.service(&twin).as_ref() == Some(t));
            if !twin_ready {
                self.report.deferred += 1;
                continue;
            }
            let slots_ready = self.slots_ready(desired, key, value.count);
            let table_ready = value.flags & SVC_F_MAGLEV == 0
                || tables
                    .get(&value.rev_nat_id)
                    .is_none_or(|&table| self.maglev(value.rev_nat_id) == Some(table));
            if !slots_ready || !table_ready || !self.has_revnat(value.rev_nat_id) {
                self.report.deferred += 1;
                continue;
            }
            self.op(ServiceOp::PutService(*key, *value));
        }
    }

    /// Whether every slot `1..=count` of the frontend `head` holds what is
    /// desired.
    fn slots_ready(&mut self, desired: &DesiredServices, head: &ServiceKey, count: u16) -> bool {
        if !self.current.whole {
            return (1..=count).all(|slot| {
                let k = ServiceKey { slot, ..*head };
                self.service(&k).as_ref() == desired.services.get(&k)
            });
        }
        // Read whole: the two maps' slots compared as two short runs (the
        // slots lie in key order between slot 1 and slot `count` of the
        // frontend's address and port) rather than a lookup of each in
        // each map: at 100,000 Services, a million lookups fewer.
        count == 0
            || slots(&self.current.held.services, *head, count).eq(slots(&desired.services, *head, count))
    }

    /// Scope-external entries first: an internal entry goes only once its
    /// external twin no longer names it (`SVC_F_TWO_SCOPES`), as deleted.
    fn delete_heads(&mut self, desired: &DesiredServices, keys: &[ServiceKey]) {
        let (external, internal): (Vec<ServiceKey>, Vec<ServiceKey>) = absent(keys, &desired.services)
            .filter(|k| k.slot == 0)
            .partition(|k| k.scope == SCOPE_EXTERNAL);
        for gone in [external, internal] {
            self.delete_heads_of(gone);
            self.flush();
        }
    }

    fn delete_heads_of(&mut self, gone: Vec<ServiceKey>) {
        for key in gone {
            if self.service(&key).is_none() {
                continue;
            }
            // A twin goes only once the entry in the map no longer names it.
            let external = ServiceKey {
                scope: SCOPE_EXTERNAL,
                ..key
            };
            let named = key.scope == SCOPE_INTERNAL
                && self
                    .service(&external)
                    .is_some_and(|v| v.flags & SVC_F_TWO_SCOPES != 0);
            if named {
                self.report.deferred += 1;
                continue;
            }
            self.op(ServiceOp::DelService(key));
        }
    }

    fn delete_maglev(
        &mut self,
        desired: &DesiredServices,
        tables: &BTreeMap<u32, &[u32]>,
        keys: &Candidates,
    ) {
        for &id in &keys.maglev {
            if tables.contains_key(&id) || self.maglev(id).is_none() {
                continue;
            }
            // A Maglev service entry still in the map that uses the table and is
            // not yet what it should be (its write failed): keep the table for
            // it. Only a candidate can be such an entry: every other key holds
            // what it should (a sync that fails is retried with its keys).
            let in_use = keys.services.iter().filter(|k| k.slot == 0).any(|k| {
                self.service(k).is_some_and(|v| {
                    v.rev_nat_id == id && v.flags & SVC_F_MAGLEV != 0 && desired.services.get(k) != Some(&v)
                })
            });
            if in_use {
                self.report.deferred += 1;
                continue;
            }
            self.op(ServiceOp::DelMaglev(id));
        }
    }

    fn delete_slots(&mut self, desired: &DesiredServices, keys: &[ServiceKey]) {
        let gone: Vec<ServiceKey> = absent(keys, &desired.services).filter(|k| k.slot != 0).collect();
        for key in gone {
            if self.service(&key).is_none() {
                continue;
            }
            // Only a slot the service entry in the map no longer counts.
            let counted = self
                .service(&head_of(&key))
                .is_some_and(|head| key.slot <= head.count);
            if counted {
                self.report.deferred += 1;
                continue;
            }
            self.op(ServiceOp::DelService(key));
        }
    }

    fn delete_unreferenced(&mut self, desired: &DesiredServices, keys: &Candidates) {
        for id in absent(&keys.backends, &desired.backends) {
            if self.backend(id).is_none() {
                continue;
            }
            if self.refs.slots.contains_key(&id) || self.refs.tables.contains_key(&id) {
                self.report.deferred += 1;
            } else {
                self.op(ServiceOp::DelBackend(id));
            }
        }
        for id in absent(&keys.revnat, &desired.revnat) {
            if !self.has_revnat(id) {
                continue;
            }
            if self.refs.revnat.contains_key(&id) {
                self.report.deferred += 1;
            } else {
                self.op(ServiceOp::DelRevNat(id));
            }
        }
    }

    /// Connectionless backends (address, port, protocol) in the maps but not
    /// desired: as kube-proxy does for UDP, their conntrack entries must go, or
    /// clients keep sending into the void until the entry times out. TCP needs
    /// no flush: the client sees a reset or a timeout and reconnects through a
    /// fresh lookup.
    ///
    /// Among `ids`, the backends that go; an id stands for one (address, port,
    /// protocol) while it is in use, so a backend whose id goes is gone.
    fn gone_datagram_backends(&mut self, desired: &DesiredServices, ids: &[u32]) -> Vec<Backend> {
        let identity = |b: &Backend| (b.addr, b.port, b.proto, b.family);
        let mut gone: Vec<Backend> = Vec::new();
        for id in absent(ids, &desired.backends) {
            if let Some(backend) = self.backend(id)
                && backend.proto != IPPROTO_TCP
            {
                gone.push(backend);
            }
        }
        gone.sort();
        gone.dedup_by_key(|b| identity(b));
        gone
    }
}
