//! `weirctl drops` and `weirctl monitor`'s events: what the datapath reports
//! in its ring buffer (every drop; with tracing on, every new flow's
//! translation and the policy verdicts that admitted it), in words and
//! Kubernetes names. The agent is the ring buffer's one reader (a ring buffer
//! has one): it keeps the latest events and streams new ones to every
//! monitor (`crate::monitor`), so that no reader takes an event from another.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weir_common::{
    CT_F_EXTERNAL, CT_F_HAIRPIN, CT_F_MASQ, CT_F_SNAT, Dir, EVENT_DROP, EVENT_POLICY, EVENT_TRANSLATE,
    EndpointKey, Event, PolicyEndpoint, Reason,
};

use super::{NameTable, Row, conntrack::flag_names, ip_text, policy::endpoints, proto, sock, table::or_null};

/// One event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    /// What the event is: `drop`, `translate` (a new flow's load-balancing
    /// or masquerade decision) or `policy` (a new flow admitted by an
    /// isolated pod's policies).
    #[serde(rename = "type")]
    pub kind: String,
    /// Where the datapath saw it (`from-pod`, `to-pod`, `from-netdev`,
    /// `xdp`, `socket`, ...), and on which device (0: a socket hook, or
    /// policy's, which names its pod instead).
    pub direction: String,
    pub ifindex: u32,
    /// The device's name (the agent's view: the node's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Why, as an operator reads it (`forwarded` for what passed).
    pub reason: String,
    /// The same, as a metric label (`policy_ingress`, `no_backend`, ...).
    pub code: String,
    /// The packet's ends as the hook saw them (a translation's: as the
    /// client sent it, to the frontend); `?` where the headers could not be
    /// read.
    pub source: String,
    pub destination: String,
    pub protocol: String,
    /// `namespace/name` of the pods at either end, where this node has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_pod: Option<String>,
    /// The frontend's Service (`namespace/name:port`), and its reverse-NAT
    /// id (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub rev_nat_id: u32,
    /// `translate`: where the flow now goes, its pod, and the new source it
    /// is given (hairpin, source NAT, masquerade), with the kind of
    /// translation (`hairpin`, `external`, `snat`, `masquerade`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_source: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub translation: Vec<String>,
    /// Policy's events: the isolated pod (its address; its number; its
    /// name) and the peer's identity.
    pub endpoint: Option<String>,
    pub endpoint_id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub peer_identity: u32,
}

impl EventRow {
    /// Every pod the event names.
    pub fn pods(&self) -> impl Iterator<Item = &str> {
        [
            &self.pod,
            &self.source_pod,
            &self.destination_pod,
            &self.backend_pod,
        ]
        .into_iter()
        .filter_map(|p| p.as_deref())
    }

    /// Every address:port the event names.
    pub fn ends(&self) -> impl Iterator<Item = std::net::SocketAddr> + '_ {
        [
            Some(&self.source),
            Some(&self.destination),
            self.backend.as_ref(),
            self.new_source.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter_map(|s| s.parse().ok())
    }

    /// What the event says beyond its tuple, for the table.
    fn detail(&self) -> String {
        let mut parts = Vec::new();
        if let Some(backend) = &self.backend {
            parts.push(format!(
                "-> {}",
                super::labelled(backend, self.backend_pod.as_ref())
            ));
        }
        if let Some(new_source) = &self.new_source {
            parts.push(format!("from {new_source}"));
        }
        if !self.translation.is_empty() {
            parts.push(format!("[{}]", self.translation.join(",")));
        }
        if let Some(service) = &self.service {
            parts.push(format!("service {service}"));
        }
        if self.endpoint_id != 0 {
            parts.push(format!(
                "endpoint {} peer identity {}",
                super::labelled(&or_null(self.endpoint.as_ref()), self.pod.as_ref()),
                self.peer_identity
            ));
        }
        parts.join(" ")
    }
}

impl Row for EventRow {
    const HEADERS: &'static [&'static str] = &[
        "TYPE",
        "WHERE",
        "REASON",
        "SOURCE",
        "DESTINATION",
        "PROTOCOL",
        "DETAIL",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.kind.clone(),
            super::labelled(&self.direction, self.device.as_ref()),
            self.reason.clone(),
            super::labelled(&self.source, self.source_pod.as_ref()),
            super::labelled(&self.destination, self.destination_pod.as_ref()),
            self.protocol.clone(),
            self.detail(),
        ]
    }
}

/// What the agent needs to name events: the isolated endpoints (their
/// numbers) and the name table.
#[derive(Debug, Default)]
pub struct Namer {
    endpoints: BTreeMap<u32, (String, u32)>,
    names: NameTable,
    devices: BTreeMap<u32, String>,
}

/// An event's type by its `EVENT_*` code.
fn kind_name(kind: u8) -> &'static str {
    match kind {
        EVENT_DROP => "drop",
        EVENT_TRANSLATE => "translate",
        EVENT_POLICY => "policy",
        _ => "unknown",
    }
}

impl Namer {
    pub fn new(policy_endpoints: &BTreeMap<EndpointKey, PolicyEndpoint>, names: NameTable) -> Self {
        Self {
            endpoints: endpoints(policy_endpoints),
            names,
            devices: BTreeMap::new(),
        }
    }

    /// Whether everything `e` names by number is known here: the endpoint,
    /// the Service. (Addresses may be of pods of other nodes, never named.)
    pub fn knows(&self, e: &Event) -> bool {
        (e.endpoint == 0 || self.endpoints.contains_key(&e.endpoint))
            && (e.rev_nat_id == 0 || self.names.frontends.contains_key(&e.rev_nat_id))
    }

    /// Names devices too, by these names (the node's interfaces).
    pub fn with_devices(self, devices: BTreeMap<u32, String>) -> Self {
        Self { devices, ..self }
    }

    /// An event of the ring buffer, in words.
    pub fn row(&self, e: &Event) -> EventRow {
        // By its number, or (a pod isolated since the numbers were read) as
        // the end of the flow it is: the receiver on `to-pod`, else the sender.
        let endpoint = self.endpoints.get(&e.endpoint).map(|x| x.0.clone()).or_else(|| {
            let own = if e.dir == Dir::ToPod as u8 {
                e.daddr
            } else {
                e.saddr
            };
            (e.endpoint != 0).then(|| ip_text(own, e.family))
        });
        let reason = Reason::try_from(e.reason);
        let source = sock(e.saddr, e.family, e.sport);
        let destination = sock(e.daddr, e.family, e.dport);
        let translated = e.kind == EVENT_TRANSLATE;
        // A masqueraded flow keeps its destination: it has no backend.
        let backend = (translated && e.ct_flags & CT_F_MASQ == 0 && e.nat_addr != [0; 16])
            .then(|| sock(e.nat_addr, e.family, e.nat_port));
        EventRow {
            kind: kind_name(e.kind).to_owned(),
            direction: Dir::try_from(e.dir).map_or("unknown", Dir::name).to_owned(),
            ifindex: e.ifindex,
            device: self.devices.get(&e.ifindex).cloned(),
            reason: Reason::describe_code(e.reason).to_owned(),
            code: reason.map_or("unknown", Reason::label).to_owned(),
            source_pod: self.names.pod(&source),
            destination_pod: self.names.pod(&destination),
            source,
            destination,
            protocol: proto(e.proto),
            service: self.names.service(e.rev_nat_id),
            rev_nat_id: e.rev_nat_id,
            backend_pod: backend.as_deref().and_then(|b| self.names.pod(b)),
            backend,
            new_source: (translated && e.nat2_addr != [0; 16])
                .then(|| sock(e.nat2_addr, e.family, e.nat2_port)),
            translation: if translated {
                // What kind of translation it was, not the flow's state.
                flag_names(e.ct_flags & (CT_F_HAIRPIN | CT_F_EXTERNAL | CT_F_SNAT | CT_F_MASQ))
                    .map(|(_, n)| n.to_owned())
                    .collect()
            } else {
                Vec::new()
            },
            pod: endpoint.as_deref().and_then(|e| self.names.pod(e)),
            endpoint,
            endpoint_id: e.endpoint,
            peer_identity: e.identity,
        }
    }
}

/// A ring buffer record as the event it holds, if it is whole.
pub fn decode(record: &[u8]) -> Option<Event> {
    if record.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: the datapath writes whole `Event`s (plain integers); the read
    // is unaligned-safe.
    Some(unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) })
}
