//! `weirctl services`: every frontend (slot 0) with its flags, the algorithm that
//! picks its backends (`maglev` when it has a table, else `random`) and its
//! backends in slot order, as the datapath will pick them.

use std::collections::BTreeMap;

use serde::Serialize;
use weir_common::{
    BACKEND_ACTIVE, BACKEND_TERMINATING, Backend, SCOPE_INTERNAL, SVC_F_AFFINITY, SVC_F_MAGLEV, ServiceKey,
};

use weir_model::{DesiredServices, topology::TopologyMode};

use super::{CtlError, Row, ip, proto, sock, table::or_dash};
use crate::datapath::PinLayout;

/// One frontend.
#[derive(Debug, Serialize)]
pub struct ServiceRow {
    /// `VIP:port/PROTO`.
    pub frontend: String,
    /// The Service's `namespace/name` (`weir-agent compile`: and its port's
    /// name, `namespace/name:port`), where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub address: Option<String>,
    pub port: u16,
    pub protocol: String,
    pub scope: &'static str,
    pub rev_nat_id: u32,
    pub flags: Vec<&'static str>,
    pub algorithm: Algorithm,
    /// Set only when the `affinity` flag is.
    pub affinity_timeout: Option<u32>,
    /// The backend slots the frontend claims.
    pub count: u16,
    pub backends: Vec<SlotRow>,
    /// `weir-agent compile`: the topology hints the slots follow, if any do
    /// (the maps do not say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<TopologyMode>,
}

/// How the datapath picks a frontend's backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Maglev,
    /// Also what a Maglev frontend without a table falls back to.
    Random,
}

/// One backend slot of a frontend, or the slots it claims but the map lacks.
#[derive(Debug, Serialize)]
pub struct SlotRow {
    pub slot: Option<u16>,
    pub id: Option<u32>,
    pub address: Option<String>,
    /// `active`, `terminating`, `unknown`, `missing-backend` or `missing-slot`.
    pub state: &'static str,
    /// How many slots are missing; only on the `missing-slot` item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<usize>,
}

impl SlotRow {
    fn text(&self) -> String {
        let address = self.address.as_deref().unwrap_or("?");
        match (self.missing, self.state) {
            (Some(n), _) => format!("({n} slots missing)"),
            (None, "active") => address.to_owned(),
            (None, state) => format!("{address}({state})"),
        }
    }
}

impl Row for ServiceRow {
    const HEADERS: &'static [&'static str] = &["FRONTEND", "SERVICE", "SCOPE", "ID", "FLAGS", "BACKENDS"];

    fn cells(&self) -> Vec<String> {
        let flags: Vec<String> = self
            .flags
            .iter()
            .map(|f| match (*f, self.affinity_timeout) {
                ("affinity", Some(t)) => format!("affinity={t}s"),
                ("maglev", _) if self.algorithm != Algorithm::Maglev => "maglev(no-table)".to_owned(),
                (f, _) => f.to_owned(),
            })
            .collect();
        let backends = if self.backends.is_empty() {
            "(none: reject)".to_owned()
        } else {
            self.backends
                .iter()
                .map(SlotRow::text)
                .collect::<Vec<_>>()
                .join(" ")
        };
        vec![
            self.frontend.clone(),
            self.service.clone().unwrap_or_else(|| "-".to_owned()),
            self.scope.to_owned(),
            self.rev_nat_id.to_string(),
            or_dash(&flags, ","),
            backends,
        ]
    }
}

pub fn services(pins: &PinLayout) -> Result<Vec<ServiceRow>, CtlError> {
    // Names after the maps: the agent names a frontend before writing it.
    let mut rows = service_rows(&super::read_services(pins)?);
    let names = super::name_table(pins);
    for row in &mut rows {
        row.service = names.service(row.rev_nat_id);
    }
    Ok(rows)
}

/// One row per frontend of `maps` (what the service maps hold, or what a
/// compile wants them to).
pub fn service_rows(maps: &DesiredServices) -> Vec<ServiceRow> {
    // Slots by frontend, read once: a view costs what the maps hold, whatever
    // counts the frontends claim.
    let mut slots_of: BTreeMap<ServiceKey, Vec<(u16, u32)>> = BTreeMap::new();
    for (k, v) in maps.services.iter().filter(|(k, _)| k.slot != 0) {
        slots_of
            .entry(ServiceKey { slot: 0, ..*k })
            .or_default()
            .push((k.slot, v.backend_id));
    }
    let mut rows = Vec::new();
    for (key, head) in maps.services.iter().filter(|(k, _)| k.slot == 0) {
        let present: Vec<(u16, u32)> = slots_of
            .get(key)
            .map(|s| {
                s.iter()
                    .copied()
                    .filter(|(slot, _)| *slot <= head.count)
                    .collect()
            })
            .unwrap_or_default();
        let mut slots: Vec<SlotRow> = present
            .iter()
            .map(|&(slot, id)| slot_row(&maps.backends, slot, id))
            .collect();
        let missing = usize::from(head.count) - present.len();
        if missing > 0 {
            // The datapath would find no backend there (a sync in progress, or
            // a map written by something else): said once, not slot by slot.
            slots.push(SlotRow {
                slot: None,
                id: None,
                address: None,
                state: "missing-slot",
                missing: Some(missing),
            });
        }
        // The datapath falls back to a random slot when a Maglev frontend has no
        // table (the agent skipped it, or has not written it yet).
        let has_table = head.flags & SVC_F_MAGLEV != 0 && maps.maglev.contains_key(&head.rev_nat_id);
        rows.push(ServiceRow {
            frontend: format!("{}/{}", sock(key.addr, key.family, key.port), proto(key.proto)),
            service: None,
            address: ip(key.addr, key.family).map(|a| a.to_string()),
            port: u16::from_be(key.port),
            protocol: proto(key.proto),
            scope: if key.scope == SCOPE_INTERNAL {
                "internal"
            } else {
                "external"
            },
            rev_nat_id: head.rev_nat_id,
            topology: None,
            flags: flag_names(head.flags),
            algorithm: if has_table {
                Algorithm::Maglev
            } else {
                Algorithm::Random
            },
            affinity_timeout: (head.flags & SVC_F_AFFINITY != 0).then_some(head.affinity_timeout),
            count: head.count,
            backends: slots,
        });
    }
    rows
}

fn slot_row(backends: &BTreeMap<u32, Backend>, slot: u16, id: u32) -> SlotRow {
    let backend = backends.get(&id);
    SlotRow {
        slot: Some(slot),
        id: Some(id),
        address: backend.map(|b| sock(b.addr, b.family, b.port)),
        state: backend.map_or("missing-backend", |b| state_name(b.state)),
        missing: None,
    }
}

pub(super) fn state_name(state: u8) -> &'static str {
    match state {
        BACKEND_ACTIVE => "active",
        BACKEND_TERMINATING => "terminating",
        _ => "unknown",
    }
}

pub(super) fn flag_names(flags: u32) -> Vec<&'static str> {
    weir_common::SVC_FLAG_NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect()
}
