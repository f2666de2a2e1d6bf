//! `weirctl endpoints`: the local pods the datapath knows.

use serde::Serialize;
use weir_common::maps as names;

use super::{CtlError, Row, ip_text, open};
use crate::datapath::{
    PinLayout,
    maps::{self, Endpoints},
};

#[derive(Debug, Serialize)]
pub struct EndpointRow {
    pub ip: String,
    /// The pod's host-side veth.
    pub ifindex: u32,
}

impl Row for EndpointRow {
    const HEADERS: &'static [&'static str] = &["IP", "IFINDEX"];

    fn cells(&self) -> Vec<String> {
        vec![self.ip.clone(), self.ifindex.to_string()]
    }
}

/// By address text.
pub fn endpoints(pins: &PinLayout) -> Result<Vec<EndpointRow>, CtlError> {
    let map: Endpoints = open(pins, &maps::ENDPOINTS)?;
    let mut rows = Vec::new();
    for entry in map.iter() {
        let (key, info) = entry.map_err(|source| CtlError::Map {
            map: names::ENDPOINTS,
            source,
        })?;
        rows.push(EndpointRow {
            ip: ip_text(key.addr, key.family),
            ifindex: info.ifindex,
        });
    }
    rows.sort_by(|a, b| a.ip.cmp(&b.ip));
    Ok(rows)
}
