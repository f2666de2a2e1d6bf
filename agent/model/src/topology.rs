//! Which endpoints take new connections: kube-proxy's `CategorizeEndpoints`
//! (pkg/proxy/topology.go) with the terminating-endpoint fallback of KEP-1669.
//! Topology hints and trafficDistribution are not implemented: every ready
//! endpoint is eligible.

use crate::{endpoints::Endpoint, slice::NodeRef};

/// Endpoints for traffic policy `Cluster`: the ready ones; if none is ready
/// anywhere, the ones that are serving and terminating (so that a rolling update
/// whose old pods are draining does not turn into dropped connections).
pub(crate) fn cluster_endpoints(endpoints: &[Endpoint]) -> Vec<&Endpoint> {
    let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints.iter().filter(|e| e.serving && e.terminating).collect()
}

/// Endpoints for traffic policy `Local`: this node's ready endpoints; if none is
/// ready here, this node's serving-and-terminating ones, even when other nodes have
/// ready endpoints (the policy forbids leaving the node). None: the frontend
/// rejects, it never falls back to remote endpoints.
pub(crate) fn local_endpoints(endpoints: &[Endpoint], node: Option<NodeRef>) -> Vec<&Endpoint> {
    let local: Vec<&Endpoint> = endpoints.iter().filter(|e| e.is_local(node)).collect();
    let ready: Vec<&Endpoint> = local.iter().copied().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    local.into_iter().filter(|e| e.serving && e.terminating).collect()
}

/// Endpoints worth a backend entry: those that take, or may take, connections.
/// Keeping serving-but-not-ready ones lets established connections (conntrack
/// points at the backend id) finish while the slots stop choosing them.
pub(crate) fn is_usable(endpoint: &Endpoint) -> bool {
    endpoint.ready || endpoint.serving
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8, node: &str, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addr: std::net::IpAddr::from([10, 0, 0, last]),
            port: 80,
            node_name: Some(NodeRef::of(node)),
            ready,
            serving,
            terminating,
        }
    }

    fn lasts(eps: &[&Endpoint]) -> Vec<u8> {
        eps.iter()
            .map(|e| match e.addr {
                std::net::IpAddr::V4(v4) => v4.octets()[3],
                std::net::IpAddr::V6(_) => 0,
            })
            .collect()
    }

    /// (ready, serving, terminating) combinations of KEP-1669 and where they go.
    #[test]
    fn cluster_fallback_matrix() {
        let all = [
            ep(1, "a", true, true, false),   // ready
            ep(2, "a", false, true, true),   // serving, terminating
            ep(3, "a", false, false, true),  // terminating, not serving
            ep(4, "a", false, false, false), // not ready
            ep(5, "a", false, true, false),  // serving, not ready, not terminating
        ];
        assert_eq!(lasts(&cluster_endpoints(&all)), [1]);
        assert_eq!(lasts(&cluster_endpoints(&all[1..])), [2]);
        assert_eq!(lasts(&cluster_endpoints(&all[2..])), Vec::<u8>::new());
        let usable: Vec<u8> = all
            .iter()
            .filter(|e| is_usable(e))
            .map(|e| lasts(&[e])[0])
            .collect();
        assert_eq!(usable, [1, 2, 5]);
    }

    #[test]
    fn local_falls_back_to_local_terminating_not_to_remote() {
        let all = [
            ep(1, "remote", true, true, false),
            ep(2, "me", false, true, true),
            ep(3, "me", false, false, true),
        ];
        assert_eq!(lasts(&local_endpoints(&all, NodeRef::this_node("me"))), [2]);
        let all = [
            ep(1, "remote", true, true, false),
            ep(2, "me", true, true, false),
            ep(3, "me", false, true, true),
        ];
        assert_eq!(lasts(&local_endpoints(&all, NodeRef::this_node("me"))), [2]);
        assert_eq!(
            lasts(&local_endpoints(&all, NodeRef::this_node("other"))),
            Vec::<u8>::new()
        );
        // No node name configured: nothing is local.
        assert_eq!(
            lasts(&local_endpoints(&all, NodeRef::this_node(""))),
            Vec::<u8>::new()
        );
    }
}
