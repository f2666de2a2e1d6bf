//! Conntrack hygiene on the agent side: the datapath creates and refreshes
//! entries, the agent removes the dead ones.
//!
//! - GC: entries whose `expires_ns` has passed (the datapath would ignore them
//!   anyway, but they hold LRU space), and affinity entries idle for longer than
//!   their service's timeout.
//! - The policy conntrack: its dead entries, and every isolated endpoint's
//!   share of it recounted from what it holds (see `weir_common::PolicyShare`).
//! - Flush: when a UDP/SCTP backend disappears, every entry pointing at it, so that
//!   clients' next datagrams pick a live backend instead of vanishing until the
//!   entry times out (kube-proxy does the same with `conntrack -D`).
//!
//! Both run on their own handles of the pinned maps: the kernel serialises map
//! operations, so they need no lock shared with the CNI server or the syncer.

use std::collections::{BTreeMap, HashSet};

use aya::maps::MapError;
use nix::time::{ClockId, clock_gettime};
use weir_common::{
    AffinityKey, AffinityValue, Backend, CT_F_MASQ, CT_F_SNAT, CT_IN, CT_OUT, CtKey, CtValue, IPPROTO_TCP,
    PolicyShare, maps as names,
};

use crate::datapath::{
    DatapathError, PinLayout, is_not_found,
    maps::{self, Affinity, Conntrack, PolicyCt, PolicyEndpoints, PolicyShares},
};

/// Affinity entries of frontends the agent does not know (yet, or any more) are
/// kept this long after their last use: a frontend written a moment ago must not
/// lose the entries its first connections created.
const UNKNOWN_AFFINITY_GRACE_NS: u64 = 60 * NS_PER_S;
const NS_PER_S: u64 = 1_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum CtError {
    #[error(transparent)]
    Open(#[from] Box<DatapathError>),
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error("reading CLOCK_MONOTONIC: {0}")]
    Clock(nix::Error),
}

/// `bpf_ktime_get_ns()`'s clock, as seen from user space.
pub fn monotonic_ns() -> Result<u64, CtError> {
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).map_err(CtError::Clock)?;
    // Both fields are non-negative for CLOCK_MONOTONIC.
    Ok(ts.tv_sec() as u64 * NS_PER_S + ts.tv_nsec() as u64)
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub scanned: usize,
    pub expired: usize,
    pub deleted: usize,
    /// Conntrack: live flows holding a node source port, of external clients
    /// of remote endpoints (`CT_F_SNAT`) and of pods' masqueraded egress
    /// (`CT_F_MASQ`).
    pub snat_nodeport: usize,
    pub snat_masquerade: usize,
}

impl GcReport {
    /// Entries the map holds after the pass.
    pub fn entries(&self) -> usize {
        self.scanned - self.deleted
    }
}

/// What a pass over the policy conntrack found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PolicyCtReport {
    /// Live entries, of the map's capacity.
    pub live: usize,
    /// Entries after the pass, live or dead (not deleted yet).
    pub entries: usize,
    pub deleted: usize,
    /// The most entries other than TCP one endpoint holds, and its share.
    pub largest_share: u32,
    /// Endpoints at their share: their new datagram flows go untracked.
    pub at_share: usize,
}

pub struct Hygiene {
    conntrack: Conntrack,
    affinity: Affinity,
    policy_ct: PolicyCt,
    shares: PolicyShares,
    policy_endpoints: PolicyEndpoints,
}

impl Hygiene {
    pub fn open(pins: &PinLayout) -> Result<Self, CtError> {
        Ok(Self {
            conntrack: maps::open_pinned(pins, &maps::CONNTRACK).map_err(Box::new)?,
            affinity: maps::open_pinned(pins, &maps::AFFINITY).map_err(Box::new)?,
            policy_ct: maps::open_pinned(pins, &maps::POLICY_CT).map_err(Box::new)?,
            shares: maps::open_pinned(pins, &maps::POLICY_SHARES).map_err(Box::new)?,
            policy_endpoints: maps::open_pinned(pins, &maps::POLICY_ENDPOINTS).map_err(Box::new)?,
        })
    }

    /// Deletes up to `max_deletes` dead policy conntrack entries, and writes
    /// every isolated endpoint's share anew: the entries other than TCP it
    /// holds now, and its limit ([`names::POLICY_SHARE`]). Endpoints no longer
    /// isolated lose theirs.
    pub fn gc_policy(&mut self, now_ns: u64, max_deletes: usize) -> Result<PolicyCtReport, CtError> {
        let mut report = PolicyCtReport::default();
        let mut held: BTreeMap<u32, u32> = BTreeMap::new();
        let dead = collect(
            &self.policy_ct,
            names::POLICY_CT,
            maps::POLICY_CT.max_entries,
            |k, v| {
                if v.expires_ns < now_ns {
                    return true;
                }
                report.live += 1;
                if k.proto != IPPROTO_TCP && v.owner != 0 {
                    *held.entry(v.owner).or_default() += 1;
                }
                false
            },
        )?;
        for key in dead.iter().take(max_deletes) {
            // Refreshed meanwhile? Then it stays.
            match self.policy_ct.get(key, 0) {
                Ok(v) if v.expires_ns < now_ns => {
                    remove(&mut self.policy_ct, names::POLICY_CT, key)?;
                    report.deleted += 1;
                }
                _ => {}
            }
        }
        report.entries = report.live + dead.len() - report.deleted;
        let mut isolated = HashSet::new();
        for entry in self
            .policy_endpoints
            .iter()
            .take(2 * maps::POLICY_ENDPOINTS.max_entries as usize)
        {
            let (_, ep) = entry.map_err(|source| CtError::Map {
                map: names::POLICY_ENDPOINTS,
                source,
            })?;
            isolated.insert(ep.id);
        }
        let stale = collect(
            &self.shares,
            names::POLICY_SHARES,
            maps::POLICY_SHARES.max_entries,
            |id, _| !isolated.contains(id),
        )?;
        for id in &stale {
            remove(&mut self.shares, names::POLICY_SHARES, id)?;
        }
        for id in isolated {
            let share = PolicyShare {
                entries: held.get(&id).copied().unwrap_or(0),
                limit: names::POLICY_SHARE,
            };
            report.largest_share = report.largest_share.max(share.entries);
            if share.entries >= share.limit {
                report.at_share += 1;
            }
            self.shares.insert(id, share, 0).map_err(|source| CtError::Map {
                map: names::POLICY_SHARES,
                source,
            })?;
        }
        Ok(report)
    }

    /// Deletes up to `max_deletes` dead conntrack entries: `CT_OUT` entries past
    /// their expiry, and `CT_IN` entries whose `CT_OUT` partner is dead or gone
    /// (a pair lives by its `CT_OUT` entry; see `CtKey::out_partner`).
    pub fn gc_conntrack(&mut self, now_ns: u64, max_deletes: usize) -> Result<GcReport, CtError> {
        let mut report = GcReport::default();
        let mut entries = Vec::new();
        for entry in self
            .conntrack
            .iter()
            .take(2 * maps::CONNTRACK.max_entries as usize)
        {
            entries.push(entry.map_err(|source| CtError::Map {
                map: names::CONNTRACK,
                source,
            })?);
        }
        report.scanned = entries.len();
        let live: HashSet<CtKey> = entries
            .iter()
            .filter(|(k, v)| k.dir == CT_OUT && v.expires_ns >= now_ns)
            .map(|(k, v)| {
                if v.flags & CT_F_MASQ != 0 {
                    report.snat_masquerade += 1;
                } else if v.flags & CT_F_SNAT != 0 {
                    report.snat_nodeport += 1;
                }
                *k
            })
            .collect();
        let dead: Vec<CtKey> = entries
            .iter()
            .filter(|(k, v)| {
                if k.dir == CT_OUT {
                    v.expires_ns < now_ns
                } else {
                    !live.contains(&k.out_partner(v))
                }
            })
            .map(|(k, _)| *k)
            .collect();
        report.expired = dead.len();
        for key in dead.iter().take(max_deletes) {
            // The datapath kept working while we scanned: a flow created meanwhile
            // (its CT_OUT entry in a bucket already passed) or refreshed since must
            // not lose an entry. Judge each one again against the map as it is now.
            if self.still_dead(key, now_ns)? {
                remove(&mut self.conntrack, names::CONNTRACK, key)?;
                report.deleted += 1;
            }
        }
        Ok(report)
    }

    /// Whether `key` is dead by the map's current content (see `gc_conntrack`).
    fn still_dead(&self, key: &CtKey, now_ns: u64) -> Result<bool, CtError> {
        let Some(value) = get(&self.conntrack, key)? else {
            return Ok(false);
        };
        let out = if key.dir == CT_OUT {
            Some(value)
        } else {
            get(&self.conntrack, &key.out_partner(&value))?
        };
        Ok(out.is_none_or(|out| out.expires_ns < now_ns))
    }

    /// Deletes affinity entries idle for longer than their frontend's timeout
    /// (`timeouts`: rev-NAT id -> seconds, for frontends with affinity).
    pub fn gc_affinity(&mut self, now_ns: u64, timeouts: &BTreeMap<u32, u32>) -> Result<GcReport, CtError> {
        let mut report = GcReport::default();
        let stale = collect(
            &self.affinity,
            names::AFFINITY,
            maps::AFFINITY.max_entries,
            |k, v| {
                report.scanned += 1;
                affinity_stale(k, v, now_ns, timeouts)
            },
        )?;
        report.expired = stale.len();
        for key in &stale {
            remove(&mut self.affinity, names::AFFINITY, key)?;
            report.deleted += 1;
        }
        Ok(report)
    }

    /// Deletes every conntrack entry whose flow goes to (OUT) or comes from (IN)
    /// one of `gone`. Returns how many were deleted.
    pub fn flush_backends(&mut self, gone: &[Backend]) -> Result<usize, CtError> {
        if gone.is_empty() {
            return Ok(0);
        }
        let doomed = collect(
            &self.conntrack,
            names::CONNTRACK,
            maps::CONNTRACK.max_entries,
            |k, v| gone.iter().any(|b| points_at(k, v, b)),
        )?;
        for key in &doomed {
            remove(&mut self.conntrack, names::CONNTRACK, key)?;
        }
        Ok(doomed.len())
    }
}

/// Whether a conntrack entry belongs to a flow translated to `backend`.
pub fn points_at(key: &CtKey, value: &CtValue, backend: &Backend) -> bool {
    if key.proto != backend.proto || key.family != backend.family {
        return false;
    }
    match key.dir {
        CT_OUT => value.nat_addr == backend.addr && value.nat_port == backend.port,
        CT_IN => key.saddr == backend.addr && key.sport == backend.port,
        _ => false,
    }
}

fn affinity_stale(
    key: &AffinityKey,
    value: &AffinityValue,
    now_ns: u64,
    timeouts: &BTreeMap<u32, u32>,
) -> bool {
    let idle = now_ns.saturating_sub(value.last_used_ns);
    match timeouts.get(&key.rev_nat_id) {
        Some(&seconds) => idle > u64::from(seconds) * NS_PER_S,
        None => idle > UNKNOWN_AFFINITY_GRACE_NS,
    }
}

/// The keys of entries matching `pred`, iterating first and deleting after: a
/// deleted key would make `get_next_key` restart from the first bucket. The walk
/// is bounded because entries the datapath evicts meanwhile can restart it too.
fn collect<K, V>(
    map: &aya::maps::HashMap<aya::maps::MapData, K, V>,
    name: &'static str,
    max_entries: u32,
    mut pred: impl FnMut(&K, &V) -> bool,
) -> Result<Vec<K>, CtError>
where
    K: aya::Pod,
    V: aya::Pod,
{
    let mut out = Vec::new();
    for entry in map.iter().take(2 * max_entries as usize) {
        let (key, value) = entry.map_err(|source| CtError::Map { map: name, source })?;
        if pred(&key, &value) {
            out.push(key);
        }
    }
    Ok(out)
}

/// The conntrack entry at `key` now, if any.
fn get(
    map: &aya::maps::HashMap<aya::maps::MapData, CtKey, CtValue>,
    key: &CtKey,
) -> Result<Option<CtValue>, CtError> {
    match map.get(key, 0) {
        Ok(value) => Ok(Some(value)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(source) => Err(CtError::Map {
            map: names::CONNTRACK,
            source,
        }),
    }
}

fn remove<K: aya::Pod, V: aya::Pod>(
    map: &mut aya::maps::HashMap<aya::maps::MapData, K, V>,
    name: &'static str,
    key: &K,
) -> Result<(), CtError> {
    match map.remove(key) {
        Err(e) if !is_not_found(&e) => Err(CtError::Map { map: name, source: e }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use weir_common::{AF_INET, IPPROTO_TCP, IPPROTO_UDP};

    use super::*;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    fn backend(proto: u8) -> Backend {
        Backend {
            addr: v4([10, 0, 0, 5]),
            port: 8080u16.to_be(),
            proto,
            family: AF_INET,
            ..Default::default()
        }
    }

    #[test]
    fn out_entries_match_on_nat_and_in_entries_on_source() {
        let b = backend(IPPROTO_UDP);
        let out_key = CtKey {
            saddr: v4([10, 0, 0, 9]),
            daddr: v4([10, 96, 0, 1]),
            sport: 40000u16.to_be(),
            dport: 53u16.to_be(),
            proto: IPPROTO_UDP,
            family: AF_INET,
            dir: CT_OUT,
            _pad: 0,
        };
        let out_value = CtValue {
            nat_addr: b.addr,
            nat_port: b.port,
            ..Default::default()
        };
        assert!(points_at(&out_key, &out_value, &b));
        assert!(!points_at(&out_key, &out_value, &backend(IPPROTO_TCP)));
        let in_key = CtKey {
            saddr: b.addr,
            sport: b.port,
            daddr: v4([10, 0, 0, 9]),
            dport: 40000u16.to_be(),
            dir: CT_IN,
            ..out_key
        };
        assert!(points_at(&in_key, &CtValue::default(), &b));
        let other_port = CtKey {
            sport: 9999u16.to_be(),
            ..in_key
        };
        assert!(!points_at(&other_port, &CtValue::default(), &b));
    }

    #[test]
    fn affinity_expires_after_its_timeout_or_a_grace_when_unknown() {
        let key = AffinityKey {
            rev_nat_id: 3,
            ..Default::default()
        };
        let used = |s: u64| AffinityValue {
            last_used_ns: s * NS_PER_S,
            ..Default::default()
        };
        let timeouts = BTreeMap::from([(3, 10)]);
        let now = 1000 * NS_PER_S;
        assert!(!affinity_stale(&key, &used(995), now, &timeouts));
        assert!(affinity_stale(&key, &used(989), now, &timeouts));
        assert!(!affinity_stale(&key, &used(989), now, &BTreeMap::new()));
        assert!(affinity_stale(&key, &used(900), now, &BTreeMap::new()));
    }

    #[test]
    fn monotonic_clock_reads() {
        let a = monotonic_ns().expect("clock");
        let b = monotonic_ns().expect("clock");
        assert!(b >= a && a > 0);
    }
}
