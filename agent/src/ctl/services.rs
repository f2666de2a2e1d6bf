//! `weirctl services`: every frontend (slot 0) with its flags, the algorithm that
//! picks its backends (`maglev` when it has a table, else `random`) and its
//! backends in slot order, as the datapath will pick them.

use std::collections::BTreeMap;

use serde_json::json;
use weir_common::{
    BACKEND_ACTIVE, BACKEND_TERMINATING, Backend, SCOPE_INTERNAL, SVC_F_AFFINITY, SVC_F_MAGLEV, ServiceKey,
    maps as names,
};

use super::{CtlError, View, ip, open, proto, sock};
use crate::datapath::{
    PinLayout,
    maps::{self, Backends, Maglev, Services},
};

pub fn services(pins: &PinLayout) -> Result<View, CtlError> {
    let services: Services = open(pins, &maps::SERVICES)?;
    let backends: Backends = open(pins, &maps::BACKENDS)?;
    let maglev: Maglev = open(pins, &maps::MAGLEV)?;
    let mut entries = BTreeMap::new();
    for entry in services.iter() {
        let (k, v) = entry.map_err(|source| CtlError::Map {
            map: names::SERVICES,
            source,
        })?;
        entries.insert(k, v);
    }
    // Slots by frontend, and backends by id, read once: a view costs what the
    // maps hold, whatever counts the frontends claim.
    let mut slots_of: BTreeMap<ServiceKey, Vec<(u16, u32)>> = BTreeMap::new();
    for (k, v) in entries.iter().filter(|(k, _)| k.slot != 0) {
        slots_of
            .entry(ServiceKey { slot: 0, ..*k })
            .or_default()
            .push((k.slot, v.backend_id));
    }
    let mut known = BTreeMap::new();
    for entry in backends.iter() {
        let (id, b) = entry.map_err(|source| CtlError::Map {
            map: names::BACKENDS,
            source,
        })?;
        known.insert(id, b);
    }
    let mut json = Vec::new();
    let mut rows = Vec::new();
    for (key, head) in entries.iter().filter(|(k, _)| k.slot == 0) {
        let present: Vec<(u16, u32)> = slots_of
            .get(key)
            .map(|s| {
                s.iter()
                    .copied()
                    .filter(|(slot, _)| *slot <= head.count)
                    .collect()
            })
            .unwrap_or_default();
        let mut slots: Vec<serde_json::Value> = present
            .iter()
            .map(|&(slot, id)| slot_json(&known, slot, id))
            .collect();
        let missing = usize::from(head.count) - present.len();
        if missing > 0 {
            // The datapath would find no backend there (a sync in progress, or
            // a map written by something else): said once, not slot by slot.
            slots.push(json!({ "slot": null, "id": null, "address": null, "state": "missing-slot", "missing": missing }));
        }
        let frontend = format!("{}/{}", sock(key.addr, key.family, key.port), proto(key.proto));
        let flags = flag_names(head.flags);
        // The datapath falls back to a random slot when a Maglev frontend has no
        // table (the agent skipped it, or has not written it yet).
        let has_table = head.flags & SVC_F_MAGLEV != 0 && maglev.get(&head.rev_nat_id, 0).is_ok();
        let algorithm = if has_table { "maglev" } else { "random" };
        let timeout = (head.flags & SVC_F_AFFINITY != 0).then_some(head.affinity_timeout);
        let scope = if key.scope == SCOPE_INTERNAL {
            "internal"
        } else {
            "external"
        };
        let backend_cell = if slots.is_empty() {
            "(none: reject)".to_owned()
        } else {
            slots
                .iter()
                .map(|s| match (s["state"].as_str(), s["missing"].as_u64()) {
                    (_, Some(n)) => format!("({n} slots missing)"),
                    (Some("active") | None, _) => s["address"].as_str().unwrap_or("?").to_owned(),
                    (Some(state), _) => format!("{}({state})", s["address"].as_str().unwrap_or("?")),
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let flags_cell = flags
            .iter()
            .map(|f| match (*f, timeout) {
                ("affinity", Some(t)) => format!("affinity={t}s"),
                ("maglev", _) if !has_table => "maglev(no-table)".to_owned(),
                (f, _) => f.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(",");
        rows.push(vec![
            frontend.clone(),
            scope.to_owned(),
            head.rev_nat_id.to_string(),
            if flags_cell.is_empty() {
                "-".into()
            } else {
                flags_cell
            },
            backend_cell,
        ]);
        json.push(json!({
            "frontend": frontend,
            "address": ip(key.addr, key.family).map(|a| a.to_string()),
            "port": u16::from_be(key.port),
            "protocol": proto(key.proto),
            "scope": scope,
            "rev_nat_id": head.rev_nat_id,
            "flags": flags,
            "algorithm": algorithm,
            "affinity_timeout": timeout,
            "count": head.count,
            "backends": slots,
        }));
    }
    Ok(View {
        json,
        columns: vec!["frontend", "scope", "id", "flags", "backends"],
        rows,
    })
}

fn slot_json(backends: &BTreeMap<u32, Backend>, slot: u16, id: u32) -> serde_json::Value {
    match backends.get(&id) {
        Some(b) => json!({
            "slot": slot,
            "id": id,
            "address": sock(b.addr, b.family, b.port),
            "state": state_name(b.state),
        }),
        None => json!({ "slot": slot, "id": id, "address": null, "state": "missing-backend" }),
    }
}

pub(super) fn state_name(state: u8) -> &'static str {
    match state {
        BACKEND_ACTIVE => "active",
        BACKEND_TERMINATING => "terminating",
        _ => "unknown",
    }
}

fn flag_names(flags: u32) -> Vec<&'static str> {
    weir_common::SVC_FLAG_NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect()
}
