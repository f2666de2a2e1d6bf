//! `weirctl ipcache`: the policy identity of each peer address and prefix.

use std::collections::BTreeMap;

use serde::Serialize;
use weir_common::{IPCACHE_PREFIX_BITS, maps as names};

use super::{CtlError, Row, ip_text, open};
use crate::datapath::{
    PinLayout,
    maps::{self, Ipcache},
};

#[derive(Debug, Serialize)]
pub struct IpcacheRow {
    /// `address/length`.
    pub prefix: String,
    pub identity: u32,
}

impl Row for IpcacheRow {
    const HEADERS: &'static [&'static str] = &["PREFIX", "IDENTITY"];

    fn cells(&self) -> Vec<String> {
        vec![self.prefix.clone(), self.identity.to_string()]
    }
}

/// Identity -> the prefixes the ipcache gives it.
pub(super) fn members(pins: &PinLayout) -> Result<BTreeMap<u32, Vec<String>>, CtlError> {
    let map: Ipcache = open(pins, &maps::IPCACHE)?;
    let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for entry in map.iter() {
        let (k, id) = entry.map_err(|source| CtlError::Map {
            map: names::IPCACHE,
            source,
        })?;
        let data = k.data();
        let prefix = k.prefix_len().saturating_sub(IPCACHE_PREFIX_BITS);
        let addr = ip_text(data.addr, data.family);
        out.entry(id).or_default().push(format!("{addr}/{prefix}"));
    }
    Ok(out)
}

/// By identity, then in the map's order.
pub fn ipcache(pins: &PinLayout) -> Result<Vec<IpcacheRow>, CtlError> {
    Ok(members(pins)?
        .into_iter()
        .flat_map(|(identity, prefixes)| {
            prefixes
                .into_iter()
                .map(move |prefix| IpcacheRow { prefix, identity })
        })
        .collect())
}
