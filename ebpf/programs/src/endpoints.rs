//! Local pods, filled by the agent when `weir-cni` registers them.

use aya_ebpf::{macros::map, maps::HashMap};
use weir_common::{EndpointInfo, EndpointKey, maps};

#[map(name = "weir_endp_v1")]
pub static ENDPOINTS: HashMap<EndpointKey, EndpointInfo> =
    HashMap::with_max_entries(maps::ENDPOINTS_ENTRIES, 0);
