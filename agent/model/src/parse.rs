//! Kubernetes manifests in, [`Object`]s out.
//!
//! Accepts what an operator has at hand: multi-document YAML, `kubectl get -o yaml`
//! output (`kind: List`), raw API lists (`kind: ServiceList`, whose items carry no
//! kind), and JSON (one object, a stream of objects, or an array). A document that
//! cannot be used becomes a [`Problem`]; the others are still returned.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{Endpoints, Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{
    object::Object,
    problem::{Problem, ProblemReason},
};

/// Everything [`parse_documents_detailed`] found in one file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    pub objects: Vec<Object>,
    pub problems: Vec<Problem>,
    /// Objects of kinds the model does not keep, counted by `apiVersion/kind`.
    /// Not an error: a manifest directory holds Deployments, ConfigMaps, ...
    pub skipped: BTreeMap<String, usize>,
}

/// Parses a file of Kubernetes objects. `origin` names the file in problems
/// (`origin:LINE`). See [`parse_documents_detailed`] for the count of skipped kinds.
pub fn parse_documents(text: &str, origin: &str) -> (Vec<Object>, Vec<Problem>) {
    let parsed = parse_documents_detailed(text, origin);
    (parsed.objects, parsed.problems)
}

/// Like [`parse_documents`], also counting the objects of kinds the model ignores.
pub fn parse_documents_detailed(text: &str, origin: &str) -> Parsed {
    let mut parsed = Parsed::default();
    for doc in split_documents(text) {
        let at = format!("{origin}:{}", doc.line);
        match doc.value {
            Ok(values) => {
                for value in values {
                    parsed.add_document(value, &at);
                }
            }
            Err(message) => parsed.problems.push(Problem {
                origin: at,
                object: None,
                reason: ProblemReason::Syntax(message),
            }),
        }
    }
    parsed
}

struct Document {
    /// 1-based line where the document starts.
    line: usize,
    /// The document's values: one for YAML; several for a JSON stream or array.
    value: Result<Vec<Value>, String>,
}

/// Splits on `---` lines ourselves rather than letting the YAML parser iterate: a
/// syntax error stops libyaml's stream for good, and one bad document must not hide
/// the rest. A `---` at column 0 always starts a document in YAML (it cannot occur
/// inside a scalar), so splitting on lines is exact.
fn split_documents(text: &str) -> Vec<Document> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let offset = text.len() - trimmed.len();
        let line = text[..offset].matches('\n').count() + 1;
        return vec![Document {
            line,
            value: parse_json(trimmed),
        }];
    }
    let mut docs = Vec::new();
    let mut start_line = 1;
    let mut current = String::new();
    for (index, line) in text.lines().enumerate() {
        let separator = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if separator || line == "..." {
            docs.push(Document {
                line: start_line,
                value: parse_yaml(&current),
            });
            current.clear();
            start_line = index + 2;
            // `--- {inline: document}` carries content after the marker.
            if let Some(rest) = line.strip_prefix("---").filter(|r| !r.trim().starts_with('#')) {
                if !rest.trim().is_empty() {
                    current.push_str(rest);
                    current.push('\n');
                    start_line = index + 1;
                }
            }
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs.push(Document {
        line: start_line,
        value: parse_yaml(&current),
    });
    docs
}

fn parse_yaml(text: &str) -> Result<Vec<Value>, String> {
    match serde_yaml::from_str::<Value>(text) {
        Ok(Value::Null) => Ok(Vec::new()),
        Ok(value) => Ok(vec![value]),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_json(text: &str) -> Result<Vec<Value>, String> {
    let mut values = Vec::new();
    for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        match value.map_err(|e| e.to_string())? {
            Value::Array(items) => values.extend(items),
            value => values.push(value),
        }
    }
    Ok(values)
}

impl Parsed {
    fn add_document(&mut self, value: Value, origin: &str) {
        match decode(value) {
            Decoded::Object(object) => self.objects.push(object),
            Decoded::Skipped(kind) => *self.skipped.entry(kind).or_default() += 1,
            Decoded::Invalid { object, reason } => self.problems.push(Problem {
                origin: origin.to_owned(),
                object,
                reason,
            }),
            Decoded::List(items) => {
                for (index, item) in items.into_iter().enumerate() {
                    match item {
                        Decoded::Object(object) => self.objects.push(object),
                        Decoded::Skipped(kind) => *self.skipped.entry(kind).or_default() += 1,
                        Decoded::Invalid { object, reason } => self.problems.push(Problem {
                            origin: origin.to_owned(),
                            object,
                            reason: ProblemReason::ListItem {
                                index,
                                reason: Box::new(reason),
                            },
                        }),
                        // Lists do not nest in the API.
                        Decoded::List(_) => self.problems.push(Problem {
                            origin: origin.to_owned(),
                            object: None,
                            reason: ProblemReason::ListItem {
                                index,
                                reason: Box::new(ProblemReason::NoKind),
                            },
                        }),
                    }
                }
            }
        }
    }
}

enum Decoded {
    Object(Object),
    Skipped(String),
    Invalid {
        object: Option<String>,
        reason: ProblemReason,
    },
    List(Vec<Decoded>),
}

fn decode(value: Value) -> Decoded {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if api_version.is_empty() || kind.is_empty() {
        return Decoded::Invalid {
            object: describe(&value, &kind),
            reason: ProblemReason::NoKind,
        };
    }
    if let Some(item_kind) = kind.strip_suffix("List") {
        if let Some(Value::Array(items)) = value.get("items") {
            return Decoded::List(
                items
                    .iter()
                    .cloned()
                    .map(|item| decode(with_kind(item, &api_version, item_kind)))
                    .collect(),
            );
        }
    }
    let object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => typed::<Service>(value, &kind),
        ("discovery.k8s.io/v1", "EndpointSlice") => typed::<EndpointSlice>(value, &kind),
        ("v1", "Endpoints") => typed::<Endpoints>(value, &kind),
        ("v1", "Pod") => typed::<Pod>(value, &kind),
        ("v1", "Namespace") => typed::<Namespace>(value, &kind),
        ("v1", "Node") => typed::<Node>(value, &kind),
        ("networking.k8s.io/v1", "NetworkPolicy") => typed::<NetworkPolicy>(value, &kind),
        _ => return Decoded::Skipped(format!("{api_version}/{kind}")),
    };
    match object {
        Ok(object) => Decoded::Object(object),
        Err((object, reason)) => Decoded::Invalid { object, reason },
    }
}

/// Items of a typed API list (`ServiceList`) carry no apiVersion/kind of their own:
/// they take the list's. Items of `kind: List` (kubectl's) carry theirs.
fn with_kind(mut item: Value, api_version: &str, kind: &str) -> Value {
    if let Value::Object(map) = &mut item {
        if !kind.is_empty() {
            map.entry("apiVersion")
                .or_insert_with(|| Value::String(api_version.to_owned()));
            map.entry("kind")
                .or_insert_with(|| Value::String(kind.to_owned()));
        }
    }
    item
}

fn typed<T>(value: Value, kind: &str) -> Result<Object, (Option<String>, ProblemReason)>
where
    T: DeserializeOwned + Into<Object>,
{
    let object = describe(&value, kind);
    let typed = serde_json::from_value::<T>(value).map_err(|e| {
        (
            object,
            ProblemReason::Schema {
                kind: kind.to_owned(),
                message: e.to_string(),
            },
        )
    })?;
    let mut object: Object = typed.into();
    object.normalize();
    Ok(object)
}

/// `Kind ns/name` from whatever metadata the document has, for problem reports.
fn describe(value: &Value, kind: &str) -> Option<String> {
    let meta = value.get("metadata")?;
    let name = meta.get("name").and_then(Value::as_str)?;
    let kind = if kind.is_empty() { "object" } else { kind };
    Some(match meta.get("namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() => format!("{kind} {ns}/{name}"),
        _ => format!("{kind} {name}"),
    })
}
