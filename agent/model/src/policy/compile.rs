//! Every NetworkPolicy of a model resolved ([`compile_policies`]), and encoded
//! for one node ([`compile_node`]).

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
};

use super::{
    encode::{DesiredPolicy, PolicyEncoder},
    pods::{PodView, pod_ips, takes_part},
    resolve::{Cluster, apply},
    rules::PodPolicies,
};
use crate::{
    model::Model,
    object::{Kind, Object},
    pod,
    problem::{Problem, ProblemReason},
};

/// The labels of a pod without any.
static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// The label the API server puts on every namespace: its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Resolves every NetworkPolicy of the model. Invalid parts (a bad CIDR, a bad
/// protocol) are reported and left out of their rule, which then admits less,
/// never more.
pub fn compile_policies(model: &Model) -> (PodPolicies, Vec<Problem>) {
    let (policies, problems, _) = resolve_for(model, None);
    (policies, problems)
}

/// [`compile_policies`] for the pods of `node` alone (`None`: every pod), and
/// their addresses (those of [`super::local_pod_ips`]): a node's maps need no other pod's
/// rules, and a policy that selects none of them is only checked, not
/// resolved (its peers are a scan of pods: most of a compile, for rules that
/// would be thrown away). A pod at one of those addresses counts as local
/// wherever it runs: the rules are the address's.
fn resolve_for(model: &Model, node: Option<&str>) -> (PodPolicies, Vec<Problem>, Vec<IpAddr>) {
    // Every namespace carries `kubernetes.io/metadata.name` (the API server sets
    // it); one that pods name without a Namespace object (a manifest directory
    // may leave `default` out) has that label alone.
    let name_label = |name: &str, labels: Option<&BTreeMap<String, String>>| {
        let mut labels = labels.cloned().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
        labels
    };
    let mut namespaces: BTreeMap<&str, BTreeMap<String, String>> = model
        .of_kind(Kind::Namespace)
        .filter_map(|(key, entry)| match &entry.object {
            Object::Namespace(ns) => Some((
                key.name.as_str(),
                name_label(&key.name, ns.metadata.labels.as_ref()),
            )),
            _ => None,
        })
        .collect();
    // In namespace order, as the model keeps them.
    let mut pods: Vec<PodView<'_>> = model
        .of_kind(Kind::Pod)
        .filter_map(|(key, entry)| match &entry.object {
            Object::Pod(pod) if takes_part(pod) => Some(PodView {
                namespace: key.namespace.as_str(),
                labels: pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS),
                local: node.is_none_or(|n| pod::node_name(pod) == Some(n)),
                ips: pod_ips(pod),
                pod,
            }),
            _ => None,
        })
        .collect();
    let local_ips: Vec<IpAddr> = pods
        .iter()
        .filter(|p| p.local)
        .flat_map(|p| p.ips.iter().copied())
        .collect();
    let by_address: HashSet<IpAddr> = local_ips.iter().copied().collect();
    for pod in pods.iter_mut().filter(|p| !p.local) {
        pod.local = pod.ips.iter().any(|ip| by_address.contains(ip));
    }
    // `resolve` finds a namespace's pods by bisection.
    debug_assert!(pods.is_sorted_by_key(|p| p.namespace));
    for pod in &pods {
        namespaces
            .entry(pod.namespace)
            .or_insert_with(|| name_label(pod.namespace, None));
    }
    let mut out = PodPolicies::default();
    let mut problems = Vec::new();
    let mut cluster = Cluster::new(&pods, &namespaces);
    for (key, entry) in model.of_kind(Kind::NetworkPolicy) {
        let Object::NetworkPolicy(policy) = &entry.object else {
            continue;
        };
        let mut report = |reason: String| {
            problems.push(Problem {
                origin: entry.origin.clone(),
                object: Some(key.to_string()),
                reason: ProblemReason::BadPolicy(reason),
            })
        };
        apply(key, policy, &mut cluster, &mut out, &mut report);
    }
    (out, problems, local_ips)
}

/// The policy maps of `node`: every policy resolved, then encoded for the
/// node's pods by `encoder` (which keeps its numbers between calls).
pub fn compile_node(model: &Model, node: &str, encoder: &mut PolicyEncoder) -> (DesiredPolicy, Vec<Problem>) {
    let (policies, problems, local) = resolve_for(model, Some(node));
    (encoder.encode(&policies, &local), problems)
}
