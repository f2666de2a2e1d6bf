//! The pods as policies see them: which take part, their addresses and labels.

use std::net::IpAddr;

use crate::{
    labels::Labels,
    model::Model,
    object::{Kind, Object, ObjectKey},
    pod::{self, PodFacts},
};

/// A pod as policies see it, kept between compiles (see `compile`): what
/// selectors read (namespace, labels) and what rules name (addresses), without
/// parsing or walking the model again on every change. Named ports are looked
/// up in the model when a rule names one ([`PodView::facts`]).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct PodView {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    /// On the node being compiled for (every pod is, for a whole-cluster
    /// compile).
    pub on_node: bool,
    /// On the node, or at the address of a pod that is: the pods whose own
    /// rules are resolved (set by the compiler).
    pub local: bool,
}

impl PodView {
    /// The view of a pod that takes part (`local` is the compiler's to set).
    pub fn of(key: &ObjectKey, pod: &PodFacts, node: Option<&str>) -> Option<Self> {
        takes_part(pod).then(|| Self {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            labels: pod.labels().clone(),
            ips: pod_ips(pod),
            on_node: node.is_none_or(|n| pod::node_name(pod) == Some(n)),
            local: false,
        })
    }

    /// The pod in `model`, for its named ports.
    pub fn facts<'m>(&self, model: &'m Model) -> Option<&'m PodFacts> {
        let key = ObjectKey::new(Kind::Pod, self.namespace.as_str(), self.name.as_str());
        match &model.get(&key)?.object {
            Object::Pod(pod) => Some(pod),
            _ => None,
        }
    }
}

/// Addresses of the pods on `node` that policies see (those it may isolate).
pub fn local_pod_ips(model: &Model, node: &str) -> Vec<IpAddr> {
    model
        .of_kind(Kind::Pod)
        .filter_map(|(_, entry)| match &entry.object {
            Object::Pod(pod) => Some(pod),
            _ => None,
        })
        .filter(|pod| takes_part(pod) && pod::node_name(pod) == Some(node))
        .flat_map(|pod| pod_ips(pod))
        .collect()
}

/// Whether policies see a pod, as selected pod or as peer: not one on the host's
/// network (its address is the node's, which policies do not govern, as in
/// other dataplanes), nor one that has finished (its address may be another's
/// by now). The Services compiler counts hostNetwork pods (the EndpointSlice
/// controller does), finished ones not either.
pub(super) fn takes_part(pod: &PodFacts) -> bool {
    !pod::is_host_network(pod) && !pod::is_finished(pod)
}

/// A pod's addresses (`status.podIPs`, then `podIP` unless listed already).
///
/// Parsed strictly (`str::parse`): unlike the Services compiler's
/// `net::parse_ip`, blanks around an address make it no address here. Kept as
/// it was when the Pod helpers were shared: the API server writes no blanks,
/// so only a hand-written manifest can tell the two apart.
pub fn pod_ips(pod: &PodFacts) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = pod::listed_address_texts(pod)
        .filter_map(|ip| ip.parse().ok())
        .collect();
    if let Some(ip) = pod::primary_address_text(pod).and_then(|ip| ip.parse().ok())
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    ips
}
