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
    /// Every part is bounded ([`bounded`]): names and messages come from the
    /// manifests, and a log line must not grow with them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = self.reason.to_string();
        let (origin, reason) = (bounded(&self.origin, 256), bounded(&reason, 1024));
        match &self.object {
            Some(object) => write!(f, "{origin}: {}: {reason}", bounded(object, 512)),
            None => write!(f, "{origin}: {reason}"),
        }
    }
}

/// `s` cut to its first `max` bytes (on a character boundary), saying how long
/// it was: for text that comes from outside (manifests, requests) on its way
/// into a log line or an error.
pub fn bounded(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... ({} bytes)", &s[..cut], s.len()).into()
}

/// Why an object was skipped. Variants carry the offending value so that the message
/// is actionable without reading the object again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProblemReason {
    #[error("not valid YAML: {0}")]
    Syntax(String),
    #[error("file not usable: {0}")]
    Unusable(String),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_bounded_whatever_the_input() {
        let p = Problem {
            origin: "f.yaml:1".into(),
            object: Some(format!("Service default/{}", "n".repeat(100_000))),
            reason: ProblemReason::BadIp {
                field: "spec.clusterIP",
                value: "é".repeat(100_000),
            },
        };
        let shown = p.to_string();
        assert!(shown.len() < 2048, "{}", shown.len());
        assert!(shown.contains("(100016 bytes)"), "{shown}");
        assert_eq!(bounded("short", 10), "short");
        assert_eq!(bounded("ééé", 3), "é... (6 bytes)");
    }
}
