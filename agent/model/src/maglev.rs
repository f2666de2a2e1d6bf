//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, section 3.4).
//!
//! Every node builds the same lookup table from the same backend set, so a flow
//! hashed on any node reaches the same backend, and a backend set change moves only
//! about 1/N of the flows. That only holds if every agent computes the same table:
//! the hashes below are fixed (no per-process random state) and keyed by the
//! backend's address, never by node-local ids. Changing them is a compatibility
//! break between agent versions during a rolling upgrade.

/// Cilium's default table size: a prime well above 100 x the backends of a large
/// service, which keeps each backend's share within about 1% of M/N.
/// The size the datapath indexes with (its tables are fixed-size map values).
pub const DEFAULT_TABLE_SIZE: usize = weir_common::MAGLEV_TABLE_SIZE;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// The permutation `offset + j * skip (mod M)` visits every slot only when the
    /// skip is coprime with M, which a prime M guarantees for every skip in 1..M.
    #[error("maglev table size {0} is not a prime")]
    NotPrime(usize),
}

pub fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2usize;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// The Maglev lookup table of size `m` (a prime) for `backends`, given as (backend
/// id, stable key) pairs; the key (e.g. `10.0.0.1:8080/TCP`) drives the hashes, the
/// id is what the table holds. The result does not depend on the order of
/// `backends`; duplicate keys count once. No backends: an empty table.
pub fn maglev_table(backends: &[(u32, String)], m: usize) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(m) {
        return Err(MaglevError::NotPrime(m));
    }
    let mut sorted: Vec<&(u32, String)> = backends.iter().collect();
    sorted.sort_by(|a, b| a.1.cmp(&b.1));
    sorted.dedup_by(|a, b| a.1 == b.1);
    if sorted.is_empty() {
        return Ok(Vec::new());
    }
    let m64 = m as u64;
    // (offset, skip, next) per backend: its preference list is
    // offset, offset + skip, offset + 2 skip, ... (mod M).
    let mut perms: Vec<(u64, u64, u64)> = sorted
        .iter()
        .map(|(_, key)| {
            let offset = hash(key.as_bytes(), OFFSET_SEED) % m64;
            let skip = hash(key.as_bytes(), SKIP_SEED) % (m64 - 1) + 1;
            (offset, skip, 0)
        })
        .collect();
    let mut table: Vec<Option<u32>> = vec![None; m];
    let mut filled = 0;
    // Round robin: each backend in turn takes its next preferred free slot, so every
    // backend ends with floor(M/N) or ceil(M/N) entries.
    'fill: loop {
        for (i, perm) in perms.iter_mut().enumerate() {
            let (offset, skip, next) = perm;
            let mut slot = ((*offset + *next * *skip) % m64) as usize;
            while table[slot].is_some() {
                *next += 1;
                slot = ((*offset + *next * *skip) % m64) as usize;
            }
            table[slot] = Some(sorted[i].0);
            *next += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    Ok(table.into_iter().flatten().collect())
}

const OFFSET_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
const SKIP_SEED: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// FNV-1a over the bytes, started from a seed-dependent basis, then MurmurHash3's
/// 64-bit finalizer to spread FNV's weak low bits. Two seeds give the two
/// independent hashes Maglev needs.
fn hash(bytes: &[u8], seed: u64) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    fmix64(h)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn backends(n: u32) -> Vec<(u32, String)> {
        (1..=n)
            .map(|i| (i, format!("10.0.{}.{}:8080/TCP", i / 256, i % 256)))
            .collect()
    }

    fn shares(table: &[u32]) -> BTreeMap<u32, usize> {
        let mut counts = BTreeMap::new();
        for &id in table {
            *counts.entry(id).or_default() += 1;
        }
        counts
    }

    #[test]
    fn every_entry_is_filled_and_shares_are_even() {
        for n in [1, 2, 3, 7, 10, 100] {
            let table = maglev_table(&backends(n), DEFAULT_TABLE_SIZE).expect("prime size");
            assert_eq!(table.len(), DEFAULT_TABLE_SIZE);
            let counts = shares(&table);
            assert_eq!(counts.len(), n as usize, "every backend has entries");
            let fair = DEFAULT_TABLE_SIZE / n as usize;
            for (&id, &count) in &counts {
                assert!((1..=n).contains(&id));
                // Round-robin filling: floor(M/N) or ceil(M/N), far inside "a few %".
                assert!(
                    count == fair || count == fair + 1,
                    "n={n} backend {id}: {count} vs {fair}"
                );
            }
        }
    }

    #[test]
    fn removing_one_backend_moves_about_one_nth_of_the_entries() {
        let n = 10;
        let all = backends(n);
        let before = maglev_table(&all, DEFAULT_TABLE_SIZE).expect("prime size");
        let removed = 4;
        let rest: Vec<_> = all.iter().filter(|(id, _)| *id != removed).cloned().collect();
        let after = maglev_table(&rest, DEFAULT_TABLE_SIZE).expect("prime size");
        let changed = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let owned_by_removed = before.iter().filter(|&&id| id == removed).count();
        // The removed backend's entries must move; others should mostly stay.
        let extra = changed - owned_by_removed;
        assert!(
            (extra as f64) < 0.06 * DEFAULT_TABLE_SIZE as f64,
            "{changed} entries moved, {owned_by_removed} of them the removed backend's"
        );
        assert!(after.iter().all(|&id| id != removed));
    }

    #[test]
    fn deterministic_and_independent_of_input_order() {
        let mut list = backends(5);
        let a = maglev_table(&list, 251).expect("prime size");
        list.reverse();
        let b = maglev_table(&list, 251).expect("prime size");
        assert_eq!(a, b);
        // Pinned values: the hash is part of the cross-node contract, a change here
        // means agents of two versions disagree on the table.
        assert_eq!(&a[..8], &PINNED_PREFIX);
    }

    const PINNED_PREFIX: [u32; 8] = [2, 5, 5, 4, 5, 4, 5, 1];

    #[test]
    fn rejects_non_prime_sizes_and_handles_no_backends() {
        assert_eq!(maglev_table(&backends(3), 100), Err(MaglevError::NotPrime(100)));
        assert_eq!(maglev_table(&backends(3), 1), Err(MaglevError::NotPrime(1)));
        assert_eq!(maglev_table(&[], 7), Ok(Vec::new()));
        assert!(is_prime(65537) && !is_prime(65535));
    }
}
