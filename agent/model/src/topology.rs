//! Which endpoints take new connections: kube-proxy's `CategorizeEndpoints`
//! (pkg/proxy/topology.go) with the terminating-endpoint fallback of KEP-1669
//! and topology-aware routing (KEP-2433 hints, KEP-3015/4444
//! `trafficDistribution`): the EndpointSlice controller hints each endpoint
//! for zones or nodes, and a node's clients of a Cluster-policy Service use
//! the endpoints hinted for them.

use std::{collections::BTreeMap, sync::Arc};

use serde::Serialize;

use crate::{
    endpoints::Endpoint,
    slice::{Hints, NodeRef},
};

/// The label that puts a Node in a zone (`topology.kubernetes.io/zone`).
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// The annotation that hands a Service's hints to the EndpointSlice
/// controller's proportional allocation (`Auto`), by its older name and its
/// newer: the controller reads the older first, which wins when both are set.
const ANNOTATIONS_TOPOLOGY_MODE: [&str; 2] = [
    "service.kubernetes.io/topology-aware-hints",
    "service.kubernetes.io/topology-mode",
];

/// The hints a Service's `spec.trafficDistribution` has the EndpointSlice
/// controller write (its `trafficdist` heuristic): each ready endpoint hinted
/// for its own zone, and with `PreferSameNode` for its own node too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Distribution {
    SameZone,
    SameNode,
}

impl Distribution {
    /// From the Service's field; `None` for the default, an unknown value, or
    /// a Service whose topology-mode annotation says `Auto`: the controller
    /// then allocates zones in proportion to their nodes' CPUs, which a node
    /// cannot stand in for (its slices carry those hints).
    pub fn of(field: Option<&str>, annotations: Option<&BTreeMap<String, String>>) -> Option<Self> {
        let mode = ANNOTATIONS_TOPOLOGY_MODE
            .iter()
            .find_map(|a| annotations.and_then(|m| m.get(*a)));
        if matches!(mode.map(String::as_str), Some("Auto" | "auto")) {
            return None;
        }
        match field? {
            "PreferClose" | "PreferSameZone" => Some(Distribution::SameZone),
            "PreferSameNode" => Some(Distribution::SameNode),
            _ => None,
        }
    }

    /// The hints the controller gives a ready endpoint on `node` in `zone`
    /// (a Node's non-empty zone label).
    pub fn hints(self, node: Option<&str>, zone: Option<&str>) -> Option<Arc<Hints>> {
        let node = node.filter(|_| self == Distribution::SameNode).map(NodeRef::of);
        Hints::shared(
            zone.map(Box::from).into_iter().collect(),
            node.into_iter().collect(),
        )
    }
}

/// Which of a Service port's ready endpoints this node's clients use, by their
/// hints (kube-proxy's topology modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Topology<'a> {
    /// Every ready endpoint: the hints are absent, incomplete or name neither
    /// this node nor its zone.
    Any,
    /// The endpoints hinted for this node (`trafficDistribution:
    /// PreferSameNode`).
    SameNode(NodeRef),
    /// The endpoints hinted for this node's zone (`PreferSameZone`,
    /// `PreferClose`, `topology-mode: Auto`).
    SameZone(&'a str),
}

/// For the view: the mode a frontend's slots were chosen by, in
/// `trafficDistribution`'s words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TopologyMode {
    PreferSameNode,
    PreferSameZone,
}

impl<'a> Topology<'a> {
    /// kube-proxy's `topologyModeFromHints`. Only ready endpoints count: if
    /// every one has a node hint and one is hinted for `node`, same node; else
    /// if every one has a zone hint and one is hinted for `zone` (the Node's
    /// zone label), same zone; else any. Falling back to every endpoint when
    /// the hints leave this node none keeps clients served while the
    /// controller catches up, and is why the choice is all or nothing.
    /// (`zone` is `""` for a Node without the label, as in kube-proxy.)
    pub fn of(endpoints: &[Endpoint], node: Option<NodeRef>, zone: &'a str) -> Self {
        let ready = || endpoints.iter().filter(|e| e.ready);
        let hinted = |has: fn(&Hints) -> bool| ready().all(|e| e.hints.as_deref().is_some_and(has));
        if ready().next().is_none() {
            return Topology::Any;
        }
        if let Some(node) = node
            && hinted(|h| !h.nodes.is_empty())
            && ready().any(|e| e.hints.as_deref().is_some_and(|h| h.for_node(node)))
        {
            return Topology::SameNode(node);
        }
        if hinted(|h| !h.zones.is_empty())
            && ready().any(|e| e.hints.as_deref().is_some_and(|h| h.for_zone(zone)))
        {
            return Topology::SameZone(zone);
        }
        Topology::Any
    }

    /// Whether the mode leaves `endpoint` to this node's clients.
    fn admits(self, endpoint: &Endpoint) -> bool {
        let hints = endpoint.hints.as_deref();
        match self {
            Topology::Any => true,
            Topology::SameNode(node) => hints.is_some_and(|h| h.for_node(node)),
            Topology::SameZone(zone) => hints.is_some_and(|h| h.for_zone(zone)),
        }
    }

    pub fn mode(self) -> Option<TopologyMode> {
        match self {
            Topology::Any => None,
            Topology::SameNode(_) => Some(TopologyMode::PreferSameNode),
            Topology::SameZone(_) => Some(TopologyMode::PreferSameZone),
        }
    }
}

/// Endpoints for traffic policy `Cluster`: the ready ones `topology` admits;
/// if none is ready anywhere, the ones that are serving and terminating,
/// hints or not (so that a rolling update whose old pods are draining does
/// not turn into dropped connections). A mode other than `Any` admits at
/// least one ready endpoint, so the fallback happens only when none is ready.
pub(crate) fn cluster_endpoints<'e>(endpoints: &'e [Endpoint], topology: Topology<'_>) -> Vec<&'e Endpoint> {
    let ready: Vec<&Endpoint> = endpoints
        .iter()
        .filter(|e| e.ready && topology.admits(e))
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints.iter().filter(|e| e.serving && e.terminating).collect()
}

/// Endpoints for traffic policy `Local`: this node's ready endpoints, hints
/// or not (the policy already keeps traffic closest); if none is ready here, this node's serving-and-terminating ones, even when other nodes have
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
    use std::sync::Arc;

    use super::*;

    fn ep(last: u8, node: &str, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addr: std::net::IpAddr::from([10, 0, 0, last]),
            port: 80,
            node_name: Some(NodeRef::of(node)),
            ready,
            serving,
            terminating,
            hints: None,
        }
    }

    /// A ready endpoint on node `node` hinted for `zones` and `nodes`.
    fn hinted(last: u8, node: &str, zones: &[&str], nodes: &[&str]) -> Endpoint {
        Endpoint {
            hints: Some(Arc::new(Hints {
                zones: zones.iter().map(|z| (*z).into()).collect(),
                nodes: nodes.iter().map(|n| NodeRef::of(n)).collect(),
            })),
            ..ep(last, node, true, true, false)
        }
    }

    fn cluster(endpoints: &[Endpoint], node: &str, zone: &str) -> (Vec<u8>, Option<TopologyMode>) {
        let topology = Topology::of(endpoints, NodeRef::this_node(node), zone);
        (lasts(&cluster_endpoints(endpoints, topology)), topology.mode())
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
        assert_eq!(cluster(&all, "a", ""), (vec![1], None));
        assert_eq!(cluster(&all[1..], "a", ""), (vec![2], None));
        assert_eq!(cluster(&all[2..], "a", ""), (vec![], None));
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

    /// The EndpointSlice controller's choice between its heuristics.
    #[test]
    fn the_distribution_the_controller_hints_by() {
        let of = |field: Option<&str>, annotations: &[(&str, &str)]| {
            let annotations: BTreeMap<String, String> = annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            Distribution::of(field, Some(&annotations))
        };
        let close = Some("PreferClose");
        assert_eq!(of(close, &[]), Some(Distribution::SameZone));
        assert_eq!(of(Some("PreferSameZone"), &[]), Some(Distribution::SameZone));
        assert_eq!(of(Some("PreferSameNode"), &[]), Some(Distribution::SameNode));
        assert_eq!(of(Some("preferclose"), &[]), None, "values are exact");
        assert_eq!(of(None, &[]), None);
        // `Auto` (or `auto`) under either name: the proportional hints instead.
        let (old, new) = ANNOTATIONS_TOPOLOGY_MODE.into();
        assert_eq!(old, "service.kubernetes.io/topology-aware-hints");
        for (name, value) in [(new, "Auto"), (new, "auto"), (old, "Auto"), (old, "auto")] {
            assert_eq!(of(close, &[(name, value)]), None, "{name}: {value}");
        }
        assert_eq!(of(close, &[(new, "AUTO")]), Some(Distribution::SameZone));
        assert_eq!(of(close, &[(new, "Disabled")]), Some(Distribution::SameZone));
        // Both set: the older name decides.
        assert_eq!(
            of(close, &[(old, "Disabled"), (new, "Auto")]),
            Some(Distribution::SameZone)
        );
        assert_eq!(of(close, &[(old, "Auto"), (new, "Disabled")]), None);
    }

    /// kube-proxy's `TestCategorizeEndpoints` cases for zone hints.
    #[test]
    fn zone_hints_choose_this_zones_endpoints_or_none_at_all() {
        let zoned = |zones: [&str; 4]| -> Vec<Endpoint> {
            (0..4)
                .map(|i| hinted(3 + i as u8, "n", &[zones[i]], &[]))
                .collect()
        };
        let abca = zoned(["zone-a", "zone-b", "zone-c", "zone-a"]);
        let same_zone = Some(TopologyMode::PreferSameZone);
        assert_eq!(cluster(&abca, "me", "zone-a"), (vec![3, 6], same_zone));
        // No zone label (or an empty one), or a zone nothing is hinted for:
        // every ready endpoint.
        assert_eq!(cluster(&abca, "me", ""), (vec![3, 4, 5, 6], None));
        assert_eq!(cluster(&abca, "me", "zone-d"), (vec![3, 4, 5, 6], None));
        // One ready endpoint without a zone hint: the hints are ignored.
        let mut missing = abca.clone();
        missing[2].hints = None;
        assert_eq!(cluster(&missing, "me", "zone-a"), (vec![3, 4, 5, 6], None));
        // ... but an unready one without hints does not count.
        missing[2].ready = false;
        assert_eq!(cluster(&missing, "me", "zone-a"), (vec![3, 6], same_zone));
        // An unready endpoint of this zone is not chosen; if no ready one is
        // hinted for this zone, every ready endpoint is.
        let mut unready = abca.clone();
        unready[3].ready = false;
        assert_eq!(cluster(&unready, "me", "zone-a"), (vec![3], same_zone));
        unready[0].ready = false;
        assert_eq!(cluster(&unready, "me", "zone-a"), (vec![4, 5], None));
        // Several zones per endpoint: any endpoint hinted for this one.
        let multi = [
            hinted(3, "n", &["zone-a", "zone-b", "zone-c"], &[]),
            hinted(4, "n", &["zone-b", "zone-c"], &[]),
            hinted(5, "n", &["zone-b", "zone-d"], &[]),
            hinted(6, "n", &["zone-c"], &[]),
        ];
        assert_eq!(cluster(&multi, "me", "zone-c"), (vec![3, 4, 6], same_zone));
    }

    /// Node hints (`PreferSameNode`) come before zone hints; the fallback when
    /// nothing is ready ignores hints.
    #[test]
    fn node_hints_come_first_and_the_terminating_fallback_ignores_hints() {
        let both = [
            hinted(1, "a", &["zone-a"], &["a"]),
            hinted(2, "b", &["zone-a"], &["b"]),
            hinted(3, "c", &["zone-b"], &["c"]),
        ];
        let same_node = Some(TopologyMode::PreferSameNode);
        assert_eq!(cluster(&both, "b", "zone-a"), (vec![2], same_node));
        // No endpoint hinted for this node: the zone hints decide.
        assert_eq!(
            cluster(&both, "d", "zone-a"),
            (vec![1, 2], Some(TopologyMode::PreferSameZone))
        );
        assert_eq!(cluster(&both, "d", "zone-c"), (vec![1, 2, 3], None));
        // One ready endpoint without a node hint: node hints ignored.
        let mut partial = both.clone();
        partial[2] = hinted(3, "c", &["zone-b"], &[]);
        assert_eq!(
            cluster(&partial, "b", "zone-b"),
            (vec![3], Some(TopologyMode::PreferSameZone))
        );
        // Nothing ready: serving and terminating ones, hinted for here or not.
        let draining: Vec<Endpoint> = both
            .iter()
            .map(|e| Endpoint {
                ready: false,
                terminating: true,
                ..e.clone()
            })
            .collect();
        assert_eq!(cluster(&draining, "b", "zone-a"), (vec![1, 2, 3], None));
    }

    /// Local policies ignore hints (kube-proxy: "topology ignored for Local
    /// endpoints").
    #[test]
    fn local_endpoints_ignore_hints() {
        let all = [
            hinted(1, "me", &["zone-a"], &[]),
            hinted(2, "me", &["zone-b"], &[]),
            hinted(3, "other", &["zone-a"], &[]),
        ];
        assert_eq!(lasts(&local_endpoints(&all, NodeRef::this_node("me"))), [1, 2]);
        assert_eq!(cluster(&all, "me", "zone-a").0, [1, 3]);
    }
}
