//! The LoadBalancer IPs' `loadBalancerSourceRanges` (`weir_srcrng_v1`):
//! the sources each frontend flagged `SVC_F_SOURCE_RANGE` admits, as the
//! services compiler decided them, written beside the services sync.
//!
//! Before the services sync, a frontend still wanted loses the ranges it no
//! longer has (that only narrows what it admits; a reused rev-NAT id so never
//! admits its former owner's sources), and a frontend the sync flags finds
//! its ranges written. The ranges of a frontend no longer wanted go after a
//! complete sync, once no entry flagged for them is left. Only the difference
//! is written (at the first write, against what the pinned map holds: a
//! restarted agent rewrites nothing). A write that fails is counted and
//! retried by the next sync.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{MapError, lpm_trie::Key};
use ipnetwork::IpNetwork;
use tracing::warn;
use weir_common::{SOURCE_RANGE_PREFIX_BITS, SourceRangeKey, maps as names};

use crate::{datapath::Datapath, metrics::Metrics, sync::SharedDatapath};

/// A key as the map holds it: its prefix length and data.
type Entry = (u32, SourceRangeKey);

#[derive(Default)]
pub struct SourceRanges {
    /// What the map holds, as last written; `None`: not read yet.
    written: Option<BTreeSet<Entry>>,
}

impl SourceRanges {
    /// Entries the map holds; `None` until it was read.
    pub fn entries(&self) -> Option<usize> {
        self.written.as_ref().map(BTreeSet::len)
    }

    /// Before the services sync: removes the ranges frontends of `desired`
    /// no longer have, and writes those the map lacks; `false` if some write
    /// failed (the frontends admit fewer sources until a retry, never more).
    pub fn add(
        &mut self,
        maps: &SharedDatapath,
        desired: &BTreeMap<u32, Box<[IpNetwork]>>,
        metrics: &Metrics,
    ) -> bool {
        let mut dp = maps.lock();
        let written = match &mut self.written {
            Some(w) => w,
            None => match dp.source_ranges.keys().collect::<Result<Vec<_>, _>>() {
                Ok(keys) => self
                    .written
                    .insert(keys.into_iter().map(|k| (k.prefix_len(), k.data())).collect()),
                Err(e) => {
                    warn!(error = %e, "reading the LoadBalancer source ranges");
                    return false;
                }
            },
        };
        let mut failures = Failures::default();
        let wanted: BTreeSet<Entry> = entries(desired).collect();
        let narrowed: Vec<Entry> = written
            .difference(&wanted)
            .filter(|(_, k)| desired.contains_key(&k.rev_nat_id))
            .copied()
            .collect();
        remove(&mut dp, written, narrowed, &mut failures);
        for entry in wanted {
            if !written.contains(&entry) {
                match dp.source_ranges.insert(&Key::new(entry.0, entry.1), 1, 0) {
                    Ok(()) => {
                        written.insert(entry);
                    }
                    Err(e) => failures.note(&e, "writing"),
                }
            }
        }
        failures.report(metrics)
    }

    /// After a complete services sync: removes the ranges of frontends no
    /// longer in `desired`. `false` if some removal failed.
    pub fn prune(
        &mut self,
        maps: &SharedDatapath,
        desired: &BTreeMap<u32, Box<[IpNetwork]>>,
        metrics: &Metrics,
    ) -> bool {
        let Some(written) = &mut self.written else {
            return true;
        };
        let gone: Vec<Entry> = written
            .iter()
            .filter(|(_, k)| !desired.contains_key(&k.rev_nat_id))
            .copied()
            .collect();
        if gone.is_empty() {
            return true;
        }
        let mut failures = Failures::default();
        remove(&mut maps.lock(), written, gone, &mut failures);
        failures.report(metrics)
    }
}

/// Removes `stale` from the map and from `written`.
fn remove(dp: &mut Datapath, written: &mut BTreeSet<Entry>, stale: Vec<Entry>, failures: &mut Failures) {
    for entry in stale {
        match dp.source_ranges.remove(&Key::new(entry.0, entry.1)) {
            Ok(()) => {
                written.remove(&entry);
            }
            Err(e) if crate::datapath::is_not_found(&e) => {
                written.remove(&entry);
            }
            Err(e) => failures.note(&e, "removing"),
        }
    }
}

/// A step's failed writes, by errno: the first logged, all counted.
#[derive(Default)]
struct Failures(BTreeMap<String, u64>);

impl Failures {
    fn note(&mut self, e: &MapError, doing: &str) {
        if self.0.is_empty() {
            warn!(error = %e, "{doing} a LoadBalancer source range (retried at the next sync)");
        }
        *self.0.entry(crate::metrics::errno_name(e)).or_default() += 1;
    }

    /// Counts the failures; `true` if there were none.
    fn report(self, metrics: &Metrics) -> bool {
        for (errno, n) in &self.0 {
            metrics.map_write_failed(names::SOURCE_RANGES, errno, *n);
        }
        self.0.is_empty()
    }
}

/// The map's key of range `net` of frontend `rev_nat_id` (an address as a
/// full-length range: the key a lookup for it makes).
pub fn key(rev_nat_id: u32, net: &IpNetwork) -> Key<SourceRangeKey> {
    let (addr, family) = weir_model::net::to_abi(net.network());
    Key::new(
        SOURCE_RANGE_PREFIX_BITS + u32::from(net.prefix()),
        SourceRangeKey {
            rev_nat_id,
            family,
            addr,
            _pad: [0; 3],
        },
    )
}

/// The map's entries for `desired`.
fn entries(desired: &BTreeMap<u32, Box<[IpNetwork]>>) -> impl Iterator<Item = Entry> + '_ {
    desired.iter().flat_map(|(rev_nat_id, ranges)| {
        ranges.iter().map(|net| {
            let k = key(*rev_nat_id, net);
            (k.prefix_len(), k.data())
        })
    })
}
