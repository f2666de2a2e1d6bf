//! Stable ids for reverse-NAT entries and backends.
//!
//! Ids are what the datapath stores in conntrack and affinity entries, so an entry
//! keeps its id for as long as it exists: a recompile must not renumber a backend
//! that did not change, or established connections would be sent elsewhere. Ids of
//! vanished entries are released, and handed out again only after the rest of the
//! id space (round robin from a cursor, as IPAM hands out addresses): state the
//! datapath still holds under an old id (conntrack and affinity entries, a slot
//! not yet rewritten after a partial sync) must not meet a new owner of that id.
//! After an agent restart, [`IdAllocator::from_desired`] rebuilds the assignment from
//! the map contents read back from the pinned maps.

use std::collections::{BTreeMap, btree_map::Entry};

use weir_common::{Backend, ServiceKey};

use crate::services::DesiredServices;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("no free {kind} id: all {max} are in use")]
    Exhausted { kind: IdKind, max: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    RevNat,
    Backend,
}

impl std::fmt::Display for IdKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdKind::RevNat => "reverse-NAT",
            IdKind::Backend => "backend",
        })
    }
}

/// A set of ids in `1..=max`, handing out the first free one at or after a cursor
/// that moves past every id handed out (wrapping around at `max`). The free ids
/// are kept as disjoint ranges, so a pool rebuilt from sparse ids costs memory per
/// gap, not per id.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IdPool {
    kind: IdKind,
    max: u32,
    /// Free ranges, start -> end (inclusive).
    free: BTreeMap<u32, u32>,
    /// Where the search for the next id starts.
    next: u32,
}

impl IdPool {
    fn new(kind: IdKind, max: u32) -> Self {
        let mut free = BTreeMap::new();
        if max >= 1 {
            free.insert(1, max);
        }
        Self {
            kind,
            max,
            free,
            next: 1,
        }
    }

    fn allocate(&mut self) -> Result<u32, IdError> {
        let exhausted = IdError::Exhausted {
            kind: self.kind,
            max: self.max,
        };
        // The free range holding the cursor, else the next one, else (wrapping
        // around) the first.
        let id = match self.free.range(..=self.next).next_back() {
            Some((_, &end)) if end >= self.next => self.next,
            _ => match self.free.range(self.next..).next() {
                Some((&start, _)) => start,
                None => *self.free.keys().next().ok_or(exhausted)?,
            },
        };
        self.reserve(id);
        self.next = if id >= self.max { 1 } else { id + 1 };
        Ok(id)
    }

    /// Marks `id` used. False if it is out of range or already used.
    fn reserve(&mut self, id: u32) -> bool {
        let Some((&start, &end)) = self.free.range(..=id).next_back() else {
            return false;
        };
        if id > end {
            return false;
        }
        self.free.remove(&start);
        if start < id {
            self.free.insert(start, id - 1);
        }
        if id < end {
            self.free.insert(id + 1, end);
        }
        // Ids read back after a restart: continue after the highest, so that ids
        // released just before the restart still wait their turn.
        if id >= self.next {
            self.next = if id >= self.max { 1 } else { id + 1 };
        }
        true
    }

    fn release(&mut self, id: u32) {
        if id == 0 || id > self.max {
            return;
        }
        let (mut start, mut end) = (id, id);
        if let Some((&s, &e)) = self.free.range(..=id).next_back() {
            if e >= id {
                return; // already free
            }
            if e + 1 == id {
                self.free.remove(&s);
                start = s;
            }
        }
        if let Some(&e) = id.checked_add(1).and_then(|next| self.free.get(&next)) {
            self.free.remove(&(id + 1));
            end = e;
        }
        self.free.insert(start, end);
    }
}

/// Assigns reverse-NAT ids (`1..=` the reverse-NAT map's capacity) to frontends
/// and backend ids (u32, `>= 1`) to backends.
///
/// A frontend is keyed by its [`ServiceKey`] with `slot` 0 (address, port, protocol,
/// family, scope); a backend by its [`Backend`] with `state` zeroed (address, port,
/// protocol, family): a backend turning terminating keeps its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdAllocator {
    rev_nat: BTreeMap<ServiceKey, u32>,
    backends: BTreeMap<Backend, u32>,
    rev_nat_pool: IdPool,
    backend_pool: IdPool,
}

impl Default for IdAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl IdAllocator {
    pub fn new() -> Self {
        Self::with_limits(weir_common::maps::REVNAT_ENTRIES, u32::MAX)
    }

    /// An allocator with smaller id spaces (tests of exhaustion).
    pub fn with_limits(max_rev_nat: u32, max_backend: u32) -> Self {
        Self {
            rev_nat: BTreeMap::new(),
            backends: BTreeMap::new(),
            rev_nat_pool: IdPool::new(IdKind::RevNat, max_rev_nat),
            backend_pool: IdPool::new(IdKind::Backend, max_backend),
        }
    }

    /// The assignment found in map contents written by an earlier agent: every
    /// service entry's rev-NAT id and every backend's id are kept. Conflicting
    /// entries (an id claimed twice) keep the first claim in key order; the others
    /// get new ids at the next compile.
    pub fn from_desired(desired: &DesiredServices) -> Self {
        let mut ids = Self::new();
        for (key, value) in desired.services.iter().filter(|(key, _)| key.slot == 0) {
            if value.rev_nat_id != 0 && ids.rev_nat_pool.reserve(value.rev_nat_id) {
                ids.rev_nat.entry(frontend_key(key)).or_insert(value.rev_nat_id);
            }
        }
        for (&id, backend) in &desired.backends {
            if ids.backend_pool.reserve(id) {
                ids.backends.entry(backend_key(backend)).or_insert(id);
            }
        }
        ids
    }

    /// The reverse-NAT id of a frontend (any slot of it), allocating one if new.
    pub fn rev_nat_id(&mut self, frontend: &ServiceKey) -> Result<u32, IdError> {
        id_of(&mut self.rev_nat, &mut self.rev_nat_pool, frontend_key(frontend))
    }

    /// The id of a backend (whatever its state), allocating one if new.
    pub fn backend_id(&mut self, backend: &Backend) -> Result<u32, IdError> {
        id_of(&mut self.backends, &mut self.backend_pool, backend_key(backend))
    }

    /// Releases the id of a frontend (any slot of it) that is gone.
    pub fn release_frontend(&mut self, frontend: &ServiceKey) {
        if let Some(id) = self.rev_nat.remove(&frontend_key(frontend)) {
            self.rev_nat_pool.release(id);
        }
    }

    /// Releases the id of a backend (whatever its state) that is gone.
    pub fn release_backend(&mut self, backend: &Backend) {
        if let Some(id) = self.backends.remove(&backend_key(backend)) {
            self.backend_pool.release(id);
        }
    }

    /// Rebuilds its maps with full B-tree leaves (after a full compile).
    pub fn pack(&mut self) {
        use crate::services::packed;
        self.rev_nat = packed(std::mem::take(&mut self.rev_nat));
        self.backends = packed(std::mem::take(&mut self.backends));
    }

    /// Releases the ids of every frontend and backend absent from `desired`.
    /// A full compile ([`crate::services::ServiceCompiler::compile_all`]) calls it
    /// at its end.
    pub fn retain_only(&mut self, desired: &DesiredServices) {
        let live_rev_nat: std::collections::BTreeSet<ServiceKey> =
            desired.services.keys().map(frontend_key).collect();
        let pool = &mut self.rev_nat_pool;
        self.rev_nat.retain(|key, id| {
            let keep = live_rev_nat.contains(key);
            if !keep {
                pool.release(*id);
            }
            keep
        });
        let live_backends: std::collections::BTreeSet<Backend> =
            desired.backends.values().map(backend_key).collect();
        let pool = &mut self.backend_pool;
        self.backends.retain(|key, id| {
            let keep = live_backends.contains(key);
            if !keep {
                pool.release(*id);
            }
            keep
        });
    }

    /// Number of (frontends, backends) holding an id.
    pub fn in_use(&self) -> (usize, usize) {
        (self.rev_nat.len(), self.backends.len())
    }
}

/// The id `key` holds, or one allocated to it: one search of `ids` either way
/// (a cluster's first compile allocates a million).
fn id_of<K: Ord>(ids: &mut BTreeMap<K, u32>, pool: &mut IdPool, key: K) -> Result<u32, IdError> {
    match ids.entry(key) {
        Entry::Occupied(held) => Ok(*held.get()),
        Entry::Vacant(free) => Ok(*free.insert(pool.allocate()?)),
    }
}

fn frontend_key(key: &ServiceKey) -> ServiceKey {
    ServiceKey {
        slot: 0,
        _pad: 0,
        ..*key
    }
}

fn backend_key(backend: &Backend) -> Backend {
    Backend {
        state: 0,
        _pad: [0; 3],
        ..*backend
    }
}

#[cfg(test)]
mod tests {
    use weir_common::{AF_INET, BACKEND_TERMINATING, IPPROTO_TCP};

    use super::*;

    fn frontend(last: u8, port: u16) -> ServiceKey {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[10, 96, 0, last]);
        ServiceKey {
            addr,
            port: port.to_be(),
            proto: IPPROTO_TCP,
            family: AF_INET,
            ..Default::default()
        }
    }

    fn backend(last: u8) -> Backend {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[10, 0, 0, last]);
        Backend {
            addr,
            port: 80u16.to_be(),
            proto: IPPROTO_TCP,
            family: AF_INET,
            ..Default::default()
        }
    }

    #[test]
    fn pool_reuses_released_ids_last_and_merges_ranges() {
        let mut pool = IdPool::new(IdKind::Backend, 10);
        let ids: Vec<u32> = (0..5).map(|_| pool.allocate().expect("free id")).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        pool.release(4);
        pool.release(2);
        pool.release(3);
        assert_eq!(
            pool.free.iter().map(|(s, e)| (*s, *e)).collect::<Vec<_>>(),
            [(2, 4), (6, 10)]
        );
        // Released ids wait for the rest of the space: 6 first, not 2.
        assert_eq!(pool.allocate(), Ok(6));
        pool.release(6);
        assert_eq!(
            (0..4).map(|_| pool.allocate().expect("id")).collect::<Vec<_>>(),
            [7, 8, 9, 10]
        );
        // Then the cursor wraps around to the oldest releases.
        assert_eq!(pool.allocate(), Ok(2));
        assert_eq!(pool.allocate(), Ok(3));
        pool.release(7);
        pool.release(8);
        pool.release(10);
        assert!(!pool.reserve(9), "9 is in use");
        pool.release(9);
        assert!(pool.reserve(9));
        assert!(!pool.reserve(9));
        assert!(!pool.reserve(11));
        assert_eq!(
            pool.free.iter().map(|(s, e)| (*s, *e)).collect::<Vec<_>>(),
            [(4, 4), (6, 8), (10, 10)]
        );
        pool.release(5);
        assert_eq!(
            pool.free.iter().map(|(s, e)| (*s, *e)).collect::<Vec<_>>(),
            [(4, 8), (10, 10)]
        );
    }

    #[test]
    fn after_a_restart_the_cursor_resumes_past_the_highest_id_read_back() {
        let mut pool = IdPool::new(IdKind::Backend, 10);
        assert!(pool.reserve(3));
        assert!(pool.reserve(7));
        assert_eq!(
            pool.allocate(),
            Ok(8),
            "ids below 7 may have been released just before the restart"
        );
    }

    #[test]
    fn ids_are_stable_per_key_and_ignore_slot_and_state() {
        let mut ids = IdAllocator::new();
        let a = ids.rev_nat_id(&frontend(1, 80)).expect("id");
        let b = ids.rev_nat_id(&frontend(1, 443)).expect("id");
        assert_eq!((a, b), (1, 2));
        assert_eq!(
            ids.rev_nat_id(&ServiceKey {
                slot: 3,
                ..frontend(1, 80)
            }),
            Ok(1)
        );
        let x = ids.backend_id(&backend(1)).expect("id");
        assert_eq!(
            ids.backend_id(&Backend {
                state: BACKEND_TERMINATING,
                ..backend(1)
            }),
            Ok(x)
        );
    }

    #[test]
    fn exhaustion_is_an_error_not_a_panic() {
        let mut ids = IdAllocator::with_limits(1, 2);
        assert_eq!(ids.rev_nat_id(&frontend(1, 80)), Ok(1));
        assert_eq!(
            ids.rev_nat_id(&frontend(2, 80)),
            Err(IdError::Exhausted {
                kind: IdKind::RevNat,
                max: 1
            })
        );
        assert_eq!(ids.backend_id(&backend(1)), Ok(1));
        assert_eq!(ids.backend_id(&backend(2)), Ok(2));
        assert!(ids.backend_id(&backend(3)).is_err());
    }
}
