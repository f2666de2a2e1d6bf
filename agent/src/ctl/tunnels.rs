//! `weirctl tunnels`: `--routing vxlan`'s tunnel map, each other node's pod
//! CIDR and the node address its pods' packets are tunnelled to.

use serde::Serialize;
use weir_common::{IPCACHE_PREFIX_BITS, maps as names};

use super::{CtlError, Row, ip_text, open};
use crate::datapath::{
    PinLayout,
    maps::{self, Tunnels},
};

#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct TunnelRow {
    /// The pod CIDR, `address/length`.
    pub pod_cidr: String,
    /// The outer destination: the Node's InternalIP.
    pub node: String,
}

impl Row for TunnelRow {
    const HEADERS: &'static [&'static str] = &["POD CIDR", "NODE"];

    fn cells(&self) -> Vec<String> {
        vec![self.pod_cidr.clone(), self.node.clone()]
    }
}

/// Sorted by pod CIDR (as text).
pub fn tunnels(pins: &PinLayout) -> Result<Vec<TunnelRow>, CtlError> {
    let map: Tunnels = open(pins, &maps::TUNNELS)?;
    let mut rows = Vec::new();
    for entry in map.iter() {
        let (k, v) = entry.map_err(|source| CtlError::Map {
            map: names::TUNNELS,
            source,
        })?;
        let data = k.data();
        let bits = k.prefix_len().saturating_sub(IPCACHE_PREFIX_BITS);
        rows.push(TunnelRow {
            pod_cidr: format!("{}/{bits}", ip_text(data.addr, data.family)),
            node: ip_text(v.addr, v.family),
        });
    }
    rows.sort();
    Ok(rows)
}
