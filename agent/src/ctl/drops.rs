//! `weirctl drops` and `weirctl monitor`'s events: the packets NetworkPolicy
//! dropped, as the datapath reports them in its ring buffer. The agent is the
//! ring buffer's one reader (a ring buffer has one): it keeps the latest
//! events and streams new ones to every monitor (`crate::monitor`), so that
//! no reader takes an event from another.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weir_common::{DropEvent, EndpointKey, PolicyEndpoint, Reason};

use super::{NameTable, Row, policy::endpoints, proto, sock, table::or_null};

/// One dropped packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropRow {
    /// What the event is: `drop`.
    #[serde(rename = "type", default = "drop_type")]
    pub kind: String,
    /// Why, as an operator reads it.
    pub reason: String,
    /// The same, as a metric label (`policy_ingress`, `policy_egress`, ...).
    #[serde(default)]
    pub code: String,
    /// The isolated pod's address; `None` once the pod is gone.
    pub endpoint: Option<String>,
    pub endpoint_id: u32,
    /// `namespace/name`, from the name table (absent when it has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub source: String,
    pub destination: String,
    pub protocol: String,
    pub peer_identity: u32,
}

fn drop_type() -> String {
    "drop".to_owned()
}

impl Row for DropRow {
    const HEADERS: &'static [&'static str] = &[
        "REASON",
        "ENDPOINT",
        "SOURCE",
        "DESTINATION",
        "PROTOCOL",
        "PEER_IDENTITY",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.reason.clone(),
            super::labelled(&or_null(self.endpoint.as_ref()), self.pod.as_ref()),
            self.source.clone(),
            self.destination.clone(),
            self.protocol.clone(),
            self.peer_identity.to_string(),
        ]
    }
}

/// What the agent needs to name the endpoints of events: the isolated
/// endpoints (their numbers) and the name table.
#[derive(Debug, Default)]
pub struct Namer {
    endpoints: BTreeMap<u32, (String, u32)>,
    names: NameTable,
}

impl Namer {
    pub fn new(policy_endpoints: &BTreeMap<EndpointKey, PolicyEndpoint>, names: NameTable) -> Self {
        Self {
            endpoints: endpoints(policy_endpoints),
            names,
        }
    }

    /// An event of the ring buffer, in words.
    pub fn drop_row(&self, e: &DropEvent) -> DropRow {
        let endpoint = self.endpoints.get(&e.endpoint).map(|x| x.0.clone());
        let reason = Reason::try_from(e.reason);
        DropRow {
            kind: drop_type(),
            reason: Reason::describe_code(e.reason).to_owned(),
            code: reason.map_or("unknown", Reason::label).to_owned(),
            pod: endpoint.as_deref().and_then(|e| self.names.pod(e)),
            endpoint,
            endpoint_id: e.endpoint,
            source: sock(e.saddr, e.family, e.sport),
            destination: sock(e.daddr, e.family, e.dport),
            protocol: proto(e.proto),
            peer_identity: e.identity,
        }
    }
}

/// A ring buffer record as the event it holds, if it is whole.
pub fn decode(record: &[u8]) -> Option<DropEvent> {
    if record.len() < size_of::<DropEvent>() {
        return None;
    }
    // SAFETY: the datapath writes whole `DropEvent`s (plain integers); the read
    // is unaligned-safe.
    Some(unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) })
}
