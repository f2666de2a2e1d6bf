//! The node's endpoints: its pods (filled by the agent when `weir-cni`
//! registers them) and the addresses of its own network namespace.

use aya_ebpf::maps::HashMap;
use weir_common::{EndpointInfo, EndpointKey, maps};

use crate::packet::Family;

bpf_map! {
    static ENDPOINTS: HashMap<EndpointKey, EndpointInfo> = HashMap::with_max_entries(maps::ENDPOINTS_ENTRIES, 0);
}

bpf_map! {
    static NODE_IPS: HashMap<EndpointKey, u32> = HashMap::with_max_entries(maps::NODE_IPS_ENTRIES, 0);
}

/// The key of a local address (pods' maps are keyed alike).
#[inline(always)]
pub fn key<F: Family>(addr: &F::Addr) -> EndpointKey {
    let mut key = EndpointKey {
        family: F::AF,
        ..EndpointKey::default()
    };
    F::widen(addr, &mut key.addr);
    key
}

/// [`key`] of an address in the maps' 16-byte form.
#[inline(always)]
pub fn key_wide<F: Family>(addr: &[u8; 16]) -> EndpointKey {
    let mut key = EndpointKey {
        family: F::AF,
        ..EndpointKey::default()
    };
    key.addr.copy_from_slice(addr);
    key
}

/// The host-side veth of the local pod at `key`, if it is one.
#[inline(always)]
pub fn veth(key: &EndpointKey) -> Option<u32> {
    get(key).map(|ep| ep.ifindex)
}

/// The local pod at `key`, if it is one.
#[inline(always)]
pub fn get(key: &EndpointKey) -> Option<&'static EndpointInfo> {
    // SAFETY: a pointer into the map's value, valid for this run.
    unsafe { ENDPOINTS.get(key) }
}

/// Whether a packet for this pod can be handed straight into its namespace
/// ([`crate::peer`]): the MACs to address it with are known.
#[inline(always)]
pub fn peer_ready(ep: &EndpointInfo) -> bool {
    ep.mac != [0; 6] && ep.host_mac != [0; 6]
}

/// Whether `key` is one of the node's own addresses (hostNetwork endpoints
/// live there).
#[inline(always)]
pub fn is_node(key: &EndpointKey) -> bool {
    // SAFETY: as above.
    unsafe { NODE_IPS.get(key) }.is_some()
}
