//! The service maps as the syncer sees them: read everything or one key, apply
//! one change at a time, to the kernel's maps or (tests) to maps in memory.

use std::{collections::BTreeMap, fmt, net::SocketAddr};

use aya::{
    Pod,
    maps::{IterableMap as _, MapData, MapError},
};
use weir_common::{Backend, MAGLEV_TABLE_SIZE, MaglevTable, RevNat, ServiceKey, ServiceValue, maps as names};
use weir_model::{DesiredServices, services::socket_addr};

use super::{MapOp, Maps, SharedDatapath, SyncError};
use crate::datapath::{Datapath, batch, is_not_found, maps};

/// The service maps, also read one key at a time: the syncer keeps no copy of
/// them, it asks for what a sync needs to know.
pub trait ServiceMaps: Maps<ServiceOp> {
    fn service(&self, key: &ServiceKey) -> Result<Option<ServiceValue>, MapError>;
    fn backend(&self, id: u32) -> Result<Option<Backend>, MapError>;
    fn revnat(&self, id: u32) -> Result<Option<RevNat>, MapError>;
    fn maglev(&self, id: u32) -> Result<Option<Vec<u32>>, MapError>;
}

/// A lookup's answer with "no such key" as `None`.
fn found<V>(result: Result<V, MapError>) -> Result<Option<V>, MapError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One write to one service map.
#[derive(Clone, Debug)]
pub enum ServiceOp {
    PutBackend(u32, Backend),
    PutRevNat(u32, RevNat),
    /// A frontend's Maglev table, by rev-NAT id (boxed: 64 KiB).
    PutMaglev(u32, Box<MaglevTable>),
    PutService(ServiceKey, ServiceValue),
    DelService(ServiceKey),
    DelMaglev(u32),
    DelBackend(u32),
    DelRevNat(u32),
}

impl MapOp for ServiceOp {
    type Contents = DesiredServices;

    fn map(&self) -> &'static str {
        match self {
            Self::PutBackend(..) | Self::DelBackend(_) => names::BACKENDS,
            Self::PutRevNat(..) | Self::DelRevNat(_) => names::REVNAT,
            Self::PutService(..) | Self::DelService(_) => names::SERVICES,
            Self::PutMaglev(..) | Self::DelMaglev(_) => names::MAGLEV,
        }
    }

    fn is_delete(&self) -> bool {
        matches!(
            self,
            Self::DelService(_) | Self::DelMaglev(_) | Self::DelBackend(_) | Self::DelRevNat(_)
        )
    }
}

impl ServiceOp {
    /// A write or delete of one of the maps that take batches (not of the
    /// Maglev tables: few, and 64 KiB each).
    fn batchable(&self) -> bool {
        !matches!(self, Self::PutMaglev(..) | Self::DelMaglev(_))
    }

    /// Whether `self` goes in one batch with `other`: one map, one command.
    fn batches_with(&self, other: &Self) -> bool {
        self.batchable() && self.map() == other.map() && self.is_delete() == other.is_delete()
    }

    /// The write, done to maps held in memory; the service entry it replaced or
    /// removed, if any.
    pub fn apply_to(&self, maps: &mut DesiredServices) -> Option<(ServiceKey, ServiceValue)> {
        match self {
            Self::PutBackend(id, b) => {
                maps.backends.insert(*id, *b);
            }
            Self::PutRevNat(id, r) => {
                maps.revnat.insert(*id, *r);
            }
            Self::PutMaglev(id, table) => {
                maps.maglev.insert(*id, table.0.to_vec());
            }
            Self::PutService(k, v) => return maps.services.insert(*k, *v).map(|old| (*k, old)),
            Self::DelService(k) => return maps.services.remove(k).map(|old| (*k, old)),
            Self::DelMaglev(id) => {
                maps.maglev.remove(id);
            }
            Self::DelBackend(id) => {
                maps.backends.remove(id);
            }
            Self::DelRevNat(id) => {
                maps.revnat.remove(id);
            }
        }
        None
    }
}

/// Writes per batch system call.
pub(super) const BATCH: usize = 4_096;

/// Of a batch of `chunk` (writes, or deletes, of one map), how many were
/// made: all, or those before the one that stopped it.
fn batch_written(dp: &Datapath, chunk: &[ServiceOp]) -> usize {
    use ServiceOp::*;
    let made = match chunk.first() {
        Some(PutService(..) | DelService(_)) => one_map(dp.services.map(), chunk, |op| match op {
            PutService(k, v) => Some((*k, Some(*v))),
            DelService(k) => Some((*k, None)),
            _ => None,
        }),
        Some(PutBackend(..) | DelBackend(_)) => one_map(dp.backends.map(), chunk, |op| match op {
            PutBackend(k, v) => Some((*k, Some(*v))),
            DelBackend(k) => Some((*k, None)),
            _ => None,
        }),
        Some(PutRevNat(..) | DelRevNat(_)) => one_map(dp.revnat.map(), chunk, |op| match op {
            PutRevNat(k, v) => Some((*k, Some(*v))),
            DelRevNat(k) => Some((*k, None)),
            _ => None,
        }),
        // Not a batch: one by one (by the caller).
        _ => return 0,
    };
    made.map_or_else(|(n, _)| n, |()| chunk.len())
}

/// One batch of `map`'s writes, or of its deletes (`chunk` is one or the
/// other: [`ServiceOp::batches_with`]), `entry` giving each op's key and the
/// value it writes.
fn one_map<K: Pod, V: Pod>(
    map: &MapData,
    chunk: &[ServiceOp],
    entry: impl Fn(&ServiceOp) -> Option<(K, Option<V>)>,
) -> Result<(), (usize, MapError)> {
    let (keys, values): (Vec<K>, Vec<Option<V>>) = chunk.iter().filter_map(entry).unzip();
    match values.into_iter().collect::<Option<Vec<V>>>() {
        Some(values) => batch::update(map, &keys, &values),
        None => batch::delete(map, &keys),
    }
}

impl SharedDatapath {
    /// Up to two batches of one map's writes or deletes (`pair`: what two
    /// batches take), each one's result into `out`, in order. The two go to
    /// the kernel at once, from two threads under one hold of the lock: a hash
    /// map's inserts take a lock per bucket, so they proceed side by side, and most
    /// of a large sync's time is the kernel's work per entry. (A step's
    /// writes have no order among themselves; each step ends with its
    /// writes made.) What a failed batch did not write is written one by
    /// one, so that each write has its own result (the one that stopped it
    /// fails again, with its own error).
    fn batches(&mut self, pair: &[ServiceOp], out: &mut Vec<Result<(), MapError>>) {
        let (first, second) = pair.split_at(pair.len().min(BATCH));
        let written = {
            let dp = self.lock();
            let dp: &Datapath = &dp;
            if second.is_empty() {
                [batch_written(dp, first), 0]
            } else {
                std::thread::scope(|s| {
                    // No thread to be had (a pids limit): one after the other.
                    let other = std::thread::Builder::new()
                        .name("map-writes".into())
                        .spawn_scoped(s, || batch_written(dp, second))
                        .ok();
                    let one = batch_written(dp, first);
                    let other = match other {
                        // A panic there is one here.
                        Some(t) => t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                        None => batch_written(dp, second),
                    };
                    [one, other]
                })
            }
        };
        for (chunk, written) in [first, second].into_iter().zip(written) {
            out.extend((0..written).map(|_| Ok(())));
            for op in &chunk[written..] {
                out.push(self.apply(op));
            }
        }
    }
}

/// The map value for a compiled table, `None` unless it has exactly
/// [`MAGLEV_TABLE_SIZE`] entries (the size the datapath indexes with).
pub fn maglev_value(table: &[u32]) -> Option<Box<MaglevTable>> {
    let entries: [u32; MAGLEV_TABLE_SIZE] = table.try_into().ok()?;
    Some(Box::new(MaglevTable(entries)))
}

/// The key in human terms, for logs: `10.96.0.1:80/6 slot 2`, `backend 7`.
impl fmt::Display for ServiceOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PutService(key, _) | Self::DelService(key) => {
                let addr = socket_addr(key.addr, key.family, key.port)
                    .map_or_else(|| "?".to_owned(), |a: SocketAddr| a.to_string());
                write!(f, "{addr}/{} scope {} slot {}", key.proto, key.scope, key.slot)
            }
            Self::PutBackend(id, _) | Self::DelBackend(id) => write!(f, "backend {id}"),
            Self::PutRevNat(id, _) | Self::DelRevNat(id) => write!(f, "rev-nat {id}"),
            Self::PutMaglev(id, _) | Self::DelMaglev(id) => write!(f, "maglev table of rev-nat {id}"),
        }
    }
}

/// Everything the four service maps hold, in the compiler's terms: what the
/// syncer reads back at start, and what `weirctl` shows.
pub fn read_service_maps(
    services: &maps::Services,
    backends: &maps::Backends,
    revnat: &maps::RevNats,
    maglev: &maps::Maglev,
) -> Result<DesiredServices, SyncError> {
    Ok(DesiredServices {
        services: read_hash(names::SERVICES, || services.map())?,
        backends: read_hash(names::BACKENDS, || backends.map())?,
        revnat: read_hash(names::REVNAT, || revnat.map())?,
        maglev: read_maglev(maglev)?,
        ..DesiredServices::default()
    })
}

/// A hash map read whole, [`batch::READ_PER_CALL`] entries per system call,
/// `hold` giving the map for each call: what it holds (a lock) is held for
/// one call at a time.
fn read_hash<K: Pod + Ord, V: Pod, M: std::ops::Deref<Target = MapData>>(
    name: &'static str,
    hold: impl Fn() -> M,
) -> Result<BTreeMap<K, V>, SyncError> {
    let mut reader = batch::HashReader::<K, V>::new(batch::READ_PER_CALL);
    let mut entries = Vec::new();
    loop {
        let map = hold();
        match reader.next(&map) {
            Ok(Some((keys, values))) => entries.extend(keys.iter().copied().zip(values.iter().copied())),
            Ok(None) => return Ok(entries.into_iter().collect()),
            Err(source) => return Err(SyncError::Read { map: name, source }),
        }
    }
}

/// The Maglev tables (few; 64 KiB each), by rev-NAT id.
fn read_maglev(maglev: &maps::Maglev) -> Result<BTreeMap<u32, Vec<u32>>, SyncError> {
    maglev
        .iter()
        .map(|entry| entry.map(|(k, v)| (k, v.0.to_vec())))
        .collect::<Result<_, _>>()
        .map_err(|source| SyncError::Read {
            map: names::MAGLEV,
            source,
        })
}

/// The four service maps (services, backends, revnat, maglev) in the kernel.
impl Maps<ServiceOp> for SharedDatapath {
    /// The datapath's lock is held for one system call's entries at a time
    /// (a pod's registration waits for one at most): the syncer, which reads,
    /// is the only writer of these maps.
    fn read(&self) -> Result<DesiredServices, SyncError> {
        let hold = |map: fn(&Datapath) -> &MapData| move || LockedMap(self.lock(), map);
        Ok(DesiredServices {
            services: read_hash(names::SERVICES, hold(|dp| dp.services.map()))?,
            backends: read_hash(names::BACKENDS, hold(|dp| dp.backends.map()))?,
            revnat: read_hash(names::REVNAT, hold(|dp| dp.revnat.map()))?,
            maglev: read_maglev(&self.lock().maglev)?,
            ..DesiredServices::default()
        })
    }

    /// Runs of writes to one of the three large maps, or of deletes from
    /// one, go in batches ([`batch::update`], [`batch::delete`]), [`BATCH`]
    /// at a time, two at once under the lock (a pod's registration waits for
    /// two batches made side by side at most); the rest one by one.
    fn apply_many(&mut self, ops: &[ServiceOp]) -> Vec<Result<(), MapError>> {
        let mut out = Vec::with_capacity(ops.len());
        let mut rest = ops;
        while let Some(first) = rest.first() {
            let run = rest.iter().take_while(|op| op.batches_with(first)).count();
            if run < 2 {
                out.push(self.apply(first));
                rest = &rest[1..];
                continue;
            }
            for pair in rest[..run].chunks(2 * BATCH) {
                self.batches(pair, &mut out);
            }
            rest = &rest[run..];
        }
        out
    }

    fn background(&self) -> Option<Box<dyn Maps<ServiceOp> + Send>> {
        Some(Box::new(self.clone()))
    }

    fn apply(&mut self, op: &ServiceOp) -> Result<(), MapError> {
        let mut dp = self.lock();
        match op {
            ServiceOp::PutBackend(id, b) => dp.backends.insert(id, b, 0),
            ServiceOp::PutRevNat(id, r) => dp.revnat.insert(id, r, 0),
            ServiceOp::PutMaglev(id, table) => dp.maglev.insert(*id, table.as_ref(), 0),
            ServiceOp::PutService(k, v) => dp.services.insert(k, v, 0),
            ServiceOp::DelService(k) => dp.services.remove(k),
            ServiceOp::DelMaglev(id) => dp.maglev.remove(id),
            ServiceOp::DelBackend(id) => dp.backends.remove(id),
            ServiceOp::DelRevNat(id) => dp.revnat.remove(id),
        }
    }
}

/// One of the datapath's maps, its lock held.
struct LockedMap<'d>(std::sync::MutexGuard<'d, Datapath>, fn(&Datapath) -> &MapData);

impl std::ops::Deref for LockedMap<'_> {
    type Target = MapData;

    fn deref(&self) -> &MapData {
        (self.1)(&self.0)
    }
}

impl ServiceMaps for SharedDatapath {
    fn service(&self, key: &ServiceKey) -> Result<Option<ServiceValue>, MapError> {
        found(self.lock().services.get(key, 0))
    }

    fn backend(&self, id: u32) -> Result<Option<Backend>, MapError> {
        found(self.lock().backends.get(&id, 0))
    }

    fn revnat(&self, id: u32) -> Result<Option<RevNat>, MapError> {
        found(self.lock().revnat.get(&id, 0))
    }

    fn maglev(&self, id: u32) -> Result<Option<Vec<u32>>, MapError> {
        Ok(found(self.lock().maglev.get(&id, 0))?.map(|t| t.0.to_vec()))
    }
}
