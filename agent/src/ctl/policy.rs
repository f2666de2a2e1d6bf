//! `weirctl policy`, `weirctl ipcache`, `weirctl drops`: what each isolated pod
//! admits, the identities of peer addresses, and the packets policy dropped.

use std::collections::BTreeMap;

use aya::maps::{Map, MapData, RingBuf};
use serde_json::{Value, json};
use weir_common::{
    DropEvent, IDENTITY_ANY, IPCACHE_PREFIX_BITS, POLICY_F_EGRESS, POLICY_F_INGRESS, POLICY_PREFIX_ANY_PORT,
    POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_FULL, Reason, maps as names,
};

use super::{CtlError, View, ip_text, open, proto, sock};
use crate::datapath::{
    PinLayout,
    maps::{self, Ipcache, Policy, PolicyEndpoints},
};

/// Identity -> the prefixes the ipcache gives it.
fn members(pins: &PinLayout) -> Result<BTreeMap<u32, Vec<String>>, CtlError> {
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

pub fn ipcache(pins: &PinLayout) -> Result<View, CtlError> {
    let mut rows = Vec::new();
    for (identity, prefixes) in members(pins)? {
        for prefix in prefixes {
            rows.push(json!({ "prefix": prefix, "identity": identity }));
        }
    }
    Ok(View::flat(rows, vec!["prefix", "identity"]))
}

/// Endpoint id -> (address, `POLICY_F_*`).
fn endpoints(pins: &PinLayout) -> Result<BTreeMap<u32, (String, u32)>, CtlError> {
    let map: PolicyEndpoints = open(pins, &maps::POLICY_ENDPOINTS)?;
    let mut out = BTreeMap::new();
    for entry in map.iter() {
        let (k, v) = entry.map_err(|source| CtlError::Map {
            map: names::POLICY_ENDPOINTS,
            source,
        })?;
        let addr = ip_text(k.addr, k.family);
        out.insert(v.id, (addr, v.flags));
    }
    Ok(out)
}

/// One row per rule of each isolated pod, and one per isolated direction that
/// admits nothing.
pub fn policy(pins: &PinLayout) -> Result<View, CtlError> {
    let endpoints = endpoints(pins)?;
    let members = members(pins)?;
    let map: Policy = open(pins, &maps::POLICY)?;
    let mut rows = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for entry in map.iter() {
        let (k, _) = entry.map_err(|source| CtlError::Map {
            map: names::POLICY,
            source,
        })?;
        let (len, r) = (k.prefix_len(), k.data());
        let direction = if r.egress == 1 { "egress" } else { "ingress" };
        seen.insert((r.endpoint, r.egress));
        let peers = if r.identity == IDENTITY_ANY {
            "any".to_owned()
        } else {
            members
                .get(&r.identity)
                .map_or_else(|| "none".to_owned(), |m| m.join(" "))
        };
        let (protocol, ports) = if len <= POLICY_PREFIX_ANY_PROTO {
            ("any".to_owned(), "any".to_owned())
        } else if len <= POLICY_PREFIX_ANY_PORT {
            (proto(r.proto), "any".to_owned())
        } else {
            let first = u16::from_be(r.port);
            let last = u32::from(first) + (1u32 << POLICY_PREFIX_FULL.saturating_sub(len).min(16)) - 1;
            let ports = if last == u32::from(first) {
                first.to_string()
            } else {
                format!("{first}-{last}")
            };
            (proto(r.proto), ports)
        };
        rows.push(json!({
            "endpoint": endpoints.get(&r.endpoint).map(|e| e.0.clone()),
            "endpoint_id": r.endpoint,
            "direction": direction,
            "identity": r.identity,
            "peers": peers,
            "protocol": protocol,
            "ports": ports,
        }));
    }
    for (id, (addr, flags)) in &endpoints {
        for (flag, egress, direction) in [(POLICY_F_INGRESS, 0, "ingress"), (POLICY_F_EGRESS, 1, "egress")] {
            if flags & flag != 0 && !seen.contains(&(*id, egress)) {
                rows.push(json!({
                    "endpoint": addr, "endpoint_id": id, "direction": direction,
                    "identity": Value::Null, "peers": "nothing admitted", "protocol": "-", "ports": "-",
                }));
            }
        }
    }
    rows.sort_by(|a, b| {
        (
            a["endpoint"].as_str(),
            a["direction"].as_str(),
            a["identity"].as_u64(),
        )
            .cmp(&(
                b["endpoint"].as_str(),
                b["direction"].as_str(),
                b["identity"].as_u64(),
            ))
    });
    Ok(View::flat(
        rows,
        vec!["endpoint", "direction", "peers", "identity", "protocol", "ports"],
    ))
}

/// The drops reported since the last read (reading consumes them).
pub fn drops(pins: &PinLayout) -> Result<View, CtlError> {
    let err = |source| CtlError::Map {
        map: names::EVENTS,
        source,
    };
    let endpoints = endpoints(pins)?;
    maps::check_pin(pins, &maps::EVENTS).map_err(|e| CtlError::Datapath(Box::new(e)))?;
    let data = MapData::from_pin(pins.map(names::EVENTS)).map_err(err)?;
    let mut ring = RingBuf::try_from(Map::RingBuf(data)).map_err(err)?;
    let mut rows = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() < size_of::<DropEvent>() {
            continue;
        }
        // SAFETY: the datapath writes whole `DropEvent`s; the read is unaligned-safe.
        let e: DropEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        rows.push(json!({
            "reason": Reason::describe_code(e.reason),
            "endpoint": endpoints.get(&e.endpoint).map(|x| x.0.clone()),
            "endpoint_id": e.endpoint,
            "source": sock(e.saddr, e.family, e.sport),
            "destination": sock(e.daddr, e.family, e.dport),
            "protocol": proto(e.proto),
            "peer_identity": e.identity,
        }));
    }
    Ok(View::flat(
        rows,
        vec![
            "reason",
            "endpoint",
            "source",
            "destination",
            "protocol",
            "peer_identity",
        ],
    ))
}
