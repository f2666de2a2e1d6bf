//! The syncers: each compiles what the model wants into map contents and writes
//! only the difference to the pinned maps, in an order that keeps the datapath
//! consistent at every instant.
//!
//! - [`services`]: the load balancer's maps (services, backends, reverse NAT,
//!   Maglev), incremental: a change costs the keys it touches.
//! - [`policy`]: the NetworkPolicy maps (rules, ipcache, isolated endpoints).
//!
//! Both have one shape: the maps behind [`Maps`] (the kernel's, or maps in
//! memory in tests), one write at a time as a [`MapOp`] that knows how to apply
//! itself to contents held in memory (`apply_to`, shared by what a syncer knows
//! of the maps and by the tests' fake maps), and a [`Tally`] of each
//! sync's writes and failures. A failed write is logged (the first
//! [`LOGGED_FAILURES`] of a sync in full), counted, holds back what depends on
//! it, and is retried by the next sync; nothing is ever flushed, so a restarted
//! agent reads the maps back and writes only what differs.

mod policy;
mod policy_maps;
mod service_maps;
mod services;
mod writer;

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex},
};

use aya::maps::MapError;
use tracing::warn;

pub use self::{
    policy::{PolicyReport, PolicySyncer},
    policy_maps::{PolicyOp, read_policy_maps},
    service_maps::{ServiceMaps, ServiceOp, maglev_value, read_service_maps},
    services::{ServiceReport, ServiceSyncer},
};
use crate::datapath::{Datapath, is_not_found};

/// Failed writes logged in full per sync; the rest are only counted.
pub const LOGGED_FAILURES: usize = 10;

/// One write to one map.
pub trait MapOp: fmt::Display {
    /// What the maps hold, in memory.
    type Contents;
    /// The map's name, for logs and metrics.
    fn map(&self) -> &'static str;
    fn is_delete(&self) -> bool;
}

/// A syncer's maps: read whole, written one op at a time or in runs.
pub trait Maps<O: MapOp> {
    /// Everything the maps hold now.
    fn read(&self) -> Result<O::Contents, SyncError>;
    /// One write.
    fn apply(&mut self, op: &O) -> Result<(), MapError>;
    /// The writes of `ops` in order, each one's result (the kernel's maps
    /// take runs of one map's writes in one system call).
    fn apply_many(&mut self, ops: &[O]) -> Vec<Result<(), MapError>> {
        ops.iter().map(|op| self.apply(op)).collect()
    }
    /// Another handle on the same maps, for a thread that makes a large
    /// step's writes while the syncer goes on deciding ([`writer`]); `None`:
    /// every write is made by the syncer's own thread.
    fn background(&self) -> Option<Box<dyn Maps<O> + Send>> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("reading map {map}: {source}")]
    Read { map: &'static str, source: MapError },
}

/// What one sync's writes did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub writes: usize,
    pub deletes: usize,
    pub failed: usize,
    /// Failed writes by map and errno name (`E2BIG`: full), for the metrics.
    pub failures: BTreeMap<(&'static str, String), u64>,
}

impl Tally {
    /// Does one write, counts it, and logs it if it failed; whether it took.
    /// Deleting a key that is already gone is no failure.
    pub fn write<O: MapOp>(&mut self, maps: &mut (impl Maps<O> + ?Sized), op: &O) -> bool {
        let result = maps.apply(op);
        self.record(op, result)
    }

    /// [`Tally::write`] of every op of `ops`, in order: whether each took.
    pub fn write_many<O: MapOp>(&mut self, maps: &mut (impl Maps<O> + ?Sized), ops: &[O]) -> Vec<bool> {
        let results = maps.apply_many(ops);
        self.record_many(ops, results)
    }

    /// Counts (and logs) the results of writes made elsewhere: whether each took.
    pub fn record_many<O: MapOp>(&mut self, ops: &[O], results: Vec<Result<(), MapError>>) -> Vec<bool> {
        debug_assert_eq!(ops.len(), results.len(), "a result for each write");
        ops.iter()
            .zip(results)
            .map(|(op, r)| self.record(op, r))
            .collect()
    }

    /// A read of `map` the sync needed failed: counted and logged like a failed
    /// write (the sync is incomplete and retried).
    pub fn read_failed(&mut self, map: &'static str, error: &MapError) {
        self.fail(map, error, |errno| {
            warn!(map, errno, %error, "map read failed; retried at the next sync");
        });
    }

    fn fail(&mut self, map: &'static str, error: &MapError, log: impl FnOnce(&str)) {
        self.failed += 1;
        let errno = crate::metrics::errno_name(error);
        if self.failed <= LOGGED_FAILURES {
            log(&errno);
        }
        *self.failures.entry((map, errno)).or_default() += 1;
    }

    fn record<O: MapOp>(&mut self, op: &O, result: Result<(), MapError>) -> bool {
        match result {
            Ok(()) => {}
            Err(e) if op.is_delete() && is_not_found(&e) => {}
            Err(error) => {
                self.fail(op.map(), &error, |errno| {
                    warn!(map = op.map(), key = %op, errno, %error, "map write failed; retried at the next sync");
                });
                return false;
            }
        }
        if op.is_delete() {
            self.deletes += 1;
        } else {
            self.writes += 1;
        }
        true
    }

    /// Says how many failures were not logged one by one.
    pub fn finish(&self) {
        if self.failed > LOGGED_FAILURES {
            warn!(
                failed = self.failed,
                logged = LOGGED_FAILURES,
                "more map writes failed than logged"
            );
        }
    }
}

/// The agent's datapath, shared with the CNI server: the lock is held for one
/// write at a time so that a pod's registration never waits for a whole sync.
#[derive(Clone)]
pub struct SharedDatapath(pub Arc<Mutex<Datapath>>);

impl SharedDatapath {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Datapath> {
        // Map writes are idempotent and the syncers re-diff after any failure,
        // so a lock poisoned by a panic elsewhere is still safe to use.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
