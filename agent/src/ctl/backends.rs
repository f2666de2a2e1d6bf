//! `weirctl backends`: every backend with the number of slots that point at it.

use std::collections::BTreeMap;

use serde::Serialize;
use weir_model::DesiredServices;

use super::{CtlError, Row, proto, services::state_name, sock};
use crate::datapath::PinLayout;

#[derive(Debug, Serialize)]
pub struct BackendRow {
    pub id: u32,
    pub address: String,
    pub protocol: String,
    pub state: &'static str,
    /// How many service slots point at this backend.
    pub slots: usize,
    /// `namespace/name`, from the name table (absent when it has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

impl Row for BackendRow {
    const HEADERS: &'static [&'static str] = &["ID", "ADDRESS", "PROTOCOL", "STATE", "SLOTS", "POD"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.address.clone(),
            self.protocol.clone(),
            self.state.to_owned(),
            self.slots.to_string(),
            self.pod.clone().unwrap_or_else(|| "-".to_owned()),
        ]
    }
}

pub fn backends(pins: &PinLayout) -> Result<Vec<BackendRow>, CtlError> {
    let mut rows = backend_rows(&super::read_services(pins)?);
    let names = super::name_table(pins);
    for row in &mut rows {
        row.pod = names.pod(&row.address);
    }
    Ok(rows)
}

/// One row per backend of `maps`, by id.
pub fn backend_rows(maps: &DesiredServices) -> Vec<BackendRow> {
    let mut slots: BTreeMap<u32, usize> = BTreeMap::new();
    for (k, v) in &maps.services {
        if k.slot != 0 {
            *slots.entry(v.backend_id).or_default() += 1;
        }
    }
    maps.backends
        .iter()
        .map(|(id, b)| BackendRow {
            id: *id,
            address: sock(b.addr, b.family, b.port),
            protocol: proto(b.proto),
            state: state_name(b.state),
            slots: slots.get(id).copied().unwrap_or(0),
            pod: None,
        })
        .collect()
}
