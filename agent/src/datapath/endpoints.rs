//! The node's pod endpoints in the kernel's view: the key a pod address has in
//! the endpoint maps, and the entries of veths that are gone.

use std::net::IpAddr;

use aya::maps::MapError;
use weir_common::EndpointKey;

use super::{Datapath, DatapathError};

/// The key of a pod address in `weir_endp_v1`, `weir_polep_v1` and
/// `weir_nodeip_v1`.
pub fn endpoint_key(ip: IpAddr) -> EndpointKey {
    let (addr, family) = weir_model::net::to_abi(ip);
    EndpointKey {
        addr,
        family,
        _pad: [0; 3],
    }
}

/// Removes the endpoint entries of veths that have gone while the agent was
/// down; returns how many.
pub fn forget_ifindexes(dp: &mut Datapath, gone: &[u32]) -> Result<usize, DatapathError> {
    let name = weir_common::maps::ENDPOINTS;
    let stale: Vec<EndpointKey> = dp
        .endpoints
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, info)| gone.contains(&info.ifindex))
        .map(|(key, _)| key)
        .collect();
    for key in &stale {
        dp.endpoints
            .remove(key)
            .map_err(|source| DatapathError::Map { name, source })?;
    }
    Ok(stale.len())
}

/// A delete of a key that is already gone (ENOENT), which aya reports as a
/// syscall error.
pub fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32),
        _ => false,
    }
}
