//! Choosing a backend for a new flow: session affinity first, then a uniformly
//! random slot (kube-proxy's iptables mode picks uniformly too).

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use weir_common::{
    AF_INET, AffinityKey, AffinityValue, BACKEND_ACTIVE, Reason, SVC_F_AFFINITY, ServiceKey, ServiceValue,
};

use super::maps::{AFFINITY, BACKENDS, SERVICES};
use crate::packet::addr16;

const NS: u64 = 1_000_000_000;

/// The backend id for a new flow from `client` to the service entry `svc`.
#[inline(always)]
pub fn backend(client: [u8; 4], key: &ServiceKey, svc: &ServiceValue) -> Result<u32, Reason> {
    if svc.flags & SVC_F_AFFINITY == 0 {
        return random_slot(key, svc.count);
    }
    let akey = AffinityKey { client: addr16(client), rev_nat_id: svc.rev_nat_id, family: AF_INET, _pad: 0 };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = AFFINITY.get_ptr_mut(&akey) {
        // SAFETY: a pointer into the map's value, valid for this program run.
        let (id, last) = unsafe { ((*entry).backend_id, (*entry).last_used_ns) };
        // kube-proxy's `recent` match: the timeout runs from the last new
        // connection, and an endpoint that is no longer ready frees the client.
        // SAFETY: map lookups return pointers valid for this run.
        let usable = unsafe { BACKENDS.get(&id) }.is_some_and(|b| b.state == BACKEND_ACTIVE);
        if usable && now.saturating_sub(last) <= u64::from(svc.affinity_timeout) * NS {
            // SAFETY: as above.
            unsafe { (*entry).last_used_ns = now };
            return Ok(id);
        }
    }
    let id = random_slot(key, svc.count)?;
    // Best effort: without the entry the next flow just picks again.
    let _ = AFFINITY.insert(&akey, &AffinityValue { backend_id: id, _pad: 0, last_used_ns: now }, 0);
    Ok(id)
}

#[inline(always)]
fn random_slot(key: &ServiceKey, count: u16) -> Result<u32, Reason> {
    // SAFETY: no preconditions.
    let r = unsafe { bpf_get_prandom_u32() };
    let slot = (r % u32::from(count)) as u16 + 1;
    let slot_key = ServiceKey { slot, ..*key };
    // SAFETY: map lookups return pointers valid for this run.
    unsafe { SERVICES.get(&slot_key) }.map(|v| v.backend_id).ok_or(Reason::BackendMissing)
}
