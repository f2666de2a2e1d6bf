//! The pods as policies see them: which take part, their addresses and labels.

use std::{collections::BTreeMap, net::IpAddr};

use crate::{
    model::Model,
    object::{Kind, Object},
    pod::{self, PodFacts},
};

/// A pod as policies see it.
pub(super) struct PodView<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub pod: &'a PodFacts,
    /// On the node being compiled for (every pod is, for a whole-cluster
    /// compile): the pods whose own rules are resolved.
    pub local: bool,
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
