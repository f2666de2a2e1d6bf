//! Label selectors (`metav1.LabelSelector`): which labels a policy's
//! `podSelector` or `namespaceSelector` picks, and the plain `matchLabels` form a
//! Service's selector shares with it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::labels::LabelSet;

/// Whether `labels` satisfy `selector` (an empty selector matches everything).
/// An operator other than the four defined makes the selector match nothing.
pub fn selects(selector: &LabelSelector, labels: &(impl LabelSet + ?Sized)) -> bool {
    let exact = matches_labels(selector.match_labels.iter().flatten(), Some(labels));
    exact
        && selector.match_expressions.iter().flatten().all(|e| {
            let value = labels.label(&e.key);
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
                "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// Whether `labels` carry every pair of `required` (an empty map matches
/// everything): `matchLabels`, and a Service's `selector`.
pub(crate) fn matches_labels<K: AsRef<str>, V: AsRef<str>, L: LabelSet + ?Sized>(
    required: impl IntoIterator<Item = (K, V)>,
    labels: Option<&L>,
) -> bool {
    required
        .into_iter()
        .all(|(k, v)| labels.and_then(|l| l.label(k.as_ref())) == Some(v.as_ref()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    #[test]
    fn match_expressions() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let expr = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "pod".into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
            }]),
            ..Default::default()
        };
        let a = labels(&[("pod", "a")]);
        let none = labels(&[]);
        assert!(selects(&expr("In", &["a", "b"]), &a) && !selects(&expr("In", &["b"]), &a));
        assert!(selects(&expr("NotIn", &["b"]), &a) && selects(&expr("NotIn", &["b"]), &none));
        assert!(selects(&expr("Exists", &[]), &a) && !selects(&expr("Exists", &[]), &none));
        assert!(selects(&expr("DoesNotExist", &[]), &none) && !selects(&expr("DoesNotExist", &[]), &a));
        assert!(
            !selects(&expr("Bogus", &[]), &a),
            "an unknown operator selects nothing"
        );
        assert!(selects(&LabelSelector::default(), &none), "empty selects all");
    }
}
