//! Every NetworkPolicy of a model resolved ([`compile_policies`]), and encoded
//! for one node ([`compile_node`]), by a compiler that keeps what it resolved
//! ([`PolicyCompiler`]): a change of one pod or one policy redoes only the
//! policies it can touch, as a change of one EndpointSlice recompiles one
//! Service.
//!
//! What a policy's resolution reads, and so what redoes it:
//! - its own object (a policy change);
//! - the pods of its namespace: which it selects, and their named ports (any
//!   change of a pod there);
//! - its peers' pods: each peer (its two selectors and, without a
//!   `namespaceSelector`, its namespace) is resolved once and kept with the
//!   policies that named it; a pod change drops the peers that picked the
//!   pod before or pick it now ([`Peer::may_pick`]), and redoes the policies
//!   that named them;
//! - every pod, for egress rules with named ports (one rule per peer pod,
//!   any pod an `ipBlock` may hold);
//! - the namespaces' labels, and which addresses are local: a change of
//!   either redoes everything (rare: a namespace relabelled, a pod of this
//!   node started, moved or gone).
//!
//! The union in policy order is exactly what resolving every policy again
//! gives (tested against a compile from scratch after random changes).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use super::{
    encode::{DesiredPolicy, PolicyEncoder},
    pods::PodView,
    resolve::{Cluster, Peer, PeerKey, apply},
    rules::PodPolicies,
};
use crate::{
    model::Model,
    object::{Kind, Object, ObjectKey},
    problem::{Problem, ProblemReason},
};

/// The kinds policies are resolved from: a change of any other kind changes
/// no policy.
pub const INPUTS: [Kind; 3] = [Kind::Pod, Kind::Namespace, Kind::NetworkPolicy];

/// The label the API server puts on every namespace: its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Resolves every NetworkPolicy of the model. Invalid parts (a bad CIDR, a bad
/// protocol) are reported and left out of their rule, which then admits less,
/// never more.
pub fn compile_policies(model: &Model) -> (PodPolicies, Vec<Problem>) {
    let mut compiler = PolicyCompiler::new(None);
    let problems = compiler.compile(model, None);
    (compiler.policies(), problems)
}

/// The policy maps of `node`: every policy resolved, then encoded for the
/// node's pods by `encoder` (which keeps its numbers between calls).
pub fn compile_node(model: &Model, node: &str, encoder: &mut PolicyEncoder) -> (DesiredPolicy, Vec<Problem>) {
    let mut compiler = PolicyCompiler::new(Some(node));
    let problems = compiler.compile(model, None);
    (
        encoder.encode(&compiler.policies(), compiler.local_ips()),
        problems,
    )
}

/// One policy resolved, and what it read.
#[derive(Debug, Default)]
struct Resolved {
    /// Its rules, per local pod it selects.
    out: PodPolicies,
    problems: Vec<Problem>,
    /// The peers it named.
    peers: Vec<PeerKey>,
    /// Its rules depend on every pod.
    every_pod: bool,
}

/// Resolves the policies of one node's pods (or of every pod), keeping each
/// policy's resolution between compiles (see the module's note).
#[derive(Debug, Default)]
pub struct PolicyCompiler {
    /// `None`: every pod's rules are resolved.
    node: Option<String>,
    /// The pods policies see, in the model's order (namespace, name).
    pods: Vec<PodView>,
    /// Every namespace's labels, the name label included; also those pods
    /// name without a Namespace object (which have that label alone).
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// The addresses of the local pods (see `PodView::local`).
    local_ips: Vec<IpAddr>,
    peers: HashMap<PeerKey, Peer>,
    policies: BTreeMap<ObjectKey, Resolved>,
    /// Whether the next compile must redo everything.
    stale: bool,
}

impl PolicyCompiler {
    pub fn new(node: Option<&str>) -> Self {
        Self {
            node: node.map(str::to_owned),
            stale: true,
            ..Self::default()
        }
    }

    /// Brings the resolution up to date with `model`, after a change of the
    /// objects `changed` (`None`: of anything, or unknown). Returns every
    /// policy's problems.
    pub fn compile(&mut self, model: &Model, changed: Option<&BTreeSet<ObjectKey>>) -> Vec<Problem> {
        let dirty = match changed {
            Some(changed) if !self.stale => self.update(model, changed),
            _ => None,
        };
        let dirty = dirty.unwrap_or_else(|| self.rebuild(model));
        if !dirty.is_empty() {
            for key in dirty {
                self.resolve(model, key);
            }
            // Peers no policy names any more go.
            let named: HashSet<&PeerKey> = self.policies.values().flat_map(|r| &r.peers).collect();
            self.peers.retain(|k, _| named.contains(k));
        }
        self.policies
            .values()
            .flat_map(|r| r.problems.iter().cloned())
            .collect()
    }

    /// Every policy's rules, per local pod, in policy order.
    pub fn policies(&self) -> PodPolicies {
        let mut out = PodPolicies::default();
        for resolved in self.policies.values() {
            for (ip, policy) in &resolved.out.pods {
                let entry = out.pods.entry(*ip).or_default();
                for (from, to) in [
                    (&policy.ingress, &mut entry.ingress),
                    (&policy.egress, &mut entry.egress),
                ] {
                    if let Some(from) = from {
                        to.get_or_insert_with(Vec::new).extend(from.iter().cloned());
                    }
                }
            }
        }
        out
    }

    /// The addresses of the local pods, whose rules [`Self::policies`] holds.
    pub fn local_ips(&self) -> &[IpAddr] {
        &self.local_ips
    }

    /// Reads pods and namespaces afresh; every policy is to be resolved.
    fn rebuild(&mut self, model: &Model) -> Vec<ObjectKey> {
        self.peers.clear();
        self.policies.clear();
        let policies: Vec<ObjectKey> = model
            .of_kind(Kind::NetworkPolicy)
            .map(|(k, _)| k.clone())
            .collect();
        // Without policies, nothing to resolve: no copy of the pods either,
        // and the first policy reads them afresh.
        self.stale = policies.is_empty();
        if self.stale {
            self.pods = Vec::new();
            self.namespaces.clear();
            self.local_ips.clear();
            return policies;
        }
        let node = self.node.as_deref();
        self.pods = model
            .of_kind(Kind::Pod)
            .filter_map(|(key, entry)| match &entry.object {
                Object::Pod(pod) => PodView::of(key, pod, node),
                _ => None,
            })
            .collect();
        self.mark_local();
        self.namespaces = model
            .of_kind(Kind::Namespace)
            .filter_map(|(key, entry)| match &entry.object {
                Object::Namespace(ns) => {
                    Some((key.name.clone(), ns.metadata.labels.clone().unwrap_or_default()))
                }
                _ => None,
            })
            .collect();
        for pod in &self.pods {
            if !self.namespaces.contains_key(&pod.namespace) {
                self.namespaces.insert(pod.namespace.clone(), BTreeMap::new());
            }
        }
        // Every namespace carries `kubernetes.io/metadata.name` (the API
        // server sets it, and a manifest directory may leave `default` out).
        for (name, labels) in &mut self.namespaces {
            labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
        }
        policies
    }

    /// The pods on the node and, wherever it runs, a pod at one of their
    /// addresses are local: the rules are the address's.
    fn mark_local(&mut self) {
        self.local_ips = self
            .pods
            .iter()
            .filter(|p| p.on_node)
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        let local: HashSet<IpAddr> = self.local_ips.iter().copied().collect();
        for pod in &mut self.pods {
            pod.local = pod.on_node || pod.ips.iter().any(|ip| local.contains(ip));
        }
    }

    /// Takes in a change of `changed`: the policies to resolve again, or
    /// `None` when everything must be.
    fn update(&mut self, model: &Model, changed: &BTreeSet<ObjectKey>) -> Option<Vec<ObjectKey>> {
        if self.policies.is_empty() {
            return None;
        }
        let mut dirty: BTreeSet<ObjectKey> = BTreeSet::new();
        let mut namespaces: BTreeSet<String> = BTreeSet::new();
        let mut dropped: HashSet<PeerKey> = HashSet::new();
        let mut any_pod = false;
        for key in changed {
            match key.kind {
                Kind::Namespace => return None,
                Kind::NetworkPolicy => {
                    dirty.insert(key.clone());
                }
                Kind::Pod => {
                    self.update_pod(model, key, &mut dropped, &mut namespaces);
                    any_pod = true;
                }
                _ => {}
            }
        }
        for (key, resolved) in &self.policies {
            if namespaces.contains(&key.namespace)
                || (any_pod && resolved.every_pod)
                || resolved.peers.iter().any(|p| dropped.contains(p))
            {
                dirty.insert(key.clone());
            }
        }
        Some(dirty.into_iter().collect())
    }

    /// Replaces the view of the pod `key` with what the model holds now, and
    /// drops the peers that picked it or pick it now. Adds to `namespaces`
    /// those whose pods changed (whose policies are to be resolved again).
    fn update_pod(
        &mut self,
        model: &Model,
        key: &ObjectKey,
        dropped: &mut HashSet<PeerKey>,
        namespaces: &mut BTreeSet<String>,
    ) {
        let node = self.node.as_deref();
        let new = match model.get(key).map(|e| &e.object) {
            Some(Object::Pod(pod)) => PodView::of(key, pod, node),
            _ => None,
        };
        let at = self
            .pods
            .binary_search_by(|p| (p.namespace.as_str(), p.name.as_str()).cmp(&(&key.namespace, &key.name)));
        let old = at.ok().map(|i| &self.pods[i]);
        if !self.namespaces.contains_key(&key.namespace) {
            let labels = BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), key.namespace.clone())]);
            self.namespaces.insert(key.namespace.clone(), labels);
        }
        let namespace_labels = self.namespaces.get(&key.namespace);
        for view in old.into_iter().chain(new.as_ref()) {
            for (peer_key, peer) in &self.peers {
                if peer.may_pick(&peer_key.0, &key.namespace, namespace_labels, &view.labels) {
                    dropped.insert(peer_key.clone());
                }
            }
        }
        self.peers.retain(|k, _| !dropped.contains(k));
        namespaces.insert(key.namespace.clone());
        // The node's addresses before and after.
        let on_node =
            |p: Option<&PodView>| p.filter(|p| p.on_node).map(|p| p.ips.clone()).unwrap_or_default();
        let (gone, came) = (on_node(old), on_node(new.as_ref()));
        match (at, new) {
            (Ok(i), Some(new)) => self.pods[i] = new,
            (Ok(i), None) => {
                self.pods.remove(i);
            }
            (Err(i), Some(new)) => self.pods.insert(i, new),
            (Err(_), None) => {}
        }
        if gone != came {
            // A pod of this node started, moved or went: which pods are
            // local changes at those addresses only.
            for ip in &gone {
                if let Some(i) = self.local_ips.iter().position(|l| l == ip) {
                    self.local_ips.remove(i);
                }
            }
            self.local_ips.extend(&came);
            for pod in &mut self.pods {
                if pod.ips.iter().any(|ip| gone.contains(ip) || came.contains(ip)) {
                    pod.local = pod.on_node || pod.ips.iter().any(|ip| self.local_ips.contains(ip));
                    namespaces.insert(pod.namespace.clone());
                }
            }
        }
        if let Ok(i) | Err(i) = at
            && let Some(pod) = self
                .pods
                .get_mut(i)
                .filter(|p| p.name == key.name && p.namespace == key.namespace)
        {
            pod.local = pod.on_node || pod.ips.iter().any(|ip| self.local_ips.contains(ip));
        }
    }

    /// Resolves the policy `key` as the model holds it now (or forgets it).
    fn resolve(&mut self, model: &Model, key: ObjectKey) {
        let entry = model.get(&key);
        let Some((policy, origin)) = entry.and_then(|e| match &e.object {
            Object::NetworkPolicy(policy) => Some((policy, &e.origin)),
            _ => None,
        }) else {
            self.policies.remove(&key);
            return;
        };
        let mut cluster = Cluster::new(&self.pods, &self.namespaces, model, &mut self.peers);
        let mut resolved = Resolved::default();
        let problems = &mut resolved.problems;
        let mut report = |reason: String| {
            problems.push(Problem {
                origin: origin.to_string(),
                object: Some(key.to_string()),
                reason: ProblemReason::BadPolicy(reason),
            })
        };
        apply(&key, policy, &mut cluster, &mut resolved.out, &mut report);
        resolved.peers = cluster.used;
        resolved.every_pod = cluster.every_pod;
        self.policies.insert(key, resolved);
    }
}
