//! Walks of maps beside sorted keys: the keys of two maps in order, each
//! with what each map holds for it (what a diff of two states and a union of
//! their keys are both made of); sorted keys' values; and many additions
//! merged into a map by one walk, its tree rebuilt bottom-up.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, btree_map::Entry},
    iter::Peekable,
};

/// Every key of `a` or `b`, in order, once, with its entry in each.
pub fn merge_join<'m, K: Ord, A, B>(
    a: &'m BTreeMap<K, A>,
    b: &'m BTreeMap<K, B>,
) -> impl Iterator<Item = (&'m K, Option<&'m A>, Option<&'m B>)> {
    let (mut a, mut b): (Peekable<_>, Peekable<_>) = (a.iter().peekable(), b.iter().peekable());
    std::iter::from_fn(move || {
        let order = match (a.peek(), b.peek()) {
            (None, None) => return None,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        Some(match order {
            Ordering::Less => a.next().map(|(k, v)| (k, Some(v), None))?,
            Ordering::Greater => b.next().map(|(k, v)| (k, None, Some(v)))?,
            Ordering::Equal => {
                let (k, va) = a.next()?;
                let (_, vb) = b.next()?;
                (k, Some(va), Some(vb))
            }
        })
    })
}

/// Each of `keys` (in order, each once) with `map`'s value for it. Many keys
/// are looked up by one walk of the map beside them (at 100,000 Services a
/// lookup each in maps of a million entries cost more than the walk), a few
/// by a lookup each.
pub fn values_of<'m, K: Ord, V>(
    keys: &'m [K],
    map: &'m BTreeMap<K, V>,
) -> impl Iterator<Item = (&'m K, Option<&'m V>)> {
    debug_assert!(keys.is_sorted_by(|a, b| a < b), "keys in order, each once");
    let walk = keys.len() >= map.len() / 16;
    let mut entries = map.iter().peekable();
    keys.iter().map(move |k| {
        if !walk {
            return (k, map.get(k));
        }
        while entries.next_if(|(held, _)| *held < k).is_some() {}
        (k, entries.peek().filter(|(held, _)| *held == k).map(|(_, v)| *v))
    })
}

/// Adds each value of `adds` to the list `map` holds under its key (kept
/// sorted, each value once), `shared` seeing each list an add left with more
/// than one value. As many adds as the map holds entries or more are merged
/// in by one walk beside it, the tree rebuilt bottom-up: put in one by one at
/// their places, each would search the tree from its root, tens of
/// comparisons of strings in a tree of 200,000 (a cluster's manifests read
/// first). Fewer go in one by one.
pub fn add_to_lists<K: Ord, V: Ord>(
    map: &mut BTreeMap<K, Vec<V>>,
    mut adds: Vec<(K, V)>,
    mut shared: impl FnMut(&K, &[V]),
) {
    fn add<V: Ord>(list: &mut Vec<V>, value: V) -> bool {
        let Err(at) = list.binary_search(&value) else {
            return false;
        };
        list.insert(at, value);
        list.len() > 1
    }
    if adds.len() < map.len() {
        for (key, value) in adds {
            match map.entry(key) {
                Entry::Occupied(mut held) => {
                    if add(held.get_mut(), value) {
                        shared(held.key(), held.get());
                    }
                }
                Entry::Vacant(slot) => {
                    slot.insert(vec![value]);
                }
            }
        }
        return;
    }
    // In key order as a rule: then sorting only checks.
    adds.sort_by(|a, b| a.0.cmp(&b.0));
    let mut adds = adds.into_iter().peekable();
    let mut all = Vec::with_capacity(map.len() + adds.len());
    let mut held = std::mem::take(map).into_iter().peekable();
    loop {
        // The next key of either, a new one as a list of its first add.
        let new = match (held.peek(), adds.peek()) {
            (Some((key, _)), Some((new, _))) => new < key,
            (held, _) => held.is_none(),
        };
        let next = if new {
            adds.next().map(|(key, value)| (key, vec![value]))
        } else {
            held.next()
        };
        let Some((key, mut list)) = next else { break };
        let mut grew = false;
        while let Some((_, value)) = adds.next_if(|(new, _)| *new == key) {
            grew |= add(&mut list, value);
        }
        if grew {
            shared(&key, &list);
        }
        all.push((key, list));
    }
    *map = all.into_iter().collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_once_in_order_with_both_sides() {
        let a: BTreeMap<u32, char> = [(1, 'a'), (3, 'c'), (5, 'e')].into();
        let b: BTreeMap<u32, u8> = [(2, 2), (3, 3), (6, 6)].into();
        let joined: Vec<_> = merge_join(&a, &b)
            .map(|(k, x, y)| (*k, x.copied(), y.copied()))
            .collect();
        assert_eq!(
            joined,
            [
                (1, Some('a'), None),
                (2, None, Some(2)),
                (3, Some('c'), Some(3)),
                (5, Some('e'), None),
                (6, None, Some(6)),
            ]
        );
        assert_eq!(
            merge_join(&BTreeMap::<u32, ()>::new(), &BTreeMap::<u32, ()>::new()).count(),
            0
        );
    }

    #[test]
    fn values_of_sorted_keys_are_the_maps_by_walk_and_by_lookup() {
        let map: BTreeMap<u32, u32> = (0..1_000).map(|k| (k * 3, k)).collect();
        let many: Vec<u32> = (0..4_000).collect();
        let few: Vec<u32> = vec![0, 2, 3, 2_997, 5_000];
        for keys in [&many, &few] {
            let got: Vec<(u32, Option<u32>)> = values_of(keys, &map).map(|(k, v)| (*k, v.copied())).collect();
            let want: Vec<(u32, Option<u32>)> = keys.iter().map(|k| (*k, map.get(k).copied())).collect();
            assert_eq!(got, want);
        }
        assert!(
            many.len() >= map.len() / 16 && few.len() < map.len() / 16,
            "both ways are tried"
        );
    }

    /// Adds merged in by a walk (many) or one by one (few) leave what adding
    /// one by one leaves, and say the same shared lists.
    #[test]
    fn adds_to_lists_are_adds_one_by_one() {
        let mut rng = crate::testing::Rng(5);
        let mut ways = [0, 0];
        for _ in 0..300 {
            let mut map: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
            for _ in 0..rng.below(12) {
                let list: std::collections::BTreeSet<u8> =
                    (0..1 + rng.below(2)).map(|_| rng.below(4) as u8).collect();
                map.insert(rng.below(16) as u8, list.into_iter().collect());
            }
            let adds: Vec<(u8, u8)> = (0..rng.below(16))
                .map(|_| (rng.below(16) as u8, rng.below(4) as u8))
                .collect();
            let mut want = map.clone();
            let mut want_shared = std::collections::BTreeSet::new();
            for (key, value) in adds.clone() {
                let list = want.entry(key).or_default();
                if let Err(at) = list.binary_search(&value) {
                    list.insert(at, value);
                    if list.len() > 1 {
                        want_shared.insert(key);
                    }
                }
            }
            ways[usize::from(adds.len() < map.len())] += 1;
            let mut shared = std::collections::BTreeSet::new();
            add_to_lists(&mut map, adds, |key, list| {
                assert!(list.len() > 1);
                shared.insert(*key);
            });
            assert_eq!(map, want);
            assert_eq!(shared, want_shared);
        }
        assert!(ways.iter().all(|n| *n > 50), "both ways are tried: {ways:?}");
    }
}
