//! Local pods, filled by the agent when `weir-cni` registers them.

use aya_ebpf::maps::HashMap;
use weir_common::{EndpointInfo, EndpointKey, maps};

use crate::packet::Family;

bpf_map! {
    pub static ENDPOINTS: HashMap<EndpointKey, EndpointInfo> = HashMap::with_max_entries(maps::ENDPOINTS_ENTRIES, 0);
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
