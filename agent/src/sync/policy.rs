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
//! maps back, keeps the identity and endpoint numbers that still mean the same
//! (see [`PolicyEncoder::adopt`]) and writes only what differs: nothing, when
//! the cluster did not change.

use std::collections::{BTreeMap, BTreeSet};

use weir_model::{
    Model, ObjectKey, Problem,
    policy::{self, DesiredPolicy, PolicyCompiler, PolicyEncoder},
};

use super::{Maps, SyncError, Tally, policy_maps::PolicyOp};

#[cfg(test)]
mod cost;

/// What one sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PolicyReport {
    /// Writes, deletes and failures.
    pub tally: Tally,
}

pub struct PolicySyncer {
    compiler: PolicyCompiler,
    /// The objects policies read that changed since the last compile (`None`:
    /// unknown, before the first).
    changed: Option<BTreeSet<ObjectKey>>,
    encoder: PolicyEncoder,
    /// What the maps hold, as far as our writes (or the read-back) tell.
    current: DesiredPolicy,
    /// The last compile's result; `None` before the first compile, when the
    /// maps keep what they hold (an agent whose source cannot be read yet must
    /// not lift every isolation).
    desired: Option<DesiredPolicy>,
}

impl PolicySyncer {
    /// Reads the maps back: their numbers are kept where they mean the same,
    /// new ones start above them.
    pub fn new(node: &str, maps: &impl Maps<PolicyOp>) -> Result<Self, SyncError> {
        let current = maps.read()?;
        let mut encoder = PolicyEncoder::default();
        // The first compile keeps the numbers that still mean the same; the
        // others start above every number in the maps, rules included (an
        // agent may have stopped between writing new rules and removing old
        // ones).
        encoder.adopt(&current);
        Ok(Self {
            compiler: PolicyCompiler::new(Some(node)),
            changed: None,
            encoder,
            current,
            desired: None,
        })
    }

    /// Takes note of objects the source changed (of any kind; policies read
    /// a few), for the next compile to redo only what they touch.
    pub fn note(&mut self, changed: &BTreeSet<ObjectKey>) {
        if let Some(pending) = &mut self.changed {
            pending.extend(
                changed
                    .iter()
                    .filter(|k| policy::INPUTS.contains(&k.kind))
                    .cloned(),
            );
        }
    }

    /// Makes the next compile redo everything (the model was replaced).
    pub fn forget(&mut self) {
        self.changed = None;
    }

    /// Whether a change of policy inputs awaits a compile.
    pub fn changed(&self) -> bool {
        self.changed.as_ref().is_none_or(|c| !c.is_empty())
    }

    /// Recompiles the node's policies from the model: the policies the
    /// changes noted since the last compile can touch (everything the first
    /// time). Numbers the maps still hold (a write that failed) are not
    /// handed out with a new meaning.
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
        let changed = self.changed.replace(BTreeSet::new());
        let problems = self.compiler.compile(model, changed.as_ref());
        let desired = self
            .encoder
            .encode(&self.compiler.policies(), self.compiler.local_ips());
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
    pub fn apply(&mut self, maps: &mut impl Maps<PolicyOp>) -> PolicyReport {
        let mut report = PolicyReport::default();
        let Some(desired) = &self.desired else {
            return report;
        };
        let current = &self.current;
        let puts: Vec<PolicyOp> = desired
            .rules
            .difference(&current.rules)
            .map(|r| PolicyOp::PutRule(*r))
            .collect();
        let ipcache: Vec<PolicyOp> = changed(&desired.ipcache, &current.ipcache)
            .into_iter()
            .map(|(k, v)| PolicyOp::PutIpcache(k, v))
            .collect();
        let endpoints: Vec<PolicyOp> = changed(&desired.endpoints, &current.endpoints)
            .into_iter()
            .map(|(k, v)| PolicyOp::PutEndpoint(k, v))
            .collect();
        let removals: Vec<PolicyOp> = gone(&desired.endpoints, &current.endpoints)
            .into_iter()
            .map(PolicyOp::DelEndpoint)
            .chain(
                gone(&desired.ipcache, &current.ipcache)
                    .into_iter()
                    .map(PolicyOp::DelIpcache),
            )
            .chain(
                current
                    .rules
                    .difference(&desired.rules)
                    .map(|r| PolicyOp::DelRule(*r)),
            )
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
    fn apply_one(&mut self, maps: &mut impl Maps<PolicyOp>, op: PolicyOp, report: &mut PolicyReport) -> bool {
        let took = report.tally.write(maps, &op);
        if took {
            op.apply_to(&mut self.current);
        }
        took
    }
}

/// Entries of `desired` that `current` lacks or holds with another value, in
/// one ordered walk of both (no lookup per key).
fn changed<K: Ord + Copy, V: PartialEq + Copy>(
    desired: &BTreeMap<K, V>,
    current: &BTreeMap<K, V>,
) -> Vec<(K, V)> {
    let mut held = current.iter().peekable();
    desired
        .iter()
        .filter(|(k, v)| {
            while held.next_if(|(h, _)| h < k).is_some() {}
            held.peek().is_none_or(|(h, hv)| h != k || hv != v)
        })
        .map(|(k, v)| (*k, *v))
        .collect()
}

/// Keys of `current` that `desired` does not hold.
fn gone<K: Ord + Copy, V: PartialEq + Copy>(desired: &BTreeMap<K, V>, current: &BTreeMap<K, V>) -> Vec<K> {
    let mut wanted = desired.keys().peekable();
    current
        .keys()
        .filter(|k| {
            while wanted.next_if(|w| w < k).is_some() {}
            wanted.peek() != Some(k)
        })
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use aya::maps::MapError;
    use weir_common::maps as names;
    use weir_model::parse_documents;

    use super::*;
    use crate::sync::MapOp;

    /// Maps in memory that record every write and fail the ones told to.
    #[derive(Default)]
    struct Fake {
        held: DesiredPolicy,
        log: Vec<PolicyOp>,
        fail: usize,
    }

    impl Maps<PolicyOp> for Fake {
        fn read(&self) -> Result<DesiredPolicy, SyncError> {
            Ok(self.held.clone())
        }

        fn apply(&mut self, op: &PolicyOp) -> Result<(), MapError> {
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
    const A_FROM_B_AND_SELF: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {}}]}]}\n";
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
        syncer.forget();
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
        assert_eq!(
            report.tally.failed, 2,
            "the rule and the ipcache entry: {report:?}"
        );
        assert!(
            maps.held.endpoints.is_empty(),
            "no pod isolated before its rules are in"
        );
        assert!(!syncer.in_sync());
        syncer.apply(&mut maps);
        assert!(syncer.in_sync() && maps.held == *syncer.desired());

        // A new agent over the same maps keeps their numbers: nothing to write.
        let old = maps.held.clone();
        let mut again = PolicySyncer::new("n1", &maps).expect("read");
        again.compile(&model(A_FROM_B));
        assert_eq!(again.apply(&mut maps), PolicyReport::default());
        assert!(again.in_sync() && maps.held == old);
        // One over maps a policy change left behind: the identity that now
        // stands for other addresses gets a number above the old ones, and
        // nothing stale is left.
        let mut again = PolicySyncer::new("n1", &maps).expect("read");
        again.compile(&model(A_FROM_B_AND_SELF));
        again.apply(&mut maps);
        assert_eq!(maps.held, *again.desired());
        let max_old = old.ipcache.values().max().copied().unwrap_or(0);
        assert!(
            maps.held.ipcache.values().all(|id| *id > max_old),
            "{:?}",
            maps.held.ipcache
        );
        assert_eq!(maps.held.endpoints, old.endpoints, "a's endpoint number kept");
        // Nothing isolated any more: every map empties.
        again.forget();
        again.compile(&model(""));
        again.apply(&mut maps);
        assert_eq!(maps.held, DesiredPolicy::default());
    }
}
