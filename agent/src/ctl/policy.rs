//! `weirctl policy`: what each isolated local pod admits, per direction.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use weir_common::{
    EndpointKey, IDENTITY_ANY, POLICY_F_EGRESS, POLICY_F_INGRESS, POLICY_PREFIX_ANY_PORT,
    POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_FULL, PolicyEndpoint,
};
use weir_model::policy::DesiredPolicy;

use super::{CtlError, Row, ip_text, ipcache::members, proto, table::or_null};
use crate::datapath::PinLayout;

/// One rule of an isolated pod, or an isolated direction that admits nothing.
#[derive(Debug, Serialize)]
pub struct PolicyRow {
    /// The pod's address; `None` for a rule whose endpoint is unknown.
    pub endpoint: Option<String>,
    pub endpoint_id: u32,
    /// `namespace/name`, from the name table (absent when it has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// `ingress` or `egress`.
    pub direction: &'static str,
    /// The peers' identity; `None` on a direction that admits nothing.
    pub identity: Option<u32>,
    /// `any`, the identity's prefixes, `none` (no prefix has it) or `nothing admitted`.
    pub peers: String,
    pub protocol: String,
    pub ports: String,
}

impl Row for PolicyRow {
    const HEADERS: &'static [&'static str] =
        &["ENDPOINT", "DIRECTION", "PEERS", "IDENTITY", "PROTOCOL", "PORTS"];

    fn cells(&self) -> Vec<String> {
        vec![
            super::labelled(&or_null(self.endpoint.as_ref()), self.pod.as_ref()),
            self.direction.to_owned(),
            self.peers.clone(),
            or_null(self.identity),
            self.protocol.clone(),
            self.ports.clone(),
        ]
    }
}

/// Endpoint id -> (address, `POLICY_F_*`), of the policy endpoints map.
pub(super) fn endpoints(map: &BTreeMap<EndpointKey, PolicyEndpoint>) -> BTreeMap<u32, (String, u32)> {
    map.iter()
        .map(|(k, v)| (v.id, (ip_text(k.addr, k.family), v.flags)))
        .collect()
}

pub fn policy(pins: &PinLayout) -> Result<Vec<PolicyRow>, CtlError> {
    let mut rows = policy_rows(&super::read_policy(pins)?);
    let names = super::name_table(pins);
    for row in &mut rows {
        row.pod = row.endpoint.as_deref().and_then(|e| names.pod(e));
    }
    Ok(rows)
}

/// One row per rule of each isolated pod of `maps`, and one per isolated
/// direction that admits nothing.
pub fn policy_rows(maps: &DesiredPolicy) -> Vec<PolicyRow> {
    let endpoints = endpoints(&maps.endpoints);
    let members = members(maps);
    let mut rows = Vec::new();
    let mut seen = BTreeSet::new();
    for rule in &maps.rules {
        let (len, r) = (rule.prefix_len, rule.key);
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
            (proto(r.proto), port_range(u16::from_be(r.port), len))
        };
        rows.push(PolicyRow {
            endpoint: endpoints.get(&r.endpoint).map(|e| e.0.clone()),
            endpoint_id: r.endpoint,
            pod: None,
            direction: if r.egress == 1 { "egress" } else { "ingress" },
            identity: Some(r.identity),
            peers,
            protocol,
            ports,
        });
    }
    for (id, (addr, flags)) in &endpoints {
        for (flag, egress, direction) in [(POLICY_F_INGRESS, 0, "ingress"), (POLICY_F_EGRESS, 1, "egress")] {
            if flags & flag != 0 && !seen.contains(&(*id, egress)) {
                rows.push(PolicyRow {
                    endpoint: Some(addr.clone()),
                    endpoint_id: *id,
                    pod: None,
                    direction,
                    identity: None,
                    peers: "nothing admitted".to_owned(),
                    protocol: "-".to_owned(),
                    ports: "-".to_owned(),
                });
            }
        }
    }
    // By endpoint (an unknown one first), direction and identity; stable, so a
    // pod's rules for one peer stay in the rules' order.
    rows.sort_by_cached_key(|r| (r.endpoint.clone(), r.direction, r.identity));
    rows
}

/// `first` or `first-last`: the ports a rule's prefix length leaves free.
fn port_range(first: u16, len: u32) -> String {
    let last = u32::from(first) + (1u32 << POLICY_PREFIX_FULL.saturating_sub(len).min(16)) - 1;
    if last == u32::from(first) {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}
