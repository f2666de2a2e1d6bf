//! Where a Service's endpoints come from, and what they are for one service port.
//!
//! In a cluster, EndpointSlices are the truth (kube-proxy reads only them). The
//! fallbacks stand in for the controllers a standalone node does not run:
//! - a selector-less Service with an `Endpoints` object: what the EndpointSlice
//!   mirroring controller would have mirrored;
//! - a Service with a selector: what the EndpointSlice controller would have derived
//!   from the Pods it selects.
//!
//! Both fallbacks apply only when no EndpointSlice names the Service at all.

use std::{
    collections::{BTreeMap, btree_map},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::{api::core::v1::Endpoints, apimachinery::pkg::util::intstr::IntOrString};
use serde::Serialize;

use crate::{
    model::Model,
    net::{Family, Protocol, parse_ip, port_number},
    nodes,
    pod::{self, PodFacts},
    policy::matches_labels,
    service::ServiceFacts,
    slice::{Hints, NodeRef, SliceFacts},
    topology::Distribution,
};

/// Label tying an EndpointSlice to its Service (`discovery.k8s.io/v1`).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label telling the mirroring controller to leave an `Endpoints` object alone.
pub const LABEL_SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";

/// One endpoint of one service port, with the Kubernetes condition defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    pub node_name: Option<NodeRef>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Its topology hints: only an EndpointSlice carries them.
    pub hints: Option<Arc<Hints>>,
}

impl Endpoint {
    /// Whether the endpoint is on `node` ([`NodeRef::this_node`]).
    pub fn is_local(&self, node: Option<NodeRef>) -> bool {
        node.is_some() && self.node_name == node
    }
}

/// A service port, as endpoint lookup needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PortSpec<'a> {
    /// `""` when absent: a single-port Service may leave its port unnamed.
    pub name: &'a str,
    pub protocol: Protocol,
    pub port: u16,
    pub target: Target<&'a str>,
}

/// A service port's `targetPort`: borrowed (`Target<&str>`) where endpoint
/// lookup reads it, owned (`Target<Box<str>>`) where the model keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target<S> {
    Number(u16),
    /// A container port name, resolved per Pod.
    Name(S),
}

impl<S> Target<S> {
    pub fn map<T>(self, f: impl FnOnce(S) -> T) -> Target<T> {
        match self {
            Target::Number(n) => Target::Number(n),
            Target::Name(name) => Target::Name(f(name)),
        }
    }

    pub fn as_deref(&self) -> Target<&str>
    where
        S: AsRef<str>,
    {
        match self {
            Target::Number(n) => Target::Number(*n),
            Target::Name(name) => Target::Name(name.as_ref()),
        }
    }
}

impl<'a> Target<&'a str> {
    /// An absent, `0` or `""` targetPort means `port` (API server defaulting).
    /// `Err` carries an out-of-range number.
    pub fn from_spec(target: Option<&'a IntOrString>, port: u16) -> Result<Self, i32> {
        match target {
            None | Some(IntOrString::Int(0)) => Ok(Target::Number(port)),
            Some(IntOrString::String(s)) if s.is_empty() => Ok(Target::Number(port)),
            Some(IntOrString::Int(n)) => u16::try_from(*n).map(Target::Number).map_err(|_| *n),
            Some(IntOrString::String(s)) => Ok(Target::Name(s)),
        }
    }
}

/// Where the endpoints of one Service come from.
#[derive(Clone, Debug)]
pub(crate) enum EndpointSource<'a> {
    Slices(Vec<&'a SliceFacts>),
    Endpoints(&'a Endpoints),
    Pods {
        pods: Vec<&'a PodFacts>,
        publish_not_ready: bool,
        /// What hints the controller would write (`trafficDistribution`).
        hinting: Option<PodHinting<'a>>,
    },
    None,
}

/// The hints the EndpointSlice controller gives Pods' endpoints: those
/// `spec.trafficDistribution` asks for, each Pod's zone its Node's (in the
/// model).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PodHinting<'a> {
    pub distribution: Distribution,
    pub model: &'a Model,
}

/// For the view: which source a Service's endpoints came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EndpointSourceKind {
    EndpointSlices,
    Endpoints,
    Pods,
    None,
}

impl<'a> EndpointSource<'a> {
    pub fn for_service(
        model: &'a Model,
        namespace: &'a str,
        name: &'a str,
        service: &'a ServiceFacts,
    ) -> Self {
        let slices = model.slices_of(namespace, name);
        if !slices.is_empty() {
            return EndpointSource::Slices(slices);
        }
        // In a cluster the controllers write the slices; until they have, the
        // Service has no endpoints (no stand-in of ours may guess otherwise).
        if model.slices_only() {
            return EndpointSource::None;
        }
        match &service.selector {
            None => match model.endpoints(namespace, name) {
                Some(endpoints) if !skips_mirroring(endpoints) => EndpointSource::Endpoints(endpoints),
                _ => EndpointSource::None,
            },
            Some(selector) => EndpointSource::Pods {
                pods: model
                    .pods_in(namespace)
                    .filter(|pod| matches_labels(selector.iter(), Some(pod.labels())))
                    .collect(),
                publish_not_ready: service.publish_not_ready,
                hinting: service
                    .distribution
                    .map(|distribution| PodHinting { distribution, model }),
            },
        }
    }

    pub fn kind(&self) -> EndpointSourceKind {
        match self {
            EndpointSource::Slices(_) => EndpointSourceKind::EndpointSlices,
            EndpointSource::Endpoints(_) => EndpointSourceKind::Endpoints,
            EndpointSource::Pods { .. } => EndpointSourceKind::Pods,
            EndpointSource::None => EndpointSourceKind::None,
        }
    }

    /// The endpoints of `port` in `family`, deduplicated by (address, port) and
    /// sorted by them.
    pub fn endpoints(&self, port: &PortSpec<'_>, family: Family) -> Vec<Endpoint> {
        let mut set = EndpointSet::default();
        match self {
            EndpointSource::Slices(slices) => {
                for slice in slices {
                    from_slice(slice, port, family, &mut set);
                }
            }
            EndpointSource::Endpoints(endpoints) => from_endpoints(endpoints, port, family, &mut set),
            EndpointSource::Pods {
                pods,
                publish_not_ready,
                hinting,
            } => {
                for pod in pods {
                    from_pod(pod, port, family, (*publish_not_ready, *hinting), &mut set);
                }
            }
            EndpointSource::None => {}
        }
        set.0.into_values().collect()
    }
}

#[derive(Default)]
struct EndpointSet(BTreeMap<(IpAddr, u16), Endpoint>);

impl EndpointSet {
    /// Overlapping slices (an endpoint moving between slices, a custom
    /// controller) may list the same address and port twice, as may a Pod
    /// network that gave a terminating Pod's address to a new Pod. kube-proxy
    /// keeps one per address and port, a later copy replacing an earlier one
    /// unless it is terminating (the running Pod over the terminating one);
    /// its order among slices is a map's, ours the slices' names, so the
    /// result is deterministic.
    fn add(&mut self, endpoint: Endpoint) {
        match self.0.entry((endpoint.addr, endpoint.port)) {
            btree_map::Entry::Vacant(v) => {
                v.insert(endpoint);
            }
            btree_map::Entry::Occupied(mut o) => {
                if !endpoint.terminating {
                    o.insert(endpoint);
                }
            }
        }
    }
}

fn from_slice(slice: &SliceFacts, want: &PortSpec<'_>, family: Family, set: &mut EndpointSet) {
    // FQDN slices (and unknown address types) carry no IP to forward to.
    if slice.family != Some(family) {
        return;
    }
    // The slice port for a service port is the one with the same name and protocol.
    // kube-proxy ignores a slice port without a name; we read an absent name as ""
    // (what the controllers write for an unnamed port) to accept hand-written slices.
    let Some(port) = slice
        .ports
        .iter()
        .find(|p| *p.name == *want.name && p.protocol == Some(want.protocol))
    else {
        return;
    };
    let Some(port) = port.port else {
        return;
    };
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        // All addresses of an endpoint are fungible; kube-proxy uses the first
        // (the only one the model keeps).
        let Some(addr) = endpoint.addr else {
            continue;
        };
        if Family::of(addr) != family {
            continue;
        }
        // EndpointConditions: ready nil = true, serving nil = true, terminating nil = false.
        set.add(Endpoint {
            addr,
            port,
            node_name: endpoint.node_name,
            ready: endpoint.ready.unwrap_or(true),
            serving: endpoint.serving.unwrap_or(true),
            terminating: endpoint.terminating.unwrap_or(false),
            hints: slice.hints.get(i).cloned().flatten(),
        });
    }
}

fn skips_mirroring(endpoints: &Endpoints) -> bool {
    endpoints
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SKIP_MIRROR))
        .map(String::as_str)
        == Some("true")
}

/// The mirroring controller turns `addresses` into endpoints with `ready: true` and
/// `notReadyAddresses` into `ready: false`, leaving serving and terminating unset.
fn from_endpoints(endpoints: &Endpoints, want: &PortSpec<'_>, family: Family, set: &mut EndpointSet) {
    for subset in endpoints.subsets.iter().flatten() {
        let Some(port) = subset.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or_default() == want.name
                && Protocol::parse(p.protocol.as_deref()) == Some(want.protocol)
        }) else {
            continue;
        };
        let Some(port) = port_number(port.port) else {
            continue;
        };
        let ready = subset.addresses.iter().flatten().map(|a| (a, true));
        let not_ready = subset.not_ready_addresses.iter().flatten().map(|a| (a, false));
        for (address, ready) in ready.chain(not_ready) {
            let Some(addr) = parse_ip(&address.ip).filter(|a| Family::of(*a) == family) else {
                continue;
            };
            set.add(Endpoint {
                addr,
                port,
                node_name: address.node_name.as_deref().map(NodeRef::of),
                ready,
                serving: true,
                terminating: false,
                hints: None,
            });
        }
    }
}

/// What the EndpointSlice controller writes for a Pod (`podToEndpoint` and
/// `ShouldPodBeInEndpoints` in kubernetes/kubernetes): terminal Pods (Succeeded,
/// Failed) and Pods without an IP are left out; terminating Pods stay, with
/// `serving` = the Pod's Ready condition and `ready` = serving and not terminating,
/// unless the Service publishes not-ready addresses; a ready one hinted as
/// `spec.trafficDistribution` asks (its zone: its Node's zone label).
fn from_pod(
    pod: &PodFacts,
    want: &PortSpec<'_>,
    family: Family,
    (publish_not_ready, hinting): (bool, Option<PodHinting<'_>>),
    set: &mut EndpointSet,
) {
    if pod::is_finished(pod) {
        return;
    }
    // The first address of the family; `parse_ip` trims blanks, which the
    // policy compiler's `pod_ips` does not (see there).
    let Some(addr) = pod::address_texts(pod)
        .filter_map(parse_ip)
        .find(|a| Family::of(*a) == family)
    else {
        return;
    };
    let Some(port) = resolve_target(pod, want) else {
        return;
    };
    let serving = pod::is_ready(pod);
    let terminating = pod::is_terminating(pod);
    let ready = publish_not_ready || (serving && !terminating);
    let node_name = pod::node_name(pod).filter(|n| !n.is_empty());
    let hints = hinting
        .filter(|_| ready)
        .and_then(|PodHinting { distribution, model }| {
            let zone = node_name
                .and_then(|n| nodes::get(model, n))
                .map(nodes::zone)
                .filter(|z| !z.is_empty());
            distribution.hints(node_name, zone)
        });
    set.add(Endpoint {
        addr,
        port,
        node_name: node_name.map(NodeRef::of),
        ready,
        serving,
        terminating,
        hints,
    });
}

/// `FindPort`: a numeric targetPort is used as is; a named one is looked up among
/// the Pod's container ports with the same protocol (regular containers and
/// restartable init containers, i.e. sidecars). A Pod without that port is not an
/// endpoint of this service port.
fn resolve_target(pod: &PodFacts, want: &PortSpec<'_>) -> Option<u16> {
    match want.target {
        Target::Number(n) => Some(n),
        Target::Name(name) => pod::named_port(pod, name, want.protocol),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(node: &str, ready: bool) -> Endpoint {
        Endpoint {
            addr: IpAddr::from([10, 0, 0, 1]),
            port: 80,
            node_name: Some(NodeRef::of(node)),
            ready,
            serving: ready,
            terminating: false,
            hints: None,
        }
    }

    #[test]
    fn a_later_copy_replaces_an_earlier_one_unless_it_is_terminating() {
        let mut set = EndpointSet::default();
        let terminating = |node| Endpoint {
            terminating: true,
            ..ep(node, false)
        };
        set.add(ep("node-b", true));
        set.add(ep("node-c", false));
        assert_eq!(set.0.values().next(), Some(&ep("node-c", false)));
        // The running Pod's copy stays whatever comes after it terminating.
        set.add(terminating("node-a"));
        assert_eq!(set.0.len(), 1);
        assert_eq!(set.0.values().next(), Some(&ep("node-c", false)));
        // A terminating copy first is replaced by a running one.
        let mut set = EndpointSet::default();
        set.add(terminating("node-a"));
        set.add(ep("node-b", true));
        assert_eq!(set.0.values().next(), Some(&ep("node-b", true)));
    }

    #[test]
    fn target_port_defaults_to_port() {
        assert_eq!(Target::from_spec(None, 80), Ok(Target::Number(80)));
        assert_eq!(
            Target::from_spec(Some(&IntOrString::Int(0)), 80),
            Ok(Target::Number(80))
        );
        assert_eq!(
            Target::from_spec(Some(&IntOrString::String(String::new())), 80),
            Ok(Target::Number(80))
        );
        let named = IntOrString::String("http".into());
        assert_eq!(Target::from_spec(Some(&named), 80), Ok(Target::Name("http")));
        assert_eq!(Target::from_spec(Some(&IntOrString::Int(65536)), 80), Err(65536));
    }

    #[test]
    fn a_cluster_model_takes_endpoints_from_slices_only() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: default, labels: {app: web}}\nspec: {containers: [{name: c}]}\nstatus: {phase: Running, podIP: 10.0.0.5, conditions: [{type: Ready, status: 'True'}]}\n";
        let (objects, problems) = crate::parse_documents(yaml, "t.yaml");
        assert!(problems.is_empty(), "{problems:?}");
        let mut model = Model::from_objects(objects);
        let source = |m: &Model| {
            let svc = m.services().next().map(|(_, s, _)| s.clone()).expect("service");
            EndpointSource::for_service(m, "default", "web", &svc).kind()
        };
        assert_eq!(
            source(&model),
            EndpointSourceKind::Pods,
            "standalone: the Pods stand in"
        );
        model.set_slices_only(true);
        assert_eq!(
            source(&model),
            EndpointSourceKind::None,
            "a cluster: only slices count"
        );
    }
}
