//! The policy syncer: writes the difference between the node's compiled
//! policies ([`DesiredPolicy`]) and the policy maps, in an order under which the
//! datapath never admits more than either the old or the new policies would:
//!
//! 1. new rules (their identities and endpoint numbers are fresh: nothing the
//!    maps hold points at them yet);
//! 2. ipcache entries (addresses move to their new identities);
//! 3. endpoints (a pod becomes isolated once its rules are in place);
//! 4. then endpoints, ipcache entries and rules no longer wanted, in that order.
//!
//! A failed write (a full map) is logged and counted and holds back only what
//! depends on it (a pod is not isolated before all its rules are in); what is
//! left different is retried by the next sync. Nothing is flushed: a restarted agent reads the
//! maps back and writes only what differs (its numbers start above those it
//! finds, see [`PolicyEncoder::start_above`]).

use std::collections::BTreeMap;

use aya::maps::{MapError, lpm_trie::Key};
use tracing::warn;
use weir_common::{EndpointKey, PolicyEndpoint, PolicyShare, maps as names};
use weir_model::{
    Model, Problem,
    policy::{DesiredPolicy, IpcacheEntry, PolicyEncoder, RuleKey, compile_node},
};

use super::{SharedDatapath, SyncError};
use crate::datapath::is_not_found;

/// `BPF_NOEXIST`: create only.
const BPF_NOEXIST: u64 = 1;

/// One write to one policy map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyOp {
    PutRule(RuleKey),
    PutIpcache(IpcacheEntry, u32),
    PutEndpoint(EndpointKey, PolicyEndpoint),
    DelEndpoint(EndpointKey),
    DelIpcache(IpcacheEntry),
    DelRule(RuleKey),
}

impl PolicyOp {
    fn is_delete(&self) -> bool {
        matches!(
            self,
            Self::DelEndpoint(_) | Self::DelIpcache(_) | Self::DelRule(_)
        )
    }

    /// The write, done to maps held in memory.
    fn apply_to(&self, maps: &mut DesiredPolicy) {
        match self {
            Self::PutRule(r) => {
                maps.rules.insert(*r);
            }
            Self::PutIpcache(k, v) => {
                maps.ipcache.insert(*k, *v);
            }
            Self::PutEndpoint(k, v) => {
                maps.endpoints.insert(*k, *v);
            }
            Self::DelEndpoint(k) => {
                maps.endpoints.remove(k);
            }
            Self::DelIpcache(k) => {
                maps.ipcache.remove(k);
            }
            Self::DelRule(r) => {
                maps.rules.remove(r);
            }
        }
    }

    fn map(&self) -> &'static str {
        match self {
            Self::PutRule(_) | Self::DelRule(_) => names::POLICY,
            Self::PutIpcache(..) | Self::DelIpcache(_) => names::IPCACHE,
            Self::PutEndpoint(..) | Self::DelEndpoint(_) => names::POLICY_ENDPOINTS,
        }
    }
}

/// The three policy maps, as the syncer sees them.
pub trait PolicyMaps {
    fn read_policy(&self) -> Result<DesiredPolicy, SyncError>;
    /// One write; deleting a missing key is not an error.
    fn apply_policy(&mut self, op: &PolicyOp) -> Result<(), MapError>;
}

/// What one sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PolicyReport {
    pub writes: usize,
    pub deletes: usize,
    pub failed: usize,
    /// Failed writes by map and errno name, for the metrics.
    pub failures: BTreeMap<(&'static str, String), u64>,
}

pub struct PolicySyncer {
    node: String,
    encoder: PolicyEncoder,
    /// What the maps hold, as far as our writes (or the read-back) tell.
    current: DesiredPolicy,
    /// The last compile's result; `None` before the first compile, when the
    /// maps keep what they hold (an agent whose source cannot be read yet must
    /// not lift every isolation).
    desired: Option<DesiredPolicy>,
}

impl PolicySyncer {
    /// Reads the maps back; numbers start above those found there.
    pub fn new(node: &str, maps: &impl PolicyMaps) -> Result<Self, SyncError> {
        let current = maps.read_policy()?;
        let mut encoder = PolicyEncoder::default();
        // Numbers in use anywhere in the maps, rules included (an agent may have
        // stopped between writing new rules and removing old ones).
        let identity = current
            .ipcache
            .values()
            .copied()
            .chain(current.rules.iter().map(|r| r.key.identity))
            .max()
            .unwrap_or(0);
        let endpoint = current
            .endpoints
            .values()
            .map(|e| e.id)
            .chain(current.rules.iter().map(|r| r.key.endpoint))
            .max()
            .unwrap_or(0);
        encoder.start_above(identity, endpoint);
        Ok(Self {
            node: node.to_owned(),
            encoder,
            current,
            desired: None,
        })
    }

    /// Recompiles the node's policies from the model. Numbers the maps still
    /// hold (a write that failed) are not handed out with a new meaning.
    pub fn compile(&mut self, model: &Model) -> Vec<Problem> {
        let held = &self.current;
        self.encoder.hold(
            held.ipcache
                .values()
                .copied()
                .chain(held.rules.iter().map(|r| r.key.identity)),
            held.endpoints
                .values()
                .map(|e| e.id)
                .chain(held.rules.iter().map(|r| r.key.endpoint)),
        );
        let (desired, problems) = compile_node(model, &self.node, &mut self.encoder);
        self.desired = Some(desired);
        problems
    }

    /// The last compile's result (empty before the first).
    pub fn desired(&self) -> &DesiredPolicy {
        static NONE: DesiredPolicy = DesiredPolicy {
            endpoints: BTreeMap::new(),
            ipcache: BTreeMap::new(),
            rules: std::collections::BTreeSet::new(),
        };
        self.desired.as_ref().unwrap_or(&NONE)
    }

    /// Whether a compile has happened.
    pub fn compiled(&self) -> bool {
        self.desired.is_some()
    }

    /// Whether the maps hold what the last compile wants (before the first
    /// compile there is nothing to sync).
    pub fn in_sync(&self) -> bool {
        self.desired.as_ref().is_none_or(|d| *d == self.current)
    }

    /// Writes what differs, in the module's order. A failed write holds back
    /// only what depends on it (a pod whose rules did not all go in is not
    /// isolated yet); everything else, removals included (they may be what
    /// frees room), goes ahead, which at worst denies more for a while: a
    /// number keeps its meaning while the maps hold it. The next sync retries.
    pub fn apply(&mut self, maps: &mut impl PolicyMaps) -> PolicyReport {
        let mut report = PolicyReport::default();
        let Some(want) = &self.desired else {
            return report;
        };
        let have = &self.current;
        let puts: Vec<PolicyOp> = want
            .rules
            .difference(&have.rules)
            .map(|r| PolicyOp::PutRule(*r))
            .collect();
        let ipcache: Vec<PolicyOp> = changed(&want.ipcache, &have.ipcache)
            .map(|(k, v)| PolicyOp::PutIpcache(k, v))
            .collect();
        let endpoints: Vec<PolicyOp> = changed(&want.endpoints, &have.endpoints)
            .map(|(k, v)| PolicyOp::PutEndpoint(k, v))
            .collect();
        let removals: Vec<PolicyOp> = gone(&want.endpoints, &have.endpoints)
            .map(PolicyOp::DelEndpoint)
            .chain(gone(&want.ipcache, &have.ipcache).map(PolicyOp::DelIpcache))
            .chain(have.rules.difference(&want.rules).map(|r| PolicyOp::DelRule(*r)))
            .collect();
        let mut incomplete = std::collections::BTreeSet::new();
        for op in puts {
            let endpoint = match &op {
                PolicyOp::PutRule(r) => r.key.endpoint,
                _ => 0,
            };
            if !self.apply_one(maps, op, &mut report) {
                incomplete.insert(endpoint);
            }
        }
        for op in ipcache {
            self.apply_one(maps, op, &mut report);
        }
        for op in endpoints {
            if let PolicyOp::PutEndpoint(_, v) = &op
                && incomplete.contains(&v.id)
            {
                continue;
            }
            self.apply_one(maps, op, &mut report);
        }
        for op in removals {
            self.apply_one(maps, op, &mut report);
        }
        report
    }

    /// One write, recorded in `current` when it succeeds (the return value).
    fn apply_one(&mut self, maps: &mut impl PolicyMaps, op: PolicyOp, report: &mut PolicyReport) -> bool {
        if let Err(e) = maps.apply_policy(&op) {
            report.failed += 1;
            let errno = crate::metrics::errno_name(&e);
            if report.failed <= 10 {
                warn!(map = op.map(), op = ?op, errno, error = %e, "policy map write failed; retrying at the next sync");
            }
            *report.failures.entry((op.map(), errno)).or_default() += 1;
            return false;
        }
        if op.is_delete() {
            report.deletes += 1;
        } else {
            report.writes += 1;
        }
        op.apply_to(&mut self.current);
        true
    }
}

/// Entries of `want` that `have` lacks or holds with another value.
fn changed<'a, K: Ord + Copy, V: PartialEq + Copy>(
    want: &'a BTreeMap<K, V>,
    have: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = (K, V)> + 'a {
    want.iter()
        .filter(|(k, v)| have.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
}

/// Keys of `have` that `want` does not hold.
fn gone<'a, K: Ord + Copy, V>(
    want: &'a BTreeMap<K, V>,
    have: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = K> + 'a {
    have.keys().filter(|k| !want.contains_key(k)).copied()
}

impl PolicyMaps for SharedDatapath {
    fn read_policy(&self) -> Result<DesiredPolicy, SyncError> {
        let dp = self.lock();
        let read = |map| move |source| SyncError::Read { map, source };
        let mut out = DesiredPolicy {
            endpoints: dp
                .policy_endpoints
                .iter()
                .collect::<Result<_, _>>()
                .map_err(read(names::POLICY_ENDPOINTS))?,
            ..DesiredPolicy::default()
        };
        for entry in dp.ipcache.iter() {
            let (k, v) = entry.map_err(read(names::IPCACHE))?;
            out.ipcache.insert(
                IpcacheEntry {
                    prefix_len: k.prefix_len(),
                    key: k.data(),
                },
                v,
            );
        }
        for entry in dp.policy.iter() {
            let (k, _) = entry.map_err(read(names::POLICY))?;
            out.rules.insert(RuleKey {
                prefix_len: k.prefix_len(),
                key: k.data(),
            });
        }
        Ok(out)
    }

    fn apply_policy(&mut self, op: &PolicyOp) -> Result<(), MapError> {
        let mut dp = self.lock();
        let result = match op {
            PolicyOp::PutRule(r) => dp.policy.insert(&Key::new(r.prefix_len, r.key), 1, 0),
            PolicyOp::PutIpcache(e, id) => dp.ipcache.insert(&Key::new(e.prefix_len, e.key), id, 0),
            PolicyOp::PutEndpoint(k, v) => {
                // Its share of the policy conntrack, from its first flow on (the
                // GC recounts it from the map); kept if already there.
                let share = PolicyShare {
                    entries: 0,
                    limit: names::POLICY_SHARE,
                };
                if let Err(e) = dp.policy_shares.insert(v.id, share, BPF_NOEXIST)
                    && !matches!(&e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EEXIST))
                {
                    warn!(endpoint = v.id, error = %e, "writing an endpoint's conntrack share: left to the GC");
                }
                dp.policy_endpoints.insert(k, v, 0)
            }
            PolicyOp::DelEndpoint(k) => dp.policy_endpoints.remove(k),
            PolicyOp::DelIpcache(e) => dp.ipcache.remove(&Key::new(e.prefix_len, e.key)),
            PolicyOp::DelRule(r) => dp.policy.remove(&Key::new(r.prefix_len, r.key)),
        };
        match result {
            Err(e) if op.is_delete() && is_not_found(&e) => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use weir_model::parse_documents;

    use super::*;

    /// Maps in memory that record every write and fail the ones told to.
    #[derive(Default)]
    struct Fake {
        held: DesiredPolicy,
        log: Vec<PolicyOp>,
        fail: usize,
    }

    impl PolicyMaps for Fake {
        fn read_policy(&self) -> Result<DesiredPolicy, SyncError> {
            Ok(self.held.clone())
        }

        fn apply_policy(&mut self, op: &PolicyOp) -> Result<(), MapError> {
            if self.fail > 0 {
                self.fail -= 1;
                return Err(MapError::KeyNotFound);
            }
            self.log.push(op.clone());
            op.apply_to(&mut self.held);
            Ok(())
        }
    }

    fn model(policy: &str) -> Model {
        let mut yaml = String::new();
        for (i, pod) in ["a", "b"].iter().enumerate() {
            yaml += &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: x, labels: {{pod: {pod}}}}}\nspec: {{nodeName: n1, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: 10.0.0.{}}}\n---\n",
                i + 1
            );
        }
        yaml += "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n";
        yaml += policy;
        let (objects, problems) = parse_documents(&yaml, "t.yaml");
        assert!(problems.is_empty(), "{problems:?}");
        Model::from_objects(objects)
    }

    const A_FROM_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}\n";
    const A_FROM_ALL_80: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 80}]}]}\n";

    #[test]
    fn writes_rules_before_the_ipcache_before_endpoints_and_deletes_in_reverse() {
        let mut maps = Fake::default();
        let mut syncer = PolicySyncer::new("n1", &maps).expect("read");
        assert!(syncer.compile(&model(A_FROM_B)).is_empty());
        syncer.apply(&mut maps);
        assert!(syncer.in_sync() && maps.held == *syncer.desired());
        let kinds: Vec<&str> = maps.log.iter().map(|op| op.map()).collect();
        assert_eq!(kinds, [names::POLICY, names::IPCACHE, names::POLICY_ENDPOINTS]);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        assert_eq!(maps.held.admits(a, false, b, 6, 80), Some(true));

        // Another policy: the old rule and ipcache entry go, after the new rule.
        maps.log.clear();
        syncer.compile(&model(A_FROM_ALL_80));
        syncer.apply(&mut maps);
        assert_eq!(maps.held, *syncer.desired());
        let order: Vec<String> = maps
            .log
            .iter()
            .map(|op| format!("{op:?}")[..6].to_owned())
            .collect();
        assert_eq!(order, ["PutRul", "DelIpc", "DelRul"], "{:?}", maps.log);
        assert_eq!(maps.held.admits(a, false, b, 6, 81), Some(false));
    }

    #[test]
    fn failed_writes_are_retried_and_a_restart_reads_the_maps_back() {
        let mut maps = Fake {
            fail: 2,
            ..Fake::default()
        };
        let mut syncer = PolicySyncer::new("n1", &maps).expect("read");
        assert!(syncer.in_sync(), "nothing to do before the first compile");
        assert_eq!(syncer.apply(&mut maps), PolicyReport::default());
        syncer.compile(&model(A_FROM_B));
        let report = syncer.apply(&mut maps);
        assert_eq!(report.failed, 2, "the rule and the ipcache entry: {report:?}");
        assert!(
            maps.held.endpoints.is_empty(),
            "no pod isolated before its rules are in"
        );
        assert!(!syncer.in_sync());
        syncer.apply(&mut maps);
        assert!(syncer.in_sync() && maps.held == *syncer.desired());

        // A new agent over the same maps: numbers above the old ones, the maps
        // rewritten to them and nothing stale left behind.
        let old = maps.held.clone();
        let mut again = PolicySyncer::new("n1", &maps).expect("read");
        again.compile(&model(A_FROM_B));
        again.apply(&mut maps);
        assert_eq!(maps.held, *again.desired());
        let max_old = old.ipcache.values().max().copied().unwrap_or(0);
        assert!(maps.held.ipcache.values().all(|id| *id > max_old));
        // Nothing isolated any more: every map empties.
        again.compile(&model(""));
        again.apply(&mut maps);
        assert_eq!(maps.held, DesiredPolicy::default());
    }
}
