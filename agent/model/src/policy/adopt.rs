//! Numbers a restarted agent takes over from the maps an earlier one left
//! pinned, so that an unchanged cluster costs no write at all.
//!
//! An endpoint number means one pod address: the endpoint map says which, so
//! the same address keeps it. An identity number means the set of ipcache
//! prefixes that map to it (the rules name it for what those addresses are);
//! the maps do not say which peer sets made it, but a new identity whose
//! prefixes are exactly the old one's means the same addresses, so it keeps the
//! old number. One whose prefixes differ at all gets a fresh number (above every
//! number the maps hold, see `PolicyEncoder::start_above`): reusing the old one
//! would let its new rules, written first, admit the old members for a while.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use weir_common::IDENTITY_FIRST;

use super::encode::{DesiredPolicy, IpcacheEntry};
use crate::net::from_abi;

/// What the maps held when the agent started, as numbers to take over.
#[derive(Debug, Default)]
pub(super) struct Adopted {
    endpoints: HashMap<IpAddr, u32>,
    /// Each prefix's identity, and each identity's prefixes.
    identity_of: HashMap<IpcacheEntry, u32>,
    members: HashMap<u32, BTreeSet<IpcacheEntry>>,
}

impl Adopted {
    pub(super) fn from_maps(maps: &DesiredPolicy) -> Self {
        let endpoints = maps
            .endpoints
            .iter()
            .filter_map(|(k, v)| Some((from_abi(k.addr, k.family)?, v.id)))
            .collect();
        // The reserved identities (the world's, for an `except`) are no
        // number of ours to hand out.
        let numbered = maps.ipcache.iter().filter(|(_, id)| **id >= IDENTITY_FIRST);
        let mut members: HashMap<u32, BTreeSet<IpcacheEntry>> = HashMap::new();
        for (entry, id) in numbered.clone() {
            members.entry(*id).or_default().insert(*entry);
        }
        Self {
            endpoints,
            identity_of: numbered.map(|(e, id)| (*e, *id)).collect(),
            members,
        }
    }

    /// The number the endpoint at `ip` had.
    pub(super) fn endpoint(&self, ip: IpAddr) -> Option<u32> {
        self.endpoints.get(&ip).copied()
    }

    /// The identity that stood for exactly `prefixes`, if one did.
    pub(super) fn identity(&self, prefixes: &BTreeSet<IpcacheEntry>) -> Option<u32> {
        let id = *self.identity_of.get(prefixes.first()?)?;
        (self.members.get(&id) == Some(prefixes)).then_some(id)
    }

    /// Per signature (non-empty), the identity that stood for exactly its
    /// prefixes.
    pub(super) fn identities<'a>(
        &self,
        signatures: &'a [(IpcacheEntry, Vec<u32>)],
    ) -> Vec<(&'a Vec<u32>, u32)> {
        if self.identity_of.is_empty() {
            return Vec::new();
        }
        let mut prefixes: BTreeMap<&Vec<u32>, BTreeSet<IpcacheEntry>> = BTreeMap::new();
        for (entry, signature) in signatures {
            if !signature.is_empty() {
                prefixes.entry(signature).or_default().insert(*entry);
            }
        }
        prefixes
            .into_iter()
            .filter_map(|(signature, prefixes)| Some((signature, self.identity(&prefixes)?)))
            .collect()
    }
}
