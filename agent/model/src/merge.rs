//! One walk of two maps in key order: the keys of either, each with what
//! each map holds for it. What a diff of two states and a union of their
//! keys are both made of.

use std::{cmp::Ordering, collections::BTreeMap, iter::Peekable};

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
}
