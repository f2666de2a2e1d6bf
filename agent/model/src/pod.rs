//! A Pod as the model keeps it, and what the compilers read from it, in one
//! place: the Services compiler (Pods standing in for EndpointSlices, see
//! `endpoints`) and the policy compiler (selected pods and peers, see
//! `policy`) must agree on which fields say a pod's addresses, whether it has
//! finished and what its named ports are.
//!
//! The API's `Pod` is 2,248 bytes inline and each `Container` 2,144, whatever
//! they hold; the model keeps the few fields the compilers read.

use k8s_openapi::api::core::v1::Pod;

use crate::{
    labels::Labels,
    net::{Protocol, port_number},
    object::Meta,
};

/// What the model keeps of a Pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodFacts {
    pub meta: Meta,
    labels: Labels,
    /// `metadata.deletionTimestamp` is set: the pod is being deleted.
    terminating: bool,
    /// `spec.nodeName`.
    node_name: Option<String>,
    /// `spec.hostNetwork`.
    host_network: bool,
    /// `status.phase`.
    phase: Option<String>,
    /// `status.podIPs`, as written.
    pod_ips: Box<[String]>,
    /// `status.podIP`, as written.
    pod_ip: Option<String>,
    /// `status.conditions` has `Ready` `True`.
    ready: bool,
    /// The named container ports, containers first, then the sidecars
    /// (restartable init containers), each with its protocol parsed (`None`:
    /// one no lookup asks for).
    named_ports: Box<[(String, Option<Protocol>, i32)]>,
}

impl From<Pod> for PodFacts {
    fn from(pod: Pod) -> Self {
        let spec = pod.spec.unwrap_or_default();
        let status = pod.status.unwrap_or_default();
        let sidecars = spec
            .init_containers
            .into_iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        let named_ports = spec
            .containers
            .into_iter()
            .chain(sidecars)
            .flat_map(|c| c.ports.into_iter().flatten())
            .filter_map(|p| Some((p.name?, Protocol::parse(p.protocol.as_deref()), p.container_port)))
            .collect();
        let mut metadata = pod.metadata;
        Self {
            meta: Meta::take(&mut metadata),
            labels: metadata.labels.map(Labels::from).unwrap_or_default(),
            terminating: metadata.deletion_timestamp.is_some(),
            node_name: spec.node_name,
            host_network: spec.host_network == Some(true),
            phase: status.phase,
            pod_ips: status.pod_ips.into_iter().flatten().map(|p| p.ip).collect(),
            pod_ip: status.pod_ip,
            ready: status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            named_ports,
        }
    }
}

impl PodFacts {
    /// `metadata.labels`, in the compact form.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// The addresses that are the pod's own, parsed: none for a pod on the
    /// host's network (those are the node's) or one run to its end (another
    /// pod may have them now).
    pub fn own_addresses(&self) -> impl Iterator<Item = std::net::IpAddr> + '_ {
        let own = !is_host_network(self) && !is_finished(self);
        address_texts(self)
            .filter(move |_| own)
            .filter_map(crate::net::parse_ip)
    }
}

/// A pod's addresses as written: every `status.podIPs` entry, then
/// `status.podIP` (the API server keeps it equal to the first entry; a
/// hand-written manifest may set only it). Unparsed: each caller parses them as
/// it always has (see `endpoints::from_pod` and `policy::pod_ips`).
pub(crate) fn address_texts(pod: &PodFacts) -> impl Iterator<Item = &str> {
    listed_address_texts(pod).chain(primary_address_text(pod))
}

/// `status.podIPs`, in order.
pub(crate) fn listed_address_texts(pod: &PodFacts) -> impl Iterator<Item = &str> {
    pod.pod_ips.iter().map(String::as_str)
}

/// `status.podIP`.
pub(crate) fn primary_address_text(pod: &PodFacts) -> Option<&str> {
    pod.pod_ip.as_deref()
}

/// Whether the pod has run to its end (phase `Succeeded` or `Failed`): its
/// address may have been handed to another pod since, so neither Services nor
/// policies count it.
pub(crate) fn is_finished(pod: &PodFacts) -> bool {
    matches!(pod.phase.as_deref(), Some("Succeeded" | "Failed"))
}

/// Whether the pod is being deleted (`metadata.deletionTimestamp` is set).
pub(crate) fn is_terminating(pod: &PodFacts) -> bool {
    pod.terminating
}

/// Whether the pod runs in the host's network namespace (its address is the node's).
pub(crate) fn is_host_network(pod: &PodFacts) -> bool {
    pod.host_network
}

/// The node the pod is scheduled to (`spec.nodeName`), if any.
pub(crate) fn node_name(pod: &PodFacts) -> Option<&str> {
    pod.node_name.as_deref()
}

/// Whether the pod's `Ready` condition is `True`.
pub(crate) fn is_ready(pod: &PodFacts) -> bool {
    pod.ready
}

/// The number of the pod's container port `name` for `protocol` (restartable init
/// containers, i.e. sidecars, included): `FindPort` in kubernetes/kubernetes, for a
/// Service's named targetPort as for a NetworkPolicy's named port.
pub(crate) fn named_port(pod: &PodFacts, name: &str, protocol: Protocol) -> Option<u16> {
    pod.named_ports
        .iter()
        .find(|(n, p, _)| n == name && *p == Some(protocol))
        .and_then(|(_, _, port)| port_number(*port))
}
