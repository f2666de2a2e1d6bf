//! Choosing a backend for a new flow: session affinity first, then a uniformly
//! random slot (kube-proxy's iptables mode picks uniformly too).

use aya_ebpf::helpers::bpf_get_prandom_u32;
use weir_common::{
    AffinityKey, AffinityValue, BACKEND_ACTIVE, BACKEND_TERMINATING, MAGLEV_TABLE_SIZE, Reason,
    SVC_F_AFFINITY, SVC_F_MAGLEV, ServiceKey, ServiceValue,
};

use super::maps::{AFFINITY, BACKENDS, MAGLEV, SERVICES};
use crate::packet::{Family, Flow};

const NS: u64 = 1_000_000_000;

/// The backend id for a new flow to the service entry `svc`.
#[inline(always)]
pub fn backend<F: Family>(
    flow: &Flow<F>,
    key: &ServiceKey,
    svc: &ServiceValue,
    now: u64,
) -> Result<u32, Reason> {
    if svc.flags & SVC_F_AFFINITY == 0 {
        return pick(flow, key, svc);
    }
    let mut akey = AffinityKey {
        client: [0; 16],
        rev_nat_id: svc.rev_nat_id,
        family: F::AF,
        _pad: [0; 3],
    };
    F::widen(&flow.saddr, &mut akey.client);
    if let Some(entry) = AFFINITY.get_ptr_mut(&akey) {
        // SAFETY: a pointer into the map's value, valid for this program run.
        let (id, last) = unsafe { ((*entry).backend_id, (*entry).last_used_ns) };
        // kube-proxy's `recent` match: the timeout runs from the last new
        // connection, and an endpoint that is no longer ready frees the client,
        // unless the service runs on terminating endpoints for lack of ready ones.
        // SAFETY: map lookups return pointers valid for this run.
        let usable = unsafe { BACKENDS.get(&id) }
            .is_some_and(|b| b.state == BACKEND_ACTIVE || on_terminating_fallback(key));
        if usable && now.saturating_sub(last) <= u64::from(svc.affinity_timeout) * NS {
            // SAFETY: as above.
            unsafe { (*entry).last_used_ns = now };
            return Ok(id);
        }
    }
    let id = pick(flow, key, svc)?;
    // Best effort: without the entry the next flow just picks again.
    let _ = AFFINITY.insert(
        &akey,
        &AffinityValue {
            backend_id: id,
            _pad: 0,
            last_used_ns: now,
        },
        0,
    );
    Ok(id)
}

/// Whether the frontend's slots hold terminating endpoints (it has no ready one;
/// all slots are then alike, so the first tells).
#[inline(always)]
fn on_terminating_fallback(key: &ServiceKey) -> bool {
    let first = ServiceKey { slot: 1, ..*key };
    // SAFETY: map lookups return pointers valid for this run.
    unsafe { SERVICES.get(&first) }
        .and_then(|slot| unsafe { BACKENDS.get(&slot.backend_id) })
        .is_some_and(|b| b.state == BACKEND_TERMINATING)
}

/// Maglev when the frontend asks for it (a flow's backend then depends on its
/// tuple alone, so it survives backend changes that do not touch it), else a
/// uniformly random slot.
#[inline(always)]
fn pick<F: Family>(flow: &Flow<F>, key: &ServiceKey, svc: &ServiceValue) -> Result<u32, Reason> {
    if svc.flags & SVC_F_MAGLEV != 0 {
        // SAFETY: map lookups return pointers valid for this run.
        if let Some(table) = unsafe { MAGLEV.get(&svc.rev_nat_id) } {
            let i = (flow_hash(flow) % MAGLEV_TABLE_SIZE as u64) as usize;
            // The verifier does not bound `%`, and LLVM, knowing the bound, would
            // drop the check that `get` makes: read the index back through memory
            // so the comparison stays for the verifier to see.
            // SAFETY: reading a live local.
            let i = unsafe { core::ptr::read_volatile(&i) };
            if let Some(&id) = table.0.get(i) {
                return Ok(id);
            }
        }
    }
    random_slot(key, svc.count)
}

/// A hash of the flow's tuple that every node computes alike (the skb's own hash
/// is seeded per boot), finished with murmur3's 64-bit mixer.
#[inline(always)]
fn flow_hash<F: Family>(flow: &Flow<F>) -> u64 {
    let mut h = (u64::from(F::fold(&flow.saddr)) << 32) | u64::from(F::fold(&flow.daddr));
    h ^= (u64::from(flow.sport) << 24) | (u64::from(flow.dport) << 8) | u64::from(flow.proto);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A backend id from a random slot of `key`'s frontend of `count` slots.
#[inline(always)]
pub fn random_slot(key: &ServiceKey, count: u16) -> Result<u32, Reason> {
    // Callers never pass 0; said here so that no division-by-zero panic path
    // is left for the verifier to refuse.
    let Some(slot) = unsafe { bpf_get_prandom_u32() }.checked_rem(u32::from(count)) else {
        return Err(Reason::BackendMissing);
    };
    let slot = slot as u16 + 1;
    let slot_key = ServiceKey { slot, ..*key };
    // SAFETY: map lookups return pointers valid for this run.
    unsafe { SERVICES.get(&slot_key) }
        .map(|v| v.backend_id)
        .ok_or(Reason::BackendMissing)
}
