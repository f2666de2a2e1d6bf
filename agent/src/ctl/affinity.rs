//! `weirctl affinity`: which backend each client is pinned to, per frontend.

use serde_json::json;
use weir_common::maps as names;

use super::{CtlError, View, ip, open, sock};
use crate::{
    conntrack::monotonic_ns,
    datapath::{
        PinLayout,
        maps::{self, Affinity, Backends, RevNats},
    },
};

pub fn affinity(pins: &PinLayout) -> Result<View, CtlError> {
    let map: Affinity = open(pins, &maps::AFFINITY)?;
    let revnat: RevNats = open(pins, &maps::REVNAT)?;
    let backends: Backends = open(pins, &maps::BACKENDS)?;
    let now = monotonic_ns()?;
    let mut json = Vec::new();
    for entry in map.iter() {
        let (k, v) = entry.map_err(|source| CtlError::Map {
            map: names::AFFINITY,
            source,
        })?;
        let frontend = revnat
            .get(&k.rev_nat_id, 0)
            .ok()
            .map(|r| sock(r.addr, r.family, r.port));
        let backend = backends
            .get(&v.backend_id, 0)
            .ok()
            .map(|b| sock(b.addr, b.family, b.port));
        json.push(json!({
            "client": ip(k.client, k.family).map(|a| a.to_string()),
            "rev_nat_id": k.rev_nat_id,
            "frontend": frontend,
            "backend_id": v.backend_id,
            "backend": backend,
            "idle_seconds": now.saturating_sub(v.last_used_ns) / 1_000_000_000,
        }));
    }
    json.sort_by(|a, b| {
        (a["client"].as_str(), a["rev_nat_id"].as_u64())
            .cmp(&(b["client"].as_str(), b["rev_nat_id"].as_u64()))
    });
    Ok(View::flat(
        json,
        vec![
            "client",
            "frontend",
            "rev_nat_id",
            "backend",
            "backend_id",
            "idle_seconds",
        ],
    ))
}
