//! `weirctl affinity`: which backend each client is pinned to, per frontend.

use serde::Serialize;
use weir_common::maps as names;

use super::{CtlError, Row, ip, open, sock, table::or_null};
use crate::{
    conntrack::monotonic_ns,
    datapath::{
        PinLayout,
        maps::{self, Affinity, Backends, RevNats},
    },
};

/// One client pinned to a backend of one frontend.
#[derive(Debug, Serialize)]
pub struct AffinityRow {
    pub client: Option<String>,
    pub rev_nat_id: u32,
    /// The Service's `namespace/name`, from the name table (absent when it has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `None` when the reverse-NAT map no longer knows the frontend.
    pub frontend: Option<String>,
    pub backend_id: u32,
    /// `None` when the backend is gone from the map.
    pub backend: Option<String>,
    pub idle_seconds: u64,
}

impl Row for AffinityRow {
    const HEADERS: &'static [&'static str] = &[
        "CLIENT",
        "FRONTEND",
        "REV_NAT_ID",
        "BACKEND",
        "BACKEND_ID",
        "IDLE_SECONDS",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            or_null(self.client.as_ref()),
            super::labelled(&or_null(self.frontend.as_ref()), self.service.as_ref()),
            self.rev_nat_id.to_string(),
            or_null(self.backend.as_ref()),
            self.backend_id.to_string(),
            self.idle_seconds.to_string(),
        ]
    }
}

pub fn affinity(pins: &PinLayout) -> Result<Vec<AffinityRow>, CtlError> {
    let map: Affinity = open(pins, &maps::AFFINITY)?;
    let revnat: RevNats = open(pins, &maps::REVNAT)?;
    let backends: Backends = open(pins, &maps::BACKENDS)?;
    let now = monotonic_ns()?;
    let names = super::name_table(pins);
    let mut rows = Vec::new();
    for entry in map.iter() {
        let (k, v) = entry.map_err(|source| CtlError::Map {
            map: names::AFFINITY,
            source,
        })?;
        rows.push(AffinityRow {
            client: ip(k.client, k.family).map(|a| a.to_string()),
            rev_nat_id: k.rev_nat_id,
            service: names.service(k.rev_nat_id),
            frontend: revnat
                .get(&k.rev_nat_id, 0)
                .ok()
                .map(|r| sock(r.addr, r.family, r.port)),
            backend_id: v.backend_id,
            backend: backends
                .get(&v.backend_id, 0)
                .ok()
                .map(|b| sock(b.addr, b.family, b.port)),
            idle_seconds: now.saturating_sub(v.last_used_ns) / 1_000_000_000,
        });
    }
    // By client (a bad family, `null`, first), then frontend.
    rows.sort_by_cached_key(|r| (r.client.clone(), r.rev_nat_id));
    Ok(rows)
}
