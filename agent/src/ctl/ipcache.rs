//! `weirctl ipcache`: the policy identity of each peer address and prefix.

use std::collections::BTreeMap;

use serde::Serialize;
use weir_common::IPCACHE_PREFIX_BITS;
use weir_model::policy::DesiredPolicy;

use super::{CtlError, Row, ip_text};
use crate::datapath::PinLayout;

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
pub(super) fn members(maps: &DesiredPolicy) -> BTreeMap<u32, Vec<String>> {
    let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (entry, id) in &maps.ipcache {
        let prefix = entry.prefix_len.saturating_sub(IPCACHE_PREFIX_BITS);
        let addr = ip_text(entry.key.addr, entry.key.family);
        out.entry(*id).or_default().push(format!("{addr}/{prefix}"));
    }
    out
}

pub fn ipcache(pins: &PinLayout) -> Result<Vec<IpcacheRow>, CtlError> {
    Ok(ipcache_rows(&super::read_policy(pins)?))
}

/// By identity, then by prefix.
pub fn ipcache_rows(maps: &DesiredPolicy) -> Vec<IpcacheRow> {
    members(maps)
        .into_iter()
        .flat_map(|(identity, prefixes)| {
            prefixes
                .into_iter()
                .map(move |prefix| IpcacheRow { prefix, identity })
        })
        .collect()
}
