//! `weirctl backends`: every backend with the number of slots that point at it.

use std::collections::BTreeMap;

use serde::Serialize;
use weir_common::maps as names;

use super::{CtlError, Row, open, proto, services::state_name, sock};
use crate::datapath::{
    PinLayout,
    maps::{self, Backends, Services},
};

#[derive(Debug, Serialize)]
pub struct BackendRow {
    pub id: u32,
    pub address: String,
    pub protocol: String,
    pub state: &'static str,
    /// How many service slots point at this backend.
    pub slots: usize,
}

impl Row for BackendRow {
    const HEADERS: &'static [&'static str] = &["ID", "ADDRESS", "PROTOCOL", "STATE", "SLOTS"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.address.clone(),
            self.protocol.clone(),
            self.state.to_owned(),
            self.slots.to_string(),
        ]
    }
}

pub fn backends(pins: &PinLayout) -> Result<Vec<BackendRow>, CtlError> {
    let map: Backends = open(pins, &maps::BACKENDS)?;
    let services: Services = open(pins, &maps::SERVICES)?;
    let mut slots: BTreeMap<u32, usize> = BTreeMap::new();
    for entry in services.iter() {
        let (k, v) = entry.map_err(|source| CtlError::Map {
            map: names::SERVICES,
            source,
        })?;
        if k.slot != 0 {
            *slots.entry(v.backend_id).or_default() += 1;
        }
    }
    let mut all = BTreeMap::new();
    for entry in map.iter() {
        let (id, b) = entry.map_err(|source| CtlError::Map {
            map: names::BACKENDS,
            source,
        })?;
        all.insert(id, b);
    }
    Ok(all
        .iter()
        .map(|(id, b)| BackendRow {
            id: *id,
            address: sock(b.addr, b.family, b.port),
            protocol: proto(b.proto),
            state: state_name(b.state),
            slots: slots.get(id).copied().unwrap_or(0),
        })
        .collect())
}
