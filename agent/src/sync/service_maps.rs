//! The service maps as the syncer sees them: read everything or one key, apply
//! one change at a time, to the kernel's maps or (tests) to maps in memory.

use std::{fmt, net::SocketAddr};

use aya::maps::{IterableMap as _, MapError};
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
    /// A write of one of the maps that take batches (not a delete, not a
    /// 64 KiB Maglev table).
    fn batchable(&self) -> bool {
        matches!(
            self,
            Self::PutService(..) | Self::PutBackend(..) | Self::PutRevNat(..)
        )
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

/// Of a batch of `chunk` (writes of one map), how many were written: all, or
/// those before the one that stopped it.
fn batch_written(dp: &Datapath, chunk: &[ServiceOp]) -> usize {
    let done = |r: Result<(), (usize, MapError)>| r.map_or_else(|(n, _)| n, |()| chunk.len());
    match chunk.first() {
        Some(ServiceOp::PutService(..)) => {
            let (k, v) = pairs(chunk, |op| match op {
                ServiceOp::PutService(k, v) => Some((*k, *v)),
                _ => None,
            });
            done(batch::update(dp.services.map(), &k, &v))
        }
        Some(ServiceOp::PutBackend(..)) => {
            let (k, v) = pairs(chunk, |op| match op {
                ServiceOp::PutBackend(k, v) => Some((*k, *v)),
                _ => None,
            });
            done(batch::update(dp.backends.map(), &k, &v))
        }
        Some(ServiceOp::PutRevNat(..)) => {
            let (k, v) = pairs(chunk, |op| match op {
                ServiceOp::PutRevNat(k, v) => Some((*k, *v)),
                _ => None,
            });
            done(batch::update(dp.revnat.map(), &k, &v))
        }
        // Not a batch: one by one (by the caller).
        _ => 0,
    }
}

impl SharedDatapath {
    /// Up to two batches of one map's writes (`pair`: what two batches take),
    /// each one's result into `out`, in order. The two go to the kernel at
    /// once, from two threads under one hold of the lock: a hash map's
    /// inserts take a lock per bucket, so they proceed side by side, and most
    /// of a large sync's time is the kernel's work per entry. (A step's
    /// writes have no order among themselves; each step ends with its
    /// writes made.) What a failed batch did not write is written one by
    /// one, so that each write has its own result (the one that stopped it
    /// fails again, with its own error).
    fn put_batches(&mut self, pair: &[ServiceOp], out: &mut Vec<Result<(), MapError>>) {
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

/// The keys and values of a batch's writes, as the system call takes them.
fn pairs<K, V>(chunk: &[ServiceOp], of: impl Fn(&ServiceOp) -> Option<(K, V)>) -> (Vec<K>, Vec<V>) {
    chunk.iter().filter_map(of).unzip()
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
    let read = |map| move |source| SyncError::Read { map, source };
    let mut out = DesiredServices {
        services: services
            .iter()
            .collect::<Result<_, _>>()
            .map_err(read(names::SERVICES))?,
        backends: backends
            .iter()
            .collect::<Result<_, _>>()
            .map_err(read(names::BACKENDS))?,
        revnat: revnat
            .iter()
            .collect::<Result<_, _>>()
            .map_err(read(names::REVNAT))?,
        ..DesiredServices::default()
    };
    for entry in maglev.iter() {
        let (k, v) = entry.map_err(read(names::MAGLEV))?;
        out.maglev.insert(k, v.0.to_vec());
    }
    Ok(out)
}

/// The four service maps (services, backends, revnat, maglev) in the kernel.
impl Maps<ServiceOp> for SharedDatapath {
    fn read(&self) -> Result<DesiredServices, SyncError> {
        let dp = self.lock();
        read_service_maps(&dp.services, &dp.backends, &dp.revnat, &dp.maglev)
    }

    /// Runs of writes to one of the three large maps go in batches
    /// ([`batch::update`]), [`BATCH`] at a time, two at once under the lock
    /// (a pod's registration waits for two batches made side by side at
    /// most); the rest one by one.
    fn apply_many(&mut self, ops: &[ServiceOp]) -> Vec<Result<(), MapError>> {
        let mut out = Vec::with_capacity(ops.len());
        let mut rest = ops;
        while let Some(first) = rest.first() {
            let run = rest
                .iter()
                .take_while(|op| op.batchable() && op.map() == first.map())
                .count();
            if run < 2 {
                out.push(self.apply(first));
                rest = &rest[1..];
                continue;
            }
            for pair in rest[..run].chunks(2 * BATCH) {
                self.put_batches(pair, &mut out);
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
