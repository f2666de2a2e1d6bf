//! An EndpointSlice as the model keeps it.
//!
//! The API's `Endpoint` is 352 bytes inline whatever it holds (zone, hints,
//! hostname, a target reference, each an `Option` of its own) and two heap
//! strings more: 100,000 of them were the largest share of the agent's heap.
//! Endpoint lookup reads an endpoint's first address, its three conditions,
//! its node and its topology hints, so the model keeps those, the address
//! parsed once and the node's name by a number ([`NodeRef`]), in 24 bytes,
//! and the hints, which most endpoints lack, beside them ([`Hints`]).
//!
//! Of the metadata, the model reads the name and namespace (the key) and the
//! `kubernetes.io/service-name` label and the last-change-trigger-time
//! annotation (for the network programming latency): those are kept as
//! fields, the labels and annotations are not. A `BTreeMap` allocates a 544-byte node for its
//! first entry: 5 MiB of label maps at 10,000 slices, for one string each.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

use k8s_openapi::api::discovery::v1::{EndpointHints, EndpointPort, EndpointSlice};

use crate::{
    endpoints::LABEL_SERVICE_NAME,
    net::{Family, Protocol, parse_ip, port_number},
    object::Meta,
};

/// The annotation the EndpointSlice controller sets to when the change a slice
/// carries began (RFC 3339).
pub const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// What the model keeps of an EndpointSlice.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceFacts {
    pub meta: Meta,
    /// The Service it belongs to: its `kubernetes.io/service-name` label.
    service: Option<Box<str>>,
    /// From `addressType`: `IPv4` or `IPv6`; `None` for `FQDN` (or anything
    /// else a hand-written slice says), whose endpoints carry no address to
    /// forward to.
    pub family: Option<Family>,
    pub ports: Box<[SlicePort]>,
    pub endpoints: Box<[SliceEndpoint]>,
    /// Each endpoint's topology hints, by its index in `endpoints`; empty
    /// (no allocation, 16 bytes per slice) when none has any, as in most
    /// clusters.
    pub hints: Box<[Option<Arc<Hints>>]>,
    /// When the change this version of the slice carries was triggered (its
    /// `endpoints.kubernetes.io/last-change-trigger-time` annotation, set by
    /// the EndpointSlice controller): the start of the network programming
    /// latency kube-proxy and the agent measure.
    pub trigger: Option<SystemTime>,
}

impl SliceFacts {
    /// The Service it belongs to, by its `kubernetes.io/service-name` label
    /// (unlabelled: none).
    pub fn service(&self) -> Option<&str> {
        self.service.as_deref().filter(|s| !s.is_empty())
    }
}

/// One endpoint of a slice, its conditions as written (unset is not false:
/// see `endpoints::from_slice` for the API's defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// The first address, the one consumers use (the API says so), if it is
    /// one (`net::parse_ip`, as endpoint lookup always read it).
    pub addr: Option<IpAddr>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub node_name: Option<NodeRef>,
}

/// An endpoint's topology hints (`hints.forZones`, `hints.forNodes`): the
/// zones and nodes whose clients the EndpointSlice controller meant it for
/// (`trafficDistribution`, or the `service.kubernetes.io/topology-mode:
/// Auto` annotation). One shared copy per distinct set: a cluster's
/// endpoints carry a few sets (one per zone, or one per node) many times over.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hints {
    pub zones: Box<[Box<str>]>,
    pub nodes: Box<[NodeRef]>,
}

/// Every distinct set of hints seen, kept for the process's life like node
/// names: the controller's are as few as zones and nodes (one zone, or one
/// zone and one node, each). Whoever writes EndpointSlices by hand may make
/// more, as they may name nodes that do not exist.
static HINTS: Mutex<BTreeSet<Arc<Hints>>> = Mutex::new(BTreeSet::new());

impl Hints {
    /// The shared copy of an endpoint's `hints`.
    fn of(hints: EndpointHints) -> Option<Arc<Self>> {
        let zones = hints.for_zones.into_iter().flatten().map(|z| z.name.into());
        let nodes = hints
            .for_nodes
            .into_iter()
            .flatten()
            .map(|n| NodeRef::of(&n.name));
        Self::shared(zones.collect(), nodes.collect())
    }

    /// The shared copy of hints for `zones` and `nodes` (sets: their order
    /// does not matter); `None` when they name no zone and no node (`hints:
    /// {}` is no hint).
    pub(crate) fn shared(mut zones: Vec<Box<str>>, mut nodes: Vec<NodeRef>) -> Option<Arc<Self>> {
        if zones.is_empty() && nodes.is_empty() {
            return None;
        }
        zones.sort_unstable();
        zones.dedup();
        nodes.sort_unstable();
        nodes.dedup();
        let hints = Self {
            zones: zones.into(),
            nodes: nodes.into(),
        };
        let mut set = HINTS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(shared) = set.get(&hints) {
            return Some(shared.clone());
        }
        let shared = Arc::new(hints);
        set.insert(shared.clone());
        Some(shared)
    }

    pub fn for_zone(&self, zone: &str) -> bool {
        self.zones.iter().any(|z| **z == *zone)
    }

    pub fn for_node(&self, node: NodeRef) -> bool {
        self.nodes.contains(&node)
    }
}

/// A port of a slice, as endpoint lookup matches it to a Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    /// `""` when absent (what the controllers write for an unnamed port).
    pub name: Box<str>,
    /// `None`: a protocol no Service port has.
    pub protocol: Option<Protocol>,
    /// `None`: absent or out of range.
    pub port: Option<u16>,
}

impl From<EndpointPort> for SlicePort {
    fn from(port: EndpointPort) -> Self {
        Self {
            name: port.name.unwrap_or_default().into(),
            protocol: Protocol::parse(port.protocol.as_deref()),
            port: port.port.and_then(port_number),
        }
    }
}

impl From<EndpointSlice> for SliceFacts {
    fn from(slice: EndpointSlice) -> Self {
        let mut meta = slice.metadata;
        let trigger = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_TRIGGER_TIME))
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            // (jiff's own conversion needs its `std` feature.)
            .and_then(|t| u64::try_from(t.as_nanosecond()).ok())
            .map(|ns| SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(ns));
        let mut hints = Vec::new();
        let endpoints = slice
            .endpoints
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                if let Some(shared) = e.hints.and_then(Hints::of) {
                    hints.resize(i, None);
                    hints.push(Some(shared));
                }
                let conditions = e.conditions.unwrap_or_default();
                SliceEndpoint {
                    addr: e.addresses.first().and_then(|a| parse_ip(a)),
                    ready: conditions.ready,
                    serving: conditions.serving,
                    terminating: conditions.terminating,
                    node_name: e.node_name.as_deref().map(NodeRef::of),
                }
            })
            .collect::<Box<[_]>>();
        if !hints.is_empty() {
            hints.resize(endpoints.len(), None);
        }
        Self {
            trigger,
            service: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SERVICE_NAME))
                .map(|s| s.as_str().into()),
            meta: Meta::take(&mut meta),
            family: Family::from_address_type(&slice.address_type),
            ports: slice.ports.into_iter().flatten().map(SlicePort::from).collect(),
            endpoints,
            hints: hints.into(),
        }
    }
}

/// A node's name by its number in the process's table of node names: a
/// cluster's endpoints name a few nodes 100,000 times over, and a number is
/// 4 bytes where a shared name is a 16-byte pointer (an `Arc<str>`, as this
/// was: 16 MiB at 100,000 slices of 10 endpoints). Names are kept for the
/// process's life: nodes are few, and one that goes and comes back keeps its
/// number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeRef(NonZeroU32);

/// The names, in the order they were first seen, and their numbers.
#[derive(Default)]
struct NodeNames {
    names: Vec<Arc<str>>,
    numbers: BTreeMap<Arc<str>, NodeRef>,
}

static NODE_NAMES: Mutex<Option<NodeNames>> = Mutex::new(None);

impl NodeRef {
    pub fn of(name: &str) -> Self {
        let mut table = NODE_NAMES.lock().unwrap_or_else(PoisonError::into_inner);
        let table = table.get_or_insert_with(NodeNames::default);
        if let Some(n) = table.numbers.get(name) {
            return *n;
        }
        let name: Arc<str> = Arc::from(name);
        // Numbers start at 1 (`Option<NodeRef>` is 4 bytes); 4 billion
        // names would be a cluster no API server holds.
        let n = NodeRef(NonZeroU32::MIN.saturating_add(table.names.len() as u32));
        table.names.push(name.clone());
        table.numbers.insert(name, n);
        n
    }

    /// The number of the node a compile is for, to compare endpoints' with
    /// once per Service rather than by name per endpoint. `None` for a node
    /// without a name: no endpoint is on it.
    pub fn this_node(name: &str) -> Option<Self> {
        (!name.is_empty()).then(|| Self::of(name))
    }

    /// The name, one shared copy of it.
    pub fn name(self) -> Arc<str> {
        let table = NODE_NAMES.lock().unwrap_or_else(PoisonError::into_inner);
        let names = table.as_ref().map_or(&[][..], |t| &t.names[..]);
        // Every number was made by `of`, which made its name.
        names[(self.0.get() - 1) as usize].clone()
    }
}

/// Written as the node's name.
impl serde::Serialize for NodeRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl fmt::Debug for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.name())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};

    use super::*;

    #[test]
    fn an_endpoint_keeps_its_first_address_conditions_and_a_shared_node_name() {
        let endpoint = |addresses: &[&str], node: &str| Endpoint {
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            conditions: Some(EndpointConditions {
                ready: Some(false),
                serving: None,
                terminating: Some(true),
            }),
            node_name: Some(node.to_owned()),
            hostname: Some("h".to_owned()),
            zone: Some("z".to_owned()),
            ..Endpoint::default()
        };
        let slice = SliceFacts::from(EndpointSlice {
            address_type: "IPv4".to_owned(),
            endpoints: vec![
                endpoint(&[" 10.0.0.1", "10.0.0.2"], "node-a"),
                endpoint(&["not an address"], "node-a"),
            ],
            ..EndpointSlice::default()
        });
        assert_eq!(slice.endpoints[0].addr, Some("10.0.0.1".parse().expect("ip")));
        assert_eq!(slice.endpoints[1].addr, None);
        let e = &slice.endpoints[0];
        assert_eq!(
            (e.ready, e.serving, e.terminating),
            (Some(false), None, Some(true))
        );
        let (a, b) = (slice.endpoints[0].node_name, slice.endpoints[1].node_name);
        assert_eq!(a, b, "one number for one name");
        assert_eq!(&*a.expect("node").name(), "node-a");
        assert_ne!(Some(NodeRef::of("node-b")), a);
        assert!(
            Arc::ptr_eq(&a.expect("node").name(), &NodeRef::of("node-a").name()),
            "one copy of the name"
        );
        assert!(std::mem::size_of::<SliceEndpoint>() <= 24);
    }

    /// Hints sit beside the endpoints by index, only when one has any, one
    /// shared copy per set whatever its order.
    #[test]
    fn hints_are_kept_by_endpoint_only_when_there_are_some() {
        use k8s_openapi::api::discovery::v1::{EndpointHints, ForNode, ForZone};
        let endpoint = |hints: Option<EndpointHints>| Endpoint {
            addresses: vec!["10.0.0.1".to_owned()],
            hints,
            ..Endpoint::default()
        };
        let zones = |names: &[&str]| EndpointHints {
            for_zones: Some(
                names
                    .iter()
                    .map(|n| ForZone {
                        name: (*n).to_owned(),
                    })
                    .collect(),
            ),
            for_nodes: None,
        };
        let slice = |endpoints: Vec<Endpoint>| {
            SliceFacts::from(EndpointSlice {
                address_type: "IPv4".to_owned(),
                endpoints,
                ..EndpointSlice::default()
            })
        };
        // None, or `hints: {}`: nothing kept.
        let empty = EndpointHints::default();
        assert!(
            slice(vec![endpoint(None), endpoint(Some(empty))])
                .hints
                .is_empty()
        );
        // A hint on the second of three: by index, the others none.
        let s = slice(vec![
            endpoint(None),
            endpoint(Some(zones(&["b", "a"]))),
            endpoint(None),
        ]);
        assert_eq!(s.hints.len(), 3);
        assert!(s.hints[0].is_none() && s.hints[2].is_none());
        let hinted = s.hints[1].as_ref().expect("hints");
        assert!(hinted.for_zone("a") && hinted.for_zone("b") && !hinted.for_zone("c"));
        // The same set in another order, another slice: the same copy.
        let other = slice(vec![endpoint(Some(zones(&["a", "b", "a"])))]);
        assert!(Arc::ptr_eq(hinted, other.hints[0].as_ref().expect("hints")));
        let nodes = slice(vec![endpoint(Some(EndpointHints {
            for_zones: None,
            for_nodes: Some(vec![ForNode {
                name: "node-a".to_owned(),
            }]),
        }))]);
        let nodes = nodes.hints[0].as_ref().expect("hints");
        assert!(nodes.for_node(NodeRef::of("node-a")) && !nodes.for_node(NodeRef::of("node-b")));
        assert!(nodes.zones.is_empty());
    }

    #[test]
    fn the_trigger_time_is_read_from_the_controllers_annotation() {
        let with = |value: &str| {
            let mut slice = EndpointSlice::default();
            slice.metadata.annotations =
                Some([(ANNOTATION_TRIGGER_TIME.to_owned(), value.to_owned())].into());
            SliceFacts::from(slice).trigger
        };
        let at = |secs: u64, nanos: u32| Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, nanos));
        // The controller writes RFC 3339, to the second or finer.
        assert_eq!(with("2024-03-01T12:00:00Z"), at(1_709_294_400, 0));
        assert_eq!(
            with("2024-03-01T12:00:00.25+00:00"),
            at(1_709_294_400, 250_000_000)
        );
        assert_eq!(with("yesterday"), None);
        assert_eq!(SliceFacts::from(EndpointSlice::default()).trigger, None);
    }
}
