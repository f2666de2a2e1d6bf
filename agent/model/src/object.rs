//! The Kubernetes objects Weir understands, as an API server holds them.

use std::fmt;

use k8s_openapi::{
    api::{
        core::v1::{Endpoints, Namespace, Node, Pod, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

/// One object of a kind the model keeps. Boxed: the k8s-openapi types are large and
/// of very different sizes.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Endpoints(Box<Endpoints>),
    Pod(Box<Pod>),
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

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Endpoints(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
        }
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::Endpoints(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Namespace(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::NetworkPolicy(o) => &mut o.metadata,
        }
    }

    /// The key under which the model stores this object. A namespaced object without
    /// a namespace is in `default`, as `kubectl apply` would have put it.
    pub fn key(&self) -> ObjectKey {
        let meta = self.metadata();
        let kind = self.kind();
        let namespace = if kind.is_namespaced() {
            meta.namespace
                .as_deref()
                .filter(|ns| !ns.is_empty())
                .unwrap_or(DEFAULT_NAMESPACE)
        } else {
            ""
        };
        ObjectKey::new(kind, namespace, meta.name.as_deref().unwrap_or_default())
    }

    /// Fills in the namespace the key implies, so that code reading
    /// `metadata.namespace` sees what the model sees.
    pub(crate) fn normalize(&mut self) {
        let key = self.key();
        if key.kind.is_namespaced() {
            self.metadata_mut().namespace = Some(key.namespace);
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
from_type!(
    Service,
    EndpointSlice,
    Endpoints,
    Pod,
    Namespace,
    Node,
    NetworkPolicy
);
