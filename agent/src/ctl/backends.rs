//! `weirctl backends`: every backend with the number of slots that point at it.

use std::collections::BTreeMap;

use serde_json::json;
use weir_common::maps as names;

use super::{CtlError, View, open, proto, services::state_name, sock};
use crate::datapath::{
    PinLayout,
    maps::{self, Backends, Services},
};

pub fn backends(pins: &PinLayout) -> Result<View, CtlError> {
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
    let json = all
        .iter()
        .map(|(id, b)| {
            json!({
                "id": id,
                "address": sock(b.addr, b.family, b.port),
                "protocol": proto(b.proto),
                "state": state_name(b.state),
                "slots": slots.get(id).copied().unwrap_or(0),
            })
        })
        .collect();
    Ok(View::flat(
        json,
        vec!["id", "address", "protocol", "state", "slots"],
    ))
}
