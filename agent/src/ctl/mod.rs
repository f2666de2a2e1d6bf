//! `weirctl`'s views of the pinned maps, one module per map. Each view reads its
//! maps into typed rows, one struct per view, which `table` renders either as
//! JSON (the struct serialized: the full detail, for scripts and tests) or as a
//! table (the same facts, condensed for people).

mod affinity;
mod backends;
mod conntrack;
mod endpoints;
mod events;
mod explain;
mod ipcache;
mod metrics;
mod policy;
mod services;
mod source_ranges;
mod status;
mod table;
#[cfg(test)]
mod tests;
mod tunnels;

use std::net::{IpAddr, SocketAddr};

pub use crate::datapath::names::NameTable;
use weir_common::{IPPROTO_ICMP, IPPROTO_ICMPV6};
use weir_model::{DesiredServices, Protocol, net::from_abi, policy::DesiredPolicy};

pub use self::{
    affinity::{AffinityRow, affinity},
    backends::{BackendRow, backend_rows, backends},
    conntrack::{ConntrackRow, conntrack},
    endpoints::{EndpointRow, endpoints},
    events::{EventRow, Namer, decode},
    explain::{Explanation, Flow, explain},
    ipcache::{IpcacheRow, ipcache, ipcache_rows},
    metrics::{MetricRow, metrics},
    policy::{PolicyRow, policy, policy_rows},
    services::{Algorithm, ServiceRow, SlotRow, service_rows, services},
    source_ranges::{SourceRangeRow, frontend_text, source_range_rows, source_ranges},
    status::{StatusReport, status},
    table::{Row, to_json, to_table},
    tunnels::{TunnelRow, tunnels},
};

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Datapath(#[from] Box<crate::datapath::DatapathError>),
    #[error("reading map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Clock(#[from] crate::conntrack::CtError),
}

impl From<crate::sync::SyncError> for CtlError {
    fn from(e: crate::sync::SyncError) -> Self {
        match e {
            crate::sync::SyncError::Read { map, source } => CtlError::Map { map, source },
        }
    }
}

fn open<T>(pins: &crate::datapath::PinLayout, spec: &crate::datapath::maps::MapSpec) -> Result<T, CtlError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    crate::datapath::maps::open_pinned(pins, spec).map_err(|e| CtlError::Datapath(Box::new(e)))
}

/// What the service maps pinned under `pins` hold.
pub fn read_services(pins: &crate::datapath::PinLayout) -> Result<DesiredServices, CtlError> {
    use crate::datapath::maps;
    crate::sync::read_service_maps(
        &open(pins, &maps::SERVICES)?,
        &open(pins, &maps::BACKENDS)?,
        &open(pins, &maps::REVNAT)?,
        &open(pins, &maps::MAGLEV)?,
    )
    .map_err(CtlError::from)
}

/// What the policy maps pinned under `pins` hold.
pub fn read_policy(pins: &crate::datapath::PinLayout) -> Result<DesiredPolicy, CtlError> {
    use crate::datapath::maps;
    crate::sync::read_policy_maps(
        &open(pins, &maps::POLICY_ENDPOINTS)?,
        &open(pins, &maps::IPCACHE)?,
        &open(pins, &maps::POLICY)?,
    )
    .map_err(CtlError::from)
}

/// The name table pinned under `pins`; empty where there is none (an agent
/// of an earlier version) or it cannot be read: names only label the views.
pub fn name_table(pins: &crate::datapath::PinLayout) -> NameTable {
    crate::datapath::names::Names::open(pins)
        .ok()
        .and_then(|n| n.read().ok())
        .unwrap_or_default()
}

/// `text (name)`, or `text` where there is no name.
fn labelled(text: &str, name: Option<&String>) -> String {
    match name {
        Some(name) => format!("{text} ({name})"),
        None => text.to_owned(),
    }
}

fn ip(addr: [u8; 16], family: u8) -> Option<IpAddr> {
    from_abi(addr, family)
}

/// An address from ABI fields; `?` for a bad family.
fn ip_text(addr: [u8; 16], family: u8) -> String {
    ip(addr, family).map_or_else(|| "?".to_owned(), |ip| ip.to_string())
}

/// `addr:port` from ABI fields (port in network order); `?` for a bad family.
fn sock(addr: [u8; 16], family: u8, port_be: u16) -> String {
    ip(addr, family).map_or_else(
        || "?".to_owned(),
        |ip| SocketAddr::new(ip, u16::from_be(port_be)).to_string(),
    )
}

/// A protocol's name: a Service's, or ICMP's (masqueraded pings, drops).
fn proto(p: u8) -> String {
    match p {
        IPPROTO_ICMP => "ICMP".to_owned(),
        IPPROTO_ICMPV6 => "ICMPv6".to_owned(),
        p => Protocol::from_ipproto(p).map_or_else(|| p.to_string(), |p| p.as_str().to_owned()),
    }
}
