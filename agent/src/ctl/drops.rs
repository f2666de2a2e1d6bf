//! `weirctl drops`: the packets NetworkPolicy dropped since the last read.

use aya::maps::{Map, MapData, RingBuf};
use serde::Serialize;
use weir_common::{DropEvent, Reason, maps as names};

use super::{CtlError, Row, policy::endpoints, proto, sock, table::or_null};
use crate::datapath::{PinLayout, maps};

/// One dropped packet.
#[derive(Debug, Serialize)]
pub struct DropRow {
    pub reason: &'static str,
    /// The isolated pod's address; `None` once the pod is gone.
    pub endpoint: Option<String>,
    pub endpoint_id: u32,
    /// `namespace/name`, from the name table (absent when it has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub source: String,
    pub destination: String,
    pub protocol: String,
    pub peer_identity: u32,
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
            self.reason.to_owned(),
            super::labelled(&or_null(self.endpoint.as_ref()), self.pod.as_ref()),
            self.source.clone(),
            self.destination.clone(),
            self.protocol.clone(),
            self.peer_identity.to_string(),
        ]
    }
}

/// The drops reported since the last read (reading consumes them).
pub fn drops(pins: &PinLayout) -> Result<Vec<DropRow>, CtlError> {
    let err = |source| CtlError::Map {
        map: names::EVENTS,
        source,
    };
    let map: maps::PolicyEndpoints = super::open(pins, &maps::POLICY_ENDPOINTS)?;
    let names = super::name_table(pins);
    let endpoints = endpoints(
        &map.iter()
            .collect::<Result<_, _>>()
            .map_err(|source| CtlError::Map {
                map: names::POLICY_ENDPOINTS,
                source,
            })?,
    );
    maps::check_pin(pins, &maps::EVENTS).map_err(|e| CtlError::Datapath(Box::new(e)))?;
    let data = MapData::from_pin(pins.map(names::EVENTS)).map_err(err)?;
    let mut ring = RingBuf::try_from(Map::RingBuf(data)).map_err(err)?;
    let mut rows = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() < size_of::<DropEvent>() {
            continue;
        }
        // SAFETY: the datapath writes whole `DropEvent`s; the read is unaligned-safe.
        let e: DropEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        let endpoint = endpoints.get(&e.endpoint).map(|x| x.0.clone());
        rows.push(DropRow {
            reason: Reason::describe_code(e.reason),
            pod: endpoint.as_deref().and_then(|e| names.pod(e)),
            endpoint,
            endpoint_id: e.endpoint,
            source: sock(e.saddr, e.family, e.sport),
            destination: sock(e.daddr, e.family, e.dport),
            protocol: proto(e.proto),
            peer_identity: e.identity,
        });
    }
    Ok(rows)
}
