//! Labels as selectors read them: a `BTreeMap` (the API's type, kept for
//! Namespaces and whatever else the model holds few of) or [`Labels`], the
//! compact form the model keeps for each of its many Pods.

use std::collections::BTreeMap;

/// Something that has labels: what a selector asks of it.
pub trait LabelSet {
    /// The value of label `key`.
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelSet for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// Labels in one boxed slice of pairs, sorted by key. A `BTreeMap` allocates a
/// 544-byte node for its first entry: 5 MiB at 10,000 Pods of one or two
/// labels, and again in each copy (the policy compiler keeps one per pod).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }
}

impl LabelSet for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        let at = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&self.0[at].1)
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        // In key order already.
        Self(map.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compact_form_answers_as_the_map_does() {
        let map: BTreeMap<String, String> = [("b", "2"), ("a", "1"), ("c", "")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let labels = Labels::from(map.clone());
        for key in ["a", "b", "c", "d", ""] {
            assert_eq!(labels.label(key), map.label(key), "{key}");
        }
        assert_eq!(labels.iter().count(), 3);
    }
}
