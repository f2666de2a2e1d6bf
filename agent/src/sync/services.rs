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
//! The writes of each step go to the kernel together, in batches of one map's
//! writes (`BPF_MAP_UPDATE_BATCH`), once the step has decided them all: none of
//! them depends on another of its step (internal service entries, which
//! external ones look at, are a step of their own). Deletes go one by one.
//!
//! A write that fails (map full, ...) is logged and counted, the entries that depend
//! on it are deferred, and the next sync retries: nothing is ever flushed, so a
//! restarted agent reads the maps back, diffs and writes only what changed.
//!
//! A sync looks at every entry ([`Changed::All`]) or only at the keys an
//! incremental compile touched ([`Changed::Keys`]): with 10,000 Services, a
//! change of one EndpointSlice then costs what it touches, not a walk of the
//! maps. What the ordering rules need to know of the rest (which slots name a
//! backend, which entries use a reverse-NAT id) is kept in reference counts
//! updated with each write.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use tracing::error;
use weir_common::{
    Backend, IPPROTO_TCP, MAGLEV_TABLE_SIZE, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_AFFINITY, SVC_F_MAGLEV,
    SVC_F_TWO_SCOPES, ServiceKey, ServiceValue,
};
use weir_model::{
    DesiredServices, IdAllocator, NodeContext,
    services::{Changed, ServiceCompiler},
};

use super::{
    MapOp as _, Maps, SyncError, Tally,
    service_maps::{ServiceOp, maglev_value},
};

#[cfg(test)]
#[path = "services_tests.rs"]
mod tests;

pub struct ServiceSyncer {
    /// What the maps hold, as far as the writes we made (or read back) tell.
    current: DesiredServices,
    refs: Refs,
    /// Failed writes since the agent started.
    pub failures_total: u64,
}

/// What references what in `current`, kept with each write.
#[derive(Debug, Default)]
struct Refs {
    /// Backend id -> slots naming it.
    slots: HashMap<u32, u32>,
    /// Reverse-NAT id -> entries (slot 0 and slots) using it.
    revnat: HashMap<u32, u32>,
    /// Rev-NAT id -> affinity timeout of the frontends with session affinity.
    affinity: BTreeMap<u32, u32>,
}

impl Refs {
    fn count(&mut self, key: &ServiceKey, value: &ServiceValue, delta: i32) {
        let bump = |map: &mut HashMap<u32, u32>, id: u32| {
            let n = map.entry(id).or_default();
            *n = n.saturating_add_signed(delta);
            if *n == 0 {
                map.remove(&id);
            }
        };
        bump(&mut self.revnat, value.rev_nat_id);
        if key.slot != 0 {
            bump(&mut self.slots, value.backend_id);
        } else if delta > 0 && value.flags & SVC_F_AFFINITY != 0 {
            self.affinity.insert(value.rev_nat_id, value.affinity_timeout);
        } else if delta < 0 {
            self.affinity.remove(&value.rev_nat_id);
        }
    }
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct ServiceReport {
    /// Writes, deletes and failures.
    pub tally: Tally,
    /// Entries held back because what they depend on failed to be written.
    pub deferred: usize,
    /// Desired entries that cannot be written at all (a Maglev table of the wrong
    /// size): logged as errors; retrying would not help.
    pub skipped: usize,
    /// UDP/SCTP backends (address, port, protocol) that are gone: their conntrack
    /// entries should be flushed so that clients move on.
    pub gone_datagram_backends: Vec<Backend>,
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
    pub fn new(maps: &dyn Maps<ServiceOp>) -> Result<Self, SyncError> {
        let current = maps.read()?;
        let mut refs = Refs::default();
        for (key, value) in &current.services {
            refs.count(key, value, 1);
        }
        Ok(Self {
            current,
            refs,
            failures_total: 0,
        })
    }

    /// A compiler for `node` that keeps the ids found in the maps, so established
    /// flows keep their backend and rev-NAT ids.
    pub fn compiler(&self, node: NodeContext) -> ServiceCompiler {
        ServiceCompiler::new(node, IdAllocator::from_desired(&self.current))
    }

    pub fn current(&self) -> &DesiredServices {
        &self.current
    }

    /// `rev_nat_id -> affinity timeout (s)` of the frontends with session affinity
    /// now in the maps (for the affinity GC).
    pub fn affinity_timeouts(&self) -> BTreeMap<u32, u32> {
        self.refs.affinity.clone()
    }

    /// Writes the difference between the maps and `desired` (among the keys
    /// `changed` names).
    pub fn apply(
        &mut self,
        maps: &mut dyn Maps<ServiceOp>,
        desired: &DesiredServices,
        changed: &Changed,
    ) -> ServiceReport {
        let start = Instant::now();
        let keys = Candidates::of(changed, &self.current, desired);
        let mut run = Run {
            maps,
            current: &mut self.current,
            refs: &mut self.refs,
            report: ServiceReport::default(),
            queued: Vec::new(),
        };
        run.report.gone_datagram_backends = gone_datagram_backends(run.current, desired, &keys.backends);
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
        run.delete_maglev(desired, &tables, &keys.maglev);
        run.delete_slots(desired, &keys.services);
        run.delete_unreferenced(desired, &keys);
        let mut report = run.report;
        report.tally.finish();
        self.failures_total += report.tally.failed as u64;
        report.duration = start.elapsed();
        report
    }
}

/// The keys a sync looks at, per map, in key order (the order of the writes).
struct Candidates {
    services: Vec<ServiceKey>,
    backends: Vec<u32>,
    revnat: Vec<u32>,
    maglev: Vec<u32>,
}

impl Candidates {
    fn of(changed: &Changed, current: &DesiredServices, desired: &DesiredServices) -> Self {
        fn union<K: Ord + Copy, A, B>(a: &BTreeMap<K, A>, b: &BTreeMap<K, B>) -> Vec<K> {
            a.keys()
                .chain(b.keys())
                .copied()
                .collect::<BTreeSet<K>>()
                .into_iter()
                .collect()
        }
        match changed {
            Changed::All => Self {
                services: union(&current.services, &desired.services),
                backends: union(&current.backends, &desired.backends),
                revnat: union(&current.revnat, &desired.revnat),
                maglev: union(&current.maglev, &desired.maglev),
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

struct Run<'a> {
    maps: &'a mut dyn Maps<ServiceOp>,
    current: &'a mut DesiredServices,
    refs: &'a mut Refs,
    report: ServiceReport,
    /// Writes of the current step not made yet.
    queued: Vec<ServiceOp>,
}

fn head_of(key: &ServiceKey) -> ServiceKey {
    ServiceKey { slot: 0, ..*key }
}

impl Run<'_> {
    /// A write of this sync. Writes go out in order; those of one step that
    /// depend on nothing written in that same step are queued and go together
    /// at its end ([`Run::flush`]), deletes one by one.
    fn op(&mut self, op: ServiceOp) {
        if op.is_delete() {
            self.flush();
            let took = self.report.tally.write(&mut *self.maps, &op);
            self.took(&op, took);
        } else {
            self.queued.push(op);
        }
    }

    /// Writes what is queued; the record of the maps follows what took.
    fn flush(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.queued);
        let took = self.report.tally.write_many(&mut *self.maps, &ops);
        for (op, took) in ops.iter().zip(took) {
            self.took(op, took);
        }
    }

    fn took(&mut self, op: &ServiceOp, took: bool) {
        if !took {
            return;
        }
        if let Some((key, old)) = op.apply_to(self.current) {
            self.refs.count(&key, &old, -1);
        }
        if let ServiceOp::PutService(key, value) = op {
            self.refs.count(key, value, 1);
        }
    }

    fn put_backends_and_revnat(&mut self, desired: &DesiredServices, keys: &Candidates) {
        for id in &keys.backends {
            if let Some(backend) = desired.backends.get(id)
                && self.current.backends.get(id) != Some(backend)
            {
                self.op(ServiceOp::PutBackend(*id, *backend));
            }
        }
        for id in &keys.revnat {
            if let Some(revnat) = desired.revnat.get(id)
                && self.current.revnat.get(id) != Some(revnat)
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
                    map = weir_common::maps::MAGLEV,
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
            if self.current.maglev.get(&id).map(Vec::as_slice) == Some(table) {
                continue;
            }
            let named: BTreeSet<u32> = table.iter().copied().collect();
            if !named.iter().all(|b| self.current.backends.contains_key(b)) {
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
        for (key, value) in keys
            .iter()
            .filter(|k| k.slot != 0)
            .filter_map(|k| desired.services.get_key_value(k))
        {
            if self.current.services.get(key) == Some(value) {
                continue;
            }
            if !self.current.backends.contains_key(&value.backend_id) {
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
            if self.current.services.get(key) == Some(value) {
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
                    .is_some_and(|t| self.current.services.get(&twin) == Some(t));
            if !twin_ready {
                self.report.deferred += 1;
                continue;
            }
            let slots_ready = (1..=value.count).all(|slot| {
                let k = ServiceKey { slot, ..*key };
                self.current.services.get(&k) == desired.services.get(&k)
            });
            let table_ready = value.flags & SVC_F_MAGLEV == 0
                || tables.get(&value.rev_nat_id).is_none_or(|&table| {
                    self.current.maglev.get(&value.rev_nat_id).map(Vec::as_slice) == Some(table)
                });
            if !slots_ready || !table_ready || !self.current.revnat.contains_key(&value.rev_nat_id) {
                self.report.deferred += 1;
                continue;
            }
            self.op(ServiceOp::PutService(*key, *value));
        }
    }

    fn delete_heads(&mut self, desired: &DesiredServices, keys: &[ServiceKey]) {
        let gone: Vec<ServiceKey> = keys
            .iter()
            .filter(|k| {
                k.slot == 0 && self.current.services.contains_key(k) && !desired.services.contains_key(k)
            })
            .copied()
            .collect();
        for key in gone {
            // A twin goes only once the entry in the map no longer names it.
            let external = ServiceKey {
                scope: SCOPE_EXTERNAL,
                ..key
            };
            let named = key.scope == SCOPE_INTERNAL
                && self
                    .current
                    .services
                    .get(&external)
                    .is_some_and(|v| v.flags & SVC_F_TWO_SCOPES != 0);
            if named {
                self.report.deferred += 1;
                continue;
            }
            self.op(ServiceOp::DelService(key));
        }
    }

    fn delete_maglev(&mut self, desired: &DesiredServices, tables: &BTreeMap<u32, &[u32]>, ids: &[u32]) {
        let gone: Vec<u32> = ids
            .iter()
            .filter(|id| self.current.maglev.contains_key(id) && !tables.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            // A Maglev service entry still in the map that uses the table and is
            // not yet what it should be (its write failed): keep the table for it.
            let in_use = self.current.services.iter().any(|(k, v)| {
                k.slot == 0
                    && v.rev_nat_id == id
                    && v.flags & SVC_F_MAGLEV != 0
                    && desired.services.get(k) != Some(v)
            });
            if in_use {
                self.report.deferred += 1;
                continue;
            }
            self.op(ServiceOp::DelMaglev(id));
        }
    }

    fn delete_slots(&mut self, desired: &DesiredServices, keys: &[ServiceKey]) {
        let gone: Vec<ServiceKey> = keys
            .iter()
            .filter(|k| {
                k.slot != 0 && self.current.services.contains_key(k) && !desired.services.contains_key(k)
            })
            .copied()
            .collect();
        for key in gone {
            // Only a slot the service entry in the map no longer counts.
            let counted = self
                .current
                .services
                .get(&head_of(&key))
                .is_some_and(|head: &ServiceValue| key.slot <= head.count);
            if counted {
                self.report.deferred += 1;
                continue;
            }
            self.op(ServiceOp::DelService(key));
        }
    }

    fn delete_unreferenced(&mut self, desired: &DesiredServices, keys: &Candidates) {
        let gone: Vec<u32> = keys
            .backends
            .iter()
            .filter(|id| self.current.backends.contains_key(id) && !desired.backends.contains_key(id))
            .copied()
            .collect();
        let mut in_tables: BTreeSet<u32> = BTreeSet::new();
        if !gone.is_empty() {
            // Tables are large: only look in them for the backends about to go.
            let gone_set: BTreeSet<u32> = gone.iter().copied().collect();
            for table in self.current.maglev.values() {
                in_tables.extend(table.iter().filter(|id| gone_set.contains(id)));
            }
        }
        for id in gone {
            if self.refs.slots.contains_key(&id) || in_tables.contains(&id) {
                self.report.deferred += 1;
            } else {
                self.op(ServiceOp::DelBackend(id));
            }
        }
        let gone: Vec<u32> = keys
            .revnat
            .iter()
            .filter(|id| self.current.revnat.contains_key(id) && !desired.revnat.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            if self.refs.revnat.contains_key(&id) {
                self.report.deferred += 1;
            } else {
                self.op(ServiceOp::DelRevNat(id));
            }
        }
    }
}

/// Connectionless backends (address, port, protocol) in the maps but not desired:
/// as kube-proxy does for UDP, their conntrack entries must go, or clients keep
/// sending into the void until the entry times out. TCP needs no flush: the
/// client sees a reset or a timeout and reconnects through a fresh lookup.
///
/// Among `ids`, the backends that go; an id stands for one (address, port,
/// protocol) while it is in use, so a backend whose id goes is gone.
fn gone_datagram_backends(current: &DesiredServices, desired: &DesiredServices, ids: &[u32]) -> Vec<Backend> {
    let identity = |b: &Backend| (b.addr, b.port, b.proto, b.family);
    let mut gone: Vec<Backend> = ids
        .iter()
        .filter(|id| !desired.backends.contains_key(id))
        .filter_map(|id| current.backends.get(id))
        .filter(|b| b.proto != IPPROTO_TCP)
        .copied()
        .collect();
    gone.sort();
    gone.dedup_by_key(|b| identity(b));
    gone
}
