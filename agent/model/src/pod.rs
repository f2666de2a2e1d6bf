//! What the compilers read from a Pod, in one place: the Services compiler
//! (Pods standing in for EndpointSlices, see `endpoints`) and the policy
//! compiler (selected pods and peers, see `policy`) must agree on which
//! fields say a pod's addresses, whether it has finished and what its named
//! ports are.

use k8s_openapi::api::core::v1::Pod;

use crate::net::{Protocol, port_number};

/// A pod's addresses as written: every `status.podIPs` entry, then
/// `status.podIP` (the API server keeps it equal to the first entry; a
/// hand-written manifest may set only it). Unparsed: each caller parses them as
/// it always has (see `endpoints::from_pod` and `policy::pod_ips`).
pub(crate) fn address_texts(pod: &Pod) -> impl Iterator<Item = &str> {
    listed_address_texts(pod).chain(primary_address_text(pod))
}

/// `status.podIPs`, in order.
pub(crate) fn listed_address_texts(pod: &Pod) -> impl Iterator<Item = &str> {
    let listed = pod.status.as_ref().and_then(|s| s.pod_ips.as_deref());
    listed.unwrap_or_default().iter().map(|p| p.ip.as_str())
}

/// `status.podIP`.
pub(crate) fn primary_address_text(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.pod_ip.as_deref())
}

/// Whether the pod has run to its end (phase `Succeeded` or `Failed`): its
/// address may have been handed to another pod since, so neither Services nor
/// policies count it.
pub(crate) fn is_finished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// Whether the pod runs in the host's network namespace (its address is the node's).
pub(crate) fn is_host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
}

/// The node the pod is scheduled to (`spec.nodeName`), if any.
pub(crate) fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// The number of the pod's container port `name` for `protocol` (restartable init
/// containers, i.e. sidecars, included): `FindPort` in kubernetes/kubernetes, for a
/// Service's named targetPort as for a NetworkPolicy's named port.
pub(crate) fn named_port(pod: &Pod, name: &str, protocol: Protocol) -> Option<u16> {
    let spec = pod.spec.as_ref()?;
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name) && Protocol::parse(p.protocol.as_deref()) == Some(protocol))
        .and_then(|p| port_number(p.container_port))
}
