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
    /// The MACs of the pod's end of the veth and of the host's, with which
    /// packets are handed straight into the pod; `None`: not registered (its
    /// packets go by the host veth).
    pub mac: Option<String>,
    pub host_mac: Option<String>,
    /// `namespace/name`, from the name table (absent when it has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

impl Row for EndpointRow {
    const HEADERS: &'static [&'static str] = &["IP", "POD", "IFINDEX", "MAC", "HOST MAC"];

    fn cells(&self) -> Vec<String> {
        let text = |m: &Option<String>| m.clone().unwrap_or_else(|| "-".to_owned());
        vec![
            self.ip.clone(),
            text(&self.pod),
            self.ifindex.to_string(),
            text(&self.mac),
            text(&self.host_mac),
        ]
    }
}

/// `aa:bb:cc:dd:ee:ff`; `None` for all zeros (unknown).
fn mac_text(mac: [u8; 6]) -> Option<String> {
    (mac != [0; 6]).then(|| {
        mac.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    })
}

/// By address text.
pub fn endpoints(pins: &PinLayout) -> Result<Vec<EndpointRow>, CtlError> {
    let map: Endpoints = open(pins, &maps::ENDPOINTS)?;
    let entries: Vec<_> = map
        .iter()
        .collect::<Result<_, _>>()
        .map_err(|source| CtlError::Map {
            map: names::ENDPOINTS,
            source,
        })?;
    // Names after the map: weir-cni's registration names a pod before its entries.
    let names = super::name_table(pins);
    let mut rows = Vec::new();
    for (key, info) in entries {
        let ip = ip_text(key.addr, key.family);
        rows.push(EndpointRow {
            pod: names.pod(&ip),
            ip,
            ifindex: info.ifindex,
            mac: mac_text(info.mac),
            host_mac: mac_text(info.host_mac),
        });
    }
    rows.sort_by(|a, b| a.ip.cmp(&b.ip));
    Ok(rows)
}
