//! The service maps as the syncer sees them: read everything, apply one change at
//! a time. A trait so that the ordering rules are tested without a kernel.

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use aya::maps::MapError;
use weir_common::{Backend, MAGLEV_TABLE_SIZE, MaglevTable, RevNat, ServiceKey, ServiceValue, maps as names};
use weir_model::{DesiredServices, services::socket_addr};

use crate::datapath::{Datapath, is_not_found};

/// One write to one map.
#[derive(Clone, Debug)]
pub enum Op {
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

impl Op {
    pub fn map(&self) -> &'static str {
        match self {
            Op::PutBackend(..) | Op::DelBackend(_) => names::BACKENDS,
            Op::PutRevNat(..) | Op::DelRevNat(_) => names::REVNAT,
            Op::PutService(..) | Op::DelService(_) => names::SERVICES,
            Op::PutMaglev(..) | Op::DelMaglev(_) => names::MAGLEV,
        }
    }

    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            Op::DelService(_) | Op::DelMaglev(_) | Op::DelBackend(_) | Op::DelRevNat(_)
        )
    }
}

/// The map value for a compiled table, `None` unless it has exactly
/// [`MAGLEV_TABLE_SIZE`] entries (the size the datapath indexes with).
pub fn maglev_value(table: &[u32]) -> Option<Box<MaglevTable>> {
    let entries: [u32; MAGLEV_TABLE_SIZE] = table.try_into().ok()?;
    Some(Box::new(MaglevTable(entries)))
}

/// The key in human terms, for logs: `10.96.0.1:80/6 slot 2`, `backend 7`.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::PutService(key, _) | Op::DelService(key) => {
                let addr = socket_addr(key.addr, key.family, key.port)
                    .map_or_else(|| "?".to_owned(), |a: SocketAddr| a.to_string());
                write!(f, "{addr}/{} scope {} slot {}", key.proto, key.scope, key.slot)
            }
            Op::PutBackend(id, _) | Op::DelBackend(id) => write!(f, "backend {id}"),
            Op::PutRevNat(id, _) | Op::DelRevNat(id) => write!(f, "rev-nat {id}"),
            Op::PutMaglev(id, _) | Op::DelMaglev(id) => write!(f, "maglev table of rev-nat {id}"),
        }
    }
}

/// The four service maps (services, backends, revnat, maglev).
pub trait ServiceMaps {
    /// Everything the maps hold now (`frontends` stays empty).
    fn read(&self) -> Result<DesiredServices, SyncError>;
    /// One write. Deleting a missing key is not an error.
    fn apply(&mut self, op: &Op) -> Result<(), MapError>;
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("reading map {map}: {source}")]
    Read { map: &'static str, source: MapError },
}

/// The agent's datapath, shared with the CNI server: the lock is held for one
/// write at a time so that a pod's registration never waits for a whole sync.
#[derive(Clone)]
pub struct SharedDatapath(pub Arc<Mutex<Datapath>>);

impl SharedDatapath {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Datapath> {
        // Map writes are idempotent and the syncer re-diffs after any failure, so a
        // lock poisoned by a panic elsewhere is still safe to use.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ServiceMaps for SharedDatapath {
    fn read(&self) -> Result<DesiredServices, SyncError> {
        let dp = self.lock();
        let read = |map| move |source| SyncError::Read { map, source };
        let mut out = DesiredServices {
            services: dp
                .services
                .iter()
                .collect::<Result<_, _>>()
                .map_err(read(names::SERVICES))?,
            backends: dp
                .backends
                .iter()
                .collect::<Result<_, _>>()
                .map_err(read(names::BACKENDS))?,
            revnat: dp
                .revnat
                .iter()
                .collect::<Result<_, _>>()
                .map_err(read(names::REVNAT))?,
            ..DesiredServices::default()
        };
        for entry in dp.maglev.iter() {
            let (k, v) = entry.map_err(read(names::MAGLEV))?;
            out.maglev.insert(k, v.0.to_vec());
        }
        Ok(out)
    }

    fn apply(&mut self, op: &Op) -> Result<(), MapError> {
        let mut dp = self.lock();
        let result = match op {
            Op::PutBackend(id, b) => dp.backends.insert(id, b, 0),
            Op::PutRevNat(id, r) => dp.revnat.insert(id, r, 0),
            Op::PutMaglev(id, table) => dp.maglev.insert(*id, table.as_ref(), 0),
            Op::PutService(k, v) => dp.services.insert(k, v, 0),
            Op::DelService(k) => dp.services.remove(k),
            Op::DelMaglev(id) => dp.maglev.remove(id),
            Op::DelBackend(id) => dp.backends.remove(id),
            Op::DelRevNat(id) => dp.revnat.remove(id),
        };
        match result {
            Err(e) if op.is_delete() && is_not_found(&e) => Ok(()),
            other => other,
        }
    }
}
