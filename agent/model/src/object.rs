//! The Kubernetes objects Weir understands, as an API server holds them.

use std::fmt;

use k8s_openapi::{
    api::{
        core::v1::{Endpoints, Namespace, Node, NodeSpec, NodeStatus, Pod, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::{pod::PodFacts, service::ServiceFacts, slice::SliceFacts};

/// The name and namespace of an object kept in compact form (Services,
/// EndpointSlices, Pods): all of its metadata the model reads but labels, which
/// a kind keeps as it needs them. The API's `ObjectMeta` is 360 bytes inline
/// whatever it holds. Absent is empty, as the key reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub name: Box<str>,
    pub namespace: Box<str>,
}

impl Meta {
    /// Takes the name and namespace out of the API's metadata (moved, not copied).
    pub(crate) fn take(meta: &mut ObjectMeta) -> Self {
        Self {
            name: meta.name.take().unwrap_or_default().into_boxed_str(),
            namespace: meta.namespace.take().unwrap_or_default().into_boxed_str(),
        }
    }
}

/// One object of a kind the model keeps. Boxed: the k8s-openapi types are large and
/// of very different sizes. The two kinds a cluster holds by the ten thousand,
/// Pods and EndpointSlices, are kept as what the compilers read of them
/// ([`PodFacts`], [`SliceFacts`]), a fraction of the API types' size.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Box<ServiceFacts>),
    EndpointSlice(Box<SliceFacts>),
    Endpoints(Box<Endpoints>),
    Pod(Box<PodFacts>),
    Namespace(Box<Namespace>),
    Node(Box<Node>),
    NetworkPolicy(Box<NetworkPolicy>),
}

/// The kinds of [`Object`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Endpoints,
    Pod,
    Namespace,
    Node,
    NetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Endpoints,
        Kind::Pod,
        Kind::Namespace,
        Kind::Node,
        Kind::NetworkPolicy,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Endpoints => "Endpoints",
            Kind::Pod => "Pod",
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }

    /// Namespaces and Nodes are cluster-scoped; everything else lives in a namespace.
    pub const fn is_namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of an object in the model: (kind, namespace, name). Cluster-scoped
/// objects have an empty namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// The namespace `kubectl apply` puts an object in when its manifest names none.
pub const DEFAULT_NAMESPACE: &str = "default";

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Endpoints(_) => Kind::Endpoints,
            Object::Pod(_) => Kind::Pod,
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
        }
    }

    /// The API's metadata, for the kinds kept as the API's types.
    fn api_metadata_mut(&mut self) -> Option<&mut ObjectMeta> {
        match self {
            Object::Endpoints(o) => Some(&mut o.metadata),
            Object::Namespace(o) => Some(&mut o.metadata),
            Object::Node(o) => Some(&mut o.metadata),
            Object::NetworkPolicy(o) => Some(&mut o.metadata),
            Object::Service(_) | Object::EndpointSlice(_) | Object::Pod(_) => None,
        }
    }

    /// `(name, namespace)` as written, empty when absent.
    pub(crate) fn names(&self) -> (&str, &str) {
        fn api(m: &ObjectMeta) -> (&str, &str) {
            (
                m.name.as_deref().unwrap_or_default(),
                m.namespace.as_deref().unwrap_or_default(),
            )
        }
        fn compact(m: &Meta) -> (&str, &str) {
            (&m.name, &m.namespace)
        }
        match self {
            Object::Service(o) => compact(&o.meta),
            Object::EndpointSlice(o) => compact(&o.meta),
            Object::Pod(o) => compact(&o.meta),
            Object::Endpoints(o) => api(&o.metadata),
            Object::Namespace(o) => api(&o.metadata),
            Object::Node(o) => api(&o.metadata),
            Object::NetworkPolicy(o) => api(&o.metadata),
        }
    }

    /// The key under which the model stores this object. A namespaced object without
    /// a namespace is in `default`, as `kubectl apply` would have put it.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.kind(), self.key_namespace(), self.names().0)
    }

    /// The namespace of its key: none for a cluster-scoped kind, the
    /// default one for a namespaced object that names none.
    fn key_namespace(&self) -> &str {
        let namespace = self.names().1;
        if !self.kind().is_namespaced() {
            ""
        } else if namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            namespace
        }
    }

    /// Fills in the namespace the key implies, so that code reading the
    /// object's namespace sees what the model sees.
    pub(crate) fn normalize(&mut self) {
        let namespace = self.key_namespace();
        if !self.kind().is_namespaced() || self.names().1 == namespace {
            return;
        }
        let namespace = namespace.to_owned();
        match self {
            Object::Service(o) => o.meta.namespace = namespace.into(),
            Object::EndpointSlice(o) => o.meta.namespace = namespace.into(),
            Object::Pod(o) => o.meta.namespace = namespace.into(),
            other => {
                if let Some(meta) = other.api_metadata_mut() {
                    meta.namespace = Some(namespace);
                }
            }
        }
    }
}

/// Annotations the model reads (by prefix): Weir's own, and Kubernetes'
/// service and endpoint annotations.
const KEPT_ANNOTATIONS: [&str; 3] = ["weir.dev/", "service.kubernetes.io/", "endpoints.kubernetes.io/"];

impl Object {
    /// The object with only what the model reads, for a source to keep: no
    /// `managedFields`, no annotations but Weir's and Kubernetes' service and
    /// endpoint ones, no resource versions or owners; a Node to its pod CIDRs
    /// and addresses (Pods and EndpointSlices hold no more from the start).
    /// Compiling trimmed objects gives what compiling the whole ones does.
    pub fn trimmed(self) -> Object {
        let meta = |m: ObjectMeta| ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            labels: m.labels,
            annotations: m
                .annotations
                .map(|a| {
                    a.into_iter()
                        .filter(|(k, _)| KEPT_ANNOTATIONS.iter().any(|p| k.starts_with(p)))
                        .collect::<std::collections::BTreeMap<_, _>>()
                })
                .filter(|a| !a.is_empty()),
            deletion_timestamp: m.deletion_timestamp,
            ..ObjectMeta::default()
        };
        match self {
            Object::Namespace(o) => Object::Namespace(Box::new(Namespace {
                metadata: meta(o.metadata),
                ..Namespace::default()
            })),
            Object::Node(o) => Object::Node(Box::new(Node {
                metadata: meta(o.metadata),
                spec: o.spec.map(|s| NodeSpec {
                    pod_cidr: s.pod_cidr,
                    pod_cidrs: s.pod_cidrs,
                    ..NodeSpec::default()
                }),
                status: o.status.map(|s| NodeStatus {
                    addresses: s.addresses,
                    ..NodeStatus::default()
                }),
            })),
            // The other kinds hold only what the model reads but for their
            // metadata (the compact kinds from the start).
            mut object => {
                if let Some(metadata) = object.api_metadata_mut() {
                    *metadata = meta(std::mem::take(metadata));
                }
                object
            }
        }
    }
}

macro_rules! from_type {
    ($($variant:ident),*) => {$(
        impl From<$variant> for Object {
            fn from(o: $variant) -> Self {
                Object::$variant(Box::new(o))
            }
        }
    )*};
}
from_type!(Endpoints, Namespace, Node, NetworkPolicy);

impl From<Service> for Object {
    fn from(o: Service) -> Self {
        Object::Service(Box::new(o.into()))
    }
}

impl From<Pod> for Object {
    fn from(o: Pod) -> Self {
        Object::Pod(Box::new(o.into()))
    }
}

impl From<EndpointSlice> for Object {
    fn from(o: EndpointSlice) -> Self {
        Object::EndpointSlice(Box::new(o.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        IdAllocator, Model, NodeContext, compile_services, parse_documents, policy::compile_policies,
    };

    /// Objects as an API server returns them, with all that a source drops.
    const CLUSTER: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  uid: 3f1c
  resourceVersion: "811"
  annotations:
    weir.dev/lb-algorithm: maglev
    kubectl.kubernetes.io/last-applied-configuration: '{"big": "json"}'
  managedFields: [{manager: kubectl, operation: Update, fieldsType: FieldsV1, fieldsV1: {f:spec: {}}}]
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  selector: {app: web}
  externalTrafficPolicy: Local
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
  ownerReferences: [{apiVersion: v1, kind: Service, name: web, uid: 3f1c}]
  annotations: {endpoints.kubernetes.io/last-change-trigger-time: "2026-12-04T00:00:00Z"}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.244.1.2, 10.244.1.12], conditions: {ready: true}, nodeName: node-a, zone: z1, hostname: h, targetRef: {kind: Pod, name: web-1, namespace: shop}}
- {addresses: [10.244.2.2], conditions: {ready: false, serving: true, terminating: true}, nodeName: node-b}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}, uid: aa, resourceVersion: "9"}
spec:
  nodeName: node-a
  volumes: [{name: v, emptyDir: {}}]
  initContainers:
  - {name: init, image: busybox, ports: [{name: init-port, containerPort: 9}]}
  - {name: proxy, image: envoy, restartPolicy: Always, ports: [{name: admin, containerPort: 9901}]}
  containers:
  - name: c
    image: web:1
    env: [{name: X, value: "1"}]
    ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]
status:
  phase: Running
  podIP: 10.244.1.2
  podIPs: [{ip: 10.244.1.2}]
  hostIP: 192.168.0.1
  conditions: [{type: Ready, status: "True", lastTransitionTime: "2026-12-04T00:00:00Z"}]
  containerStatuses: [{name: c, image: web:1, imageID: x, ready: true, restartCount: 0}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: front, labels: {role: client}}
spec: {nodeName: node-b, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.244.2.9, podIPs: [{ip: 10.244.2.9}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: front, labels: {team: a, kubernetes.io/metadata.name: front}}
spec: {finalizers: [kubernetes]}
status: {phase: Active}
---
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {kubernetes.io/hostname: node-a}}
spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24], providerID: "x"}
status:
  addresses: [{type: InternalIP, address: 192.168.0.1}, {type: Hostname, address: node-a}]
  images: [{names: [web:1], sizeBytes: 1000}]
  nodeInfo: {machineID: m, systemUUID: s, bootID: b, kernelVersion: k, osImage: o, containerRuntimeVersion: c, kubeletVersion: v, kubeProxyVersion: v, operatingSystem: linux, architecture: amd64}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop, annotations: {note: x}}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {role: client}}}]
    ports: [{port: http}, {port: dns, protocol: UDP}, {port: admin}]
"#;

    #[test]
    fn trimmed_objects_compile_as_the_whole_ones_do() {
        let (objects, problems) = parse_documents(CLUSTER, "cluster.yaml");
        assert!(problems.is_empty(), "{problems:?}");
        let whole = Model::from_objects(objects.clone());
        let trimmed = Model::from_objects(objects.iter().cloned().map(Object::trimmed));
        let mut node = NodeContext::new("node-a");
        node.node_ips = vec!["192.168.0.1".parse().expect("ip")];
        let services = |m: &Model| compile_services(m, &node, &mut IdAllocator::new());
        assert_eq!(services(&whole), services(&trimmed));
        assert_eq!(compile_policies(&whole), compile_policies(&trimmed));
        // And what goes is gone.
        for o in trimmed.of_kind(Kind::Pod).map(|(_, e)| &e.object) {
            let Object::Pod(p) = o else { unreachable!() };
            assert_eq!(
                &*p.meta.namespace,
                if &*p.meta.name == "client" {
                    "front"
                } else {
                    "shop"
                }
            );
        }
        let Some(Object::NetworkPolicy(p)) = trimmed
            .get(&ObjectKey::new(Kind::NetworkPolicy, "shop", "web"))
            .map(|e| &e.object)
        else {
            panic!("policy");
        };
        assert!(p.metadata.annotations.is_none(), "not one the model reads");
    }
}
