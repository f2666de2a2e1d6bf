//! What went wrong with one object, reported instead of failing the whole compile.
//!
//! One bad object must never take the dataplane down for every other Service, so the
//! parser and the compilers skip what they cannot use and say why, object by object.

use std::fmt;

/// One object (or document) that was skipped, in whole or in part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where the object came from: `file.yaml:12` for a parsed document, the source
    /// name given to the model otherwise.
    pub origin: String,
    /// `Kind ns/name` when known.
    pub object: Option<String>,
    pub reason: ProblemReason,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.object {
            Some(object) => write!(f, "{}: {}: {}", self.origin, object, self.reason),
            None => write!(f, "{}: {}", self.origin, self.reason),
        }
    }
}

/// Why an object was skipped. Variants carry the offending value so that the message
/// is actionable without reading the object again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProblemReason {
    #[error("not valid YAML: {0}")]
    Syntax(String),
    #[error("document has no apiVersion/kind")]
    NoKind,
    #[error("does not match the {kind} schema: {message}")]
    Schema { kind: String, message: String },
    #[error("List item {index}: {reason}")]
    ListItem {
        index: usize,
        reason: Box<ProblemReason>,
    },

    #[error("no cluster IP allocated (spec.clusterIP/clusterIPs empty)")]
    NoClusterIp,
    #[error("{field} {value:?} is not an IP address")]
    BadIp { field: &'static str, value: String },
    #[error("unsupported service type {0:?}")]
    BadServiceType(String),
    #[error("port {port_name:?}: {field} {value} is out of range 1..=65535")]
    PortOutOfRange {
        port_name: String,
        field: &'static str,
        value: i64,
    },
    #[error("port {port_name:?}: unsupported protocol {protocol:?} (TCP, UDP or SCTP)")]
    BadProtocol { port_name: String, protocol: String },
    #[error("unsupported sessionAffinity {0:?} (ClientIP or None)")]
    BadSessionAffinity(String),
    #[error("sessionAffinityConfig.clientIP.timeoutSeconds {0} is out of range 1..=86400")]
    BadAffinityTimeout(i64),
    #[error("unsupported {field} {value:?} (Cluster or Local)")]
    BadTrafficPolicy { field: &'static str, value: String },
    #[error("unsupported annotation weir.dev/lb-algorithm {0:?} (maglev or random); using the node default")]
    BadLbAlgorithm(String),
    #[error("maglev table size {0} is not a prime; Maglev disabled, backends chosen at random")]
    BadMaglevSize(usize),
    #[error("frontend {frontend} is already taken by {owner}")]
    FrontendConflict { frontend: String, owner: String },
    #[error("{0}")]
    Ids(#[from] crate::ids::IdError),
    #[error("NetworkPolicy: {0}; that part admits nothing")]
    BadPolicy(String),
}
