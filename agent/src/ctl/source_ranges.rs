//! `weirctl source-ranges`: the sources each LoadBalancer IP with
//! `loadBalancerSourceRanges` admits (`weir_srcrng_v1`); a new flow to it
//! from anywhere else is dropped.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use serde::Serialize;
use weir_common::{RevNat, SOURCE_RANGE_PREFIX_BITS, maps as names};
use weir_model::services::socket_addr;

use super::{CtlError, NameTable, Row, ip_text, open};
use crate::datapath::{
    PinLayout,
    maps::{self, RevNats, SourceRanges},
};

#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceRangeRow {
    pub rev_nat_id: u32,
    /// The frontend (`address:port`), from the reverse-NAT map.
    pub frontend: String,
    /// Its Service, `namespace/name[:port]`, where the name table has it.
    pub service: Option<String>,
    /// A source it admits, `address/length`.
    pub range: String,
}

impl Row for SourceRangeRow {
    const HEADERS: &'static [&'static str] = &["REV_NAT_ID", "FRONTEND", "SERVICE", "RANGE"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.rev_nat_id.to_string(),
            self.frontend.clone(),
            self.service.clone().unwrap_or_else(|| "-".to_owned()),
            self.range.clone(),
        ]
    }
}

/// The frontend of reverse-NAT entry `revnat`, as text (`?`: none).
pub fn frontend_text(revnat: Option<&RevNat>) -> String {
    revnat
        .and_then(|r| socket_addr(r.addr, r.family, r.port))
        .map_or_else(|| "?".to_owned(), |a| a.to_string())
}

/// The rows of the compiler's desired ranges (`weir-agent compile`).
pub fn source_range_rows(
    desired: &BTreeMap<u32, Box<[IpNetwork]>>,
    revnat: &BTreeMap<u32, RevNat>,
    names: &BTreeMap<u32, String>,
) -> Vec<SourceRangeRow> {
    desired
        .iter()
        .flat_map(|(id, ranges)| {
            ranges.iter().map(move |range| SourceRangeRow {
                rev_nat_id: *id,
                frontend: frontend_text(revnat.get(id)),
                service: names.get(id).cloned(),
                range: range.to_string(),
            })
        })
        .collect()
}

/// Sorted by frontend id, then range (as text).
pub fn source_ranges(pins: &PinLayout) -> Result<Vec<SourceRangeRow>, CtlError> {
    let map: SourceRanges = open(pins, &maps::SOURCE_RANGES)?;
    let revnat: RevNats = open(pins, &maps::REVNAT)?;
    let table: NameTable = super::name_table(pins);
    let mut rows = Vec::new();
    for key in map.keys() {
        let key = key.map_err(|source| CtlError::Map {
            map: names::SOURCE_RANGES,
            source,
        })?;
        let data = key.data();
        let frontend = revnat.get(&data.rev_nat_id, 0).ok();
        let bits = key.prefix_len().saturating_sub(SOURCE_RANGE_PREFIX_BITS);
        rows.push(SourceRangeRow {
            rev_nat_id: data.rev_nat_id,
            frontend: frontend_text(frontend.as_ref()),
            service: table.service(data.rev_nat_id),
            range: format!("{}/{bits}", ip_text(data.addr, data.family)),
        });
    }
    rows.sort();
    Ok(rows)
}
