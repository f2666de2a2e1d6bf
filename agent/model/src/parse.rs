//! Kubernetes manifests in, [`Object`]s out.
//!
//! Accepts what an operator has at hand: multi-document YAML, `kubectl get -o yaml`
//! output (`kind: List`), raw API lists (`kind: ServiceList`, whose items carry no
//! kind), and JSON (one object, a stream of objects, or an array). A document that
//! cannot be used becomes a [`Problem`]; the others are still returned.

use std::{borrow::Cow, collections::BTreeMap};

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

mod simple;

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
///
/// A large file's documents are parsed and decoded on several threads (each
/// with [`PARSE_STACK`]), their results kept in file order.
pub fn parse_documents_detailed(text: &str, origin: &str) -> Parsed {
    parse_documents_on(text, origin, |part| part())
}

/// How a thread parsing part of a large file runs its part: `part()`, inside
/// whatever the caller sets up for such work (the agent switches its
/// allocator's thread cache on around it).
pub type PartRunner = fn(part: &mut dyn FnMut());

/// [`parse_documents_detailed`], each of a large file's parsing threads
/// running its part through `runner`.
pub fn parse_documents_on(text: &str, origin: &str, runner: PartRunner) -> Parsed {
    let docs = split_documents(text);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    if text.len() < PARALLEL_ABOVE || docs.len() < 2 || threads < 2 {
        return parse_all(docs, origin);
    }
    let per = docs.len().div_ceil(threads);
    let mut chunks: Vec<Vec<RawDocument>> = Vec::new();
    let mut docs = docs.into_iter().peekable();
    while docs.peek().is_some() {
        chunks.push(docs.by_ref().take(per).collect());
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                std::thread::Builder::new()
                    .stack_size(PARSE_STACK)
                    .spawn_scoped(scope, move || {
                        let (mut chunk, mut parsed) = (Some(chunk), Parsed::default());
                        runner(&mut || {
                            if let Some(chunk) = chunk.take() {
                                parsed = parse_all(chunk, origin);
                            }
                        });
                        // A runner that did not run its part loses nothing.
                        if let Some(chunk) = chunk.take() {
                            parsed = parse_all(chunk, origin);
                        }
                        parsed
                    })
            })
            .collect();
        let mut parsed = Parsed::default();
        for handle in handles {
            // A thread that cannot be spawned or that panicked: said, not lost.
            let part = handle
                .map_err(|e| e.to_string())
                .and_then(|h| h.join().map_err(|_| "panicked".to_owned()));
            match part {
                Ok(part) => parsed.merge(part),
                Err(e) => parsed.problems.push(Problem {
                    origin: origin.to_owned(),
                    object: None,
                    reason: ProblemReason::Unusable(format!("a parsing thread failed: {e}")),
                }),
            }
        }
        parsed
    })
}

/// Files larger than this are parsed on several threads.
const PARALLEL_ABOVE: usize = 1 << 20;

/// Parses and decodes documents in order.
fn parse_all(docs: Vec<RawDocument>, origin: &str) -> Parsed {
    let mut parsed = Parsed::default();
    for doc in docs {
        let at = format!("{origin}:{}", doc.line);
        let values = match doc.text {
            RawText::Json(values) => Ok(values),
            RawText::Yaml(text) => parse_yaml(&text),
        };
        match values {
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

/// A document as split from its file, before its YAML is parsed.
struct RawDocument<'t> {
    /// 1-based line where the document starts.
    line: usize,
    text: RawText<'t>,
}

enum RawText<'t> {
    /// The whole file was JSON: its values (one, a stream, an array's items).
    Json(Vec<Value>),
    /// Its lines, each ending in `\n`: as they are in the file, unless the
    /// file ends some in `\r\n` or its last without one.
    Yaml(Cow<'t, str>),
}

/// Splits a file into documents: the YAML documents of the stream, or the whole
/// text when it is JSON (one object, a stream of objects, or an array).
///
/// JSON is tried first when the text starts like it, and only taken when the
/// whole text is JSON: YAML whose first document is in flow style (JSON objects
/// separated by `---` lines, as generators and `kubectl get -o json` pipelines
/// write) is YAML, not broken JSON.
///
/// YAML is split on `---` lines here rather than by the parser: a syntax error
/// ends a parser's stream for good, and one bad document must not hide the
/// rest. A `---` at column 0 always starts a document in YAML (it cannot occur
/// inside a scalar), so splitting on lines is exact.
fn split_documents(text: &str) -> Vec<RawDocument<'_>> {
    let trimmed = text.trim_start();
    if (trimmed.starts_with('{') || trimmed.starts_with('['))
        && let Ok(values) = parse_json(trimmed)
    {
        let offset = text.len() - trimmed.len();
        let line = text[..offset].matches('\n').count() + 1;
        return vec![RawDocument {
            line,
            text: RawText::Json(values),
        }];
    }
    let mut docs = Vec::new();
    let mut start_line = 1;
    // Where the current document's text starts, and where the line at hand.
    let (mut start, mut at) = (0, 0);
    for (index, raw) in text.split_inclusive('\n').enumerate() {
        let line = raw
            .strip_suffix('\n')
            .map_or(raw, |l| l.strip_suffix('\r').unwrap_or(l));
        let separator = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if separator || line == "..." {
            docs.push(RawDocument {
                line: start_line,
                text: RawText::Yaml(lines(&text[start..at])),
            });
            start_line = index + 2;
            start = at + raw.len();
            // `--- {inline: document}` carries content after the marker.
            if let Some(rest) = line.strip_prefix("---")
                && !rest.trim().is_empty()
                && !rest.trim().starts_with('#')
            {
                start = at + 3;
                start_line = index + 1;
            }
        }
        at += raw.len();
    }
    docs.push(RawDocument {
        line: start_line,
        text: RawText::Yaml(lines(&text[start..])),
    });
    docs
}

/// `text`'s lines, each ending in `\n`: `text` itself as a rule (no copy
/// of a 100 MB file, line by line, before its parsing threads start).
fn lines(text: &str) -> Cow<'_, str> {
    if !text.contains('\r') && (text.is_empty() || text.ends_with('\n')) {
        return Cow::Borrowed(text);
    }
    let mut owned = String::with_capacity(text.len() + 1);
    for line in text.lines() {
        owned.push_str(line);
        owned.push('\n');
    }
    Cow::Owned(owned)
}

/// How deep a document may nest (blocks and flows alike). Kubernetes objects
/// stay far below it; JSON gets the same bound (serde_json's recursion limit).
const MAX_DEPTH: usize = 128;

/// The stack a thread parsing untrusted files should have: parsing recurses
/// once per nesting level, up to [`MAX_DEPTH`] (about 3 MiB in a debug build
/// for nested flow mappings, under 1 MiB optimised; Rust threads get 2 MiB).
pub const PARSE_STACK: usize = 16 << 20;

/// Parses one YAML document in time linear in its length: depth and every count
/// the parser keeps (events, nodes, scalar bytes) are bounded by the document's
/// own size, and alias expansion by the parser's budget, so no input (100,000
/// nested `[`, an alias bomb) can hold the caller for long.
///
/// Most documents are of the simple kind [`simple`] reads, several times
/// faster; the rest go to the general parser.
fn parse_yaml(text: &str) -> Result<Vec<Value>, String> {
    match simple::parse(text) {
        Some(value) => Ok(value.into_iter().collect()),
        None => parse_yaml_generally(text),
    }
}

/// [`parse_yaml`] by the general parser alone.
fn parse_yaml_generally(text: &str) -> Result<Vec<Value>, String> {
    let linear = text.len().saturating_mul(2).saturating_add(1024);
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
            max_events: linear,
            max_nodes: linear,
            max_total_scalar_bytes: linear,
            max_documents: 1,
        },
        // One line of message: problems are logged, not shown beside the text.
        with_snippet: false,
        // YAML 1.2's booleans only: `y`, `n`, `on`, `off`, `yes` and `no` are
        // strings (namespace `y`, label `on`), as YAML 1.2 emitters write them.
        strict_booleans: true,
        // Comments are skipped, not kept: kept, more than 96 of them where
        // the parser looks ahead (a commented-out block after `key:`) failed
        // the document.
        emit_comments: false,
    };
    match serde_saphyr::from_str_with_options::<Value>(text, options) {
        Ok(Value::Null) => Ok(Vec::new()),
        Ok(value) => Ok(vec![value]),
        Err(e) => Err(e.to_string()),
    }
}

/// Reads `text` as one YAML document both ways, by the reader of simple
/// documents and by the general parser: `Ok(true)` when the simple reader
/// took it and both read the same, `Ok(false)` when it passed it on, `Err`
/// naming the difference otherwise. For the tests and the fuzz target that
/// hold the two to the same values.
#[doc(hidden)]
pub fn check_simple_yaml(text: &str) -> Result<bool, String> {
    let Some(simple) = simple::parse(text) else {
        return Ok(false);
    };
    let simple: Vec<Value> = simple.into_iter().collect();
    match parse_yaml_generally(text) {
        Ok(general) if general == simple => Ok(true),
        Ok(general) => Err(format!("simple read {simple:?}, general {general:?}")),
        Err(e) => Err(format!("simple read {simple:?}, general failed: {e}")),
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
    /// Appends what a later part of the same file gave.
    fn merge(&mut self, other: Parsed) {
        self.objects.extend(other.objects);
        self.problems.extend(other.problems);
        for (kind, n) in other.skipped {
            *self.skipped.entry(kind).or_default() += n;
        }
    }

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
    if let Some(item_kind) = kind.strip_suffix("List")
        && let Some(Value::Array(items)) = value.get("items")
    {
        return Decoded::List(
            items
                .iter()
                .cloned()
                .map(|item| decode(with_kind(item, &api_version, item_kind)))
                .collect(),
        );
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
    if let Value::Object(map) = &mut item
        && !kind.is_empty()
    {
        map.entry("apiVersion")
            .or_insert_with(|| Value::String(api_version.to_owned()));
        map.entry("kind")
            .or_insert_with(|| Value::String(kind.to_owned()));
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::object::Kind;

    fn keys(objects: &[Object]) -> Vec<String> {
        objects.iter().map(|o| o.key().to_string()).collect()
    }

    #[test]
    fn multi_document_yaml_with_unknown_kinds_and_empty_documents() {
        let text = r#"
# a leading comment, then an empty document
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec: {}
---
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  clusterIP: 10.96.100.1
  ports:
  - port: 80
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
...
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
"#;
        let parsed = parse_documents_detailed(text, "web.yaml");
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(keys(&parsed.objects), ["Service shop/web", "Namespace shop"]);
        assert_eq!(
            parsed.skipped.into_iter().collect::<Vec<_>>(),
            [
                ("apps/v1/Deployment".to_owned(), 1),
                ("v1/ConfigMap".to_owned(), 1)
            ]
        );
    }

    #[test]
    fn a_bad_document_is_reported_and_the_others_still_parse() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.1}\n\
                    ---\nkey: [unclosed\n\
                    ---\napiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: x}\nspec: {ports: 80}\n\
                    ---\nmetadata: {name: c}\n\
                    ---\napiVersion: v1\nkind: Pod\nmetadata: {name: d}\n";
        let (objects, problems) = parse_documents(text, "mixed.yaml");
        // A Service without a namespace is in `default`.
        assert_eq!(keys(&objects), ["Service default/a", "Pod default/d"]);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert_eq!(problems[0].origin, "mixed.yaml:6");
        assert!(matches!(problems[0].reason, ProblemReason::Syntax(_)));
        assert_eq!(problems[1].origin, "mixed.yaml:8");
        assert_eq!(problems[1].object.as_deref(), Some("Service x/b"));
        assert!(matches!(&problems[1].reason, ProblemReason::Schema { kind, .. } if kind == "Service"));
        assert_eq!(problems[2].reason, ProblemReason::NoKind);
        assert!(
            problems[1]
                .to_string()
                .starts_with("mixed.yaml:8: Service x/b: does not match the Service schema")
        );
    }

    #[test]
    fn kubectl_lists_and_typed_api_lists() {
        let kubectl = r#"
apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a, namespace: default}
  spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: a-x, namespace: default, labels: {kubernetes.io/service-name: a}}
  addressType: IPv4
  endpoints: [{addresses: [10.0.0.1]}]
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: a}
- apiVersion: v1
  kind: Service
  metadata: {name: broken}
  spec: {ports: "no"}
kind: List
metadata:
  resourceVersion: ""
"#;
        let parsed = parse_documents_detailed(kubectl, "list.yaml");
        assert_eq!(
            keys(&parsed.objects),
            ["Service default/a", "EndpointSlice default/a-x"]
        );
        assert_eq!(parsed.skipped.get("apps/v1/Deployment"), Some(&1));
        assert_eq!(parsed.problems.len(), 1);
        assert!(matches!(
            parsed.problems[0].reason,
            ProblemReason::ListItem { index: 3, .. }
        ));

        // The API's own list format: items without apiVersion/kind.
        let typed = r#"
apiVersion: v1
kind: PodList
items:
- metadata: {name: p1, namespace: ns}
  spec: {containers: [{name: c}]}
- metadata: {name: p2, namespace: ns}
metadata: {resourceVersion: "12"}
"#;
        let (objects, problems) = parse_documents(typed, "pods.yaml");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(keys(&objects), ["Pod ns/p1", "Pod ns/p2"]);
        assert!(objects.iter().all(|o| o.kind() == Kind::Pod));
    }

    #[test]
    fn json_objects_streams_and_arrays() {
        let one = r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}"#;
        let (objects, problems) = parse_documents(one, "node.json");
        assert!(problems.is_empty());
        assert_eq!(keys(&objects), ["Node node-a"]);

        let stream = format!("\n\t{one}\n{one}\n[{one}, {one}]");
        assert_eq!(parse_documents(&stream, "nodes.json").0.len(), 4);

        let (objects, problems) = parse_documents("{\"apiVersion\": ", "bad.json");
        assert!(objects.is_empty());
        assert!(matches!(problems[0].reason, ProblemReason::Syntax(_)));
    }

    #[test]
    fn network_policies_and_endpoints_are_kept() {
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: v1
kind: Endpoints
metadata: {name: ext, namespace: shop}
subsets:
- addresses: [{ip: 192.168.1.1}]
  ports: [{port: 80}]
"#;
        let (objects, problems) = parse_documents(text, "p.yaml");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            keys(&objects),
            ["NetworkPolicy shop/deny-all", "Endpoints shop/ext"]
        );
    }

    #[test]
    fn yaml_1_2_scalars_stay_strings() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: y\n  labels: {a: n, b: on, c: off, d: yes, e: no, f: 'true'}\n";
        let (objects, problems) = parse_documents(text, "ns.yaml");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(keys(&objects), ["Namespace y"]);
    }

    #[test]
    fn long_comment_blocks_are_fine_in_every_document() {
        let comments = "  # a commented-out line\n".repeat(200);
        let block = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n{comments}  name: a\n");
        // Not of the simple kind (a tag), so read by the general parser.
        let general = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n{comments}  name: !!str b\n");
        let text = format!("{block}---\n{general}");
        let (objects, problems) = parse_documents(&text, "ns.yaml");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(keys(&objects), ["Namespace a", "Namespace b"]);
        assert_eq!(check_simple_yaml(&block), Ok(true));
    }

    /// The documents are the text's own slices, and what splitting line by
    /// line into new strings gave: the same text and starting lines, for
    /// every mix of line ends, markers and inline documents.
    #[test]
    fn documents_split_as_line_by_line_did() {
        fn by_lines(text: &str) -> Vec<(usize, String)> {
            let (mut docs, mut start_line, mut current) = (Vec::new(), 1, String::new());
            for (index, line) in text.lines().enumerate() {
                let separator = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
                if separator || line == "..." {
                    docs.push((start_line, std::mem::take(&mut current)));
                    start_line = index + 2;
                    if let Some(rest) = line.strip_prefix("---")
                        && !rest.trim().is_empty()
                        && !rest.trim().starts_with('#')
                    {
                        current.push_str(rest);
                        current.push('\n');
                        start_line = index + 1;
                    }
                } else {
                    current.push_str(line);
                    current.push('\n');
                }
            }
            docs.push((start_line, current));
            docs
        }
        let pieces = [
            "a: 1",
            "---",
            "--- {b: 2}",
            "--- # c",
            "---\tx: 3",
            "...",
            "",
            "  d: e",
            "x\ry",
            "----",
            "--- ",
        ];
        let ends = ["\n", "\r\n"];
        let mut rng = crate::testing::Rng(11);
        let mut borrowed = 0;
        for _ in 0..2_000 {
            let mut text = String::new();
            for _ in 0..rng.below(8) {
                text.push_str(pieces[rng.below(pieces.len())]);
                text.push_str(ends[usize::from(rng.below(6) == 0)]);
            }
            if rng.below(3) == 0 {
                text.push_str(pieces[rng.below(pieces.len())]);
            }
            let got: Vec<(usize, String)> = split_documents(&text)
                .into_iter()
                .map(|doc| match doc.text {
                    RawText::Yaml(yaml) => {
                        borrowed += usize::from(matches!(yaml, Cow::Borrowed(y) if !y.is_empty()));
                        (doc.line, yaml.into_owned())
                    }
                    RawText::Json(_) => (doc.line, "JSON".to_owned()),
                })
                .collect();
            if got.iter().all(|(_, t)| t != "JSON") {
                assert_eq!(got, by_lines(&text), "{text:?}");
            }
        }
        assert!(borrowed > 1_000, "documents are borrowed as a rule: {borrowed}");
    }

    #[test]
    fn empty_and_comment_only_files_are_fine() {
        for text in ["", "\n", "# nothing\n", "---\n---\n", "---"] {
            let parsed = parse_documents_detailed(text, "empty.yaml");
            assert_eq!(parsed, Parsed::default(), "{text:?}");
        }
    }

    #[test]
    fn json_objects_separated_by_yaml_markers_are_yaml() {
        let text = "{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"a\"}, \"spec\": {\"clusterIP\": \"10.96.0.1\"}}\n---\n{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"x\"}}\n";
        let (objects, problems) = parse_documents(text, "gen.yaml");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(keys(&objects), ["Service default/a", "Namespace x"]);
        // And with CRLF line ends, a BOM, and a block document after them.
        let crlf = format!(
            "\u{feff}{}---\r\napiVersion: v1\r\nkind: Node\r\nmetadata:\r\n  name: n\r\n",
            text.replace('\n', "\r\n")
        );
        let (objects, problems) = parse_documents(&crlf, "crlf.yaml");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(keys(&objects), ["Service default/a", "Namespace x", "Node n"]);
    }

    /// Runs `parse_documents` on its own thread and fails if it has not
    /// finished within `limit`: a stall detector (the inputs below took
    /// seconds to minutes with a parser without budgets), not a timing figure.
    fn parse_within(text: String, limit: std::time::Duration) -> (Vec<Object>, Vec<Problem>) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .stack_size(PARSE_STACK)
            .spawn(move || {
                let _ = tx.send(parse_documents(&text, "hostile.yaml"));
            })
            .expect("spawn");
        rx.recv_timeout(limit)
            .unwrap_or_else(|_| panic!("parsing stalled for more than {limit:?}"))
    }

    #[test]
    fn hostile_documents_are_reported_in_bounded_time_and_the_rest_kept() {
        let good = "apiVersion: v1\nkind: Namespace\nmetadata: {name: kept}\n";
        let limit = std::time::Duration::from_secs(10);
        let hostile = [
            format!("a: {}", "[".repeat(100_000)),
            "[".repeat(200_000),
            format!("a: {}", "{a: ".repeat(50_000)),
            (0..300).map(|i| format!("{}k:\n", " ".repeat(i))).collect(),
            // A billion laughs.
            format!(
                "a: &a [x, x, x, x, x, x, x, x, x, x]\n{}",
                (b'b'..=b'z')
                    .map(|c| {
                        let prev = (c - 1) as char;
                        format!("{}: &{} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n", c as char, c as char)
                    })
                    .collect::<String>()
            ),
        ];
        for doc in hostile {
            let text = format!("{good}---\n{doc}\n---\n{}", good.replace("kept", "also-kept"));
            let (objects, problems) = parse_within(text, limit);
            assert_eq!(keys(&objects), ["Namespace kept", "Namespace also-kept"]);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                matches!(problems[0].reason, ProblemReason::Syntax(_)),
                "{:?}",
                problems[0]
            );
            assert!(problems[0].to_string().len() < 2048, "{}", problems[0]);
        }
    }

    #[test]
    fn a_large_file_parsed_on_several_threads_keeps_file_order() {
        let doc = |i: usize| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default, labels: {{pad: '{}'}}}}\nspec: {{clusterIP: 10.96.{}.{}, ports: [{{port: 80}}]}}\n",
                "x".repeat(400),
                i / 250,
                i % 250 + 1
            )
        };
        let mut text = String::new();
        for i in 0..3000 {
            text += &if i == 1500 {
                "kind: [broken\n".to_owned()
            } else {
                doc(i)
            };
            text += "---\n";
        }
        assert!(text.len() > PARALLEL_ABOVE);
        // Each part runs through the caller's runner, on a thread of its own
        // (on a machine of more than one CPU).
        static PARTS: Mutex<Vec<std::thread::ThreadId>> = Mutex::new(Vec::new());
        let parsed = parse_documents_on(&text, "big.yaml", |part| {
            PARTS.lock().expect("parts").push(std::thread::current().id());
            part();
        });
        let parts = PARTS.lock().expect("parts").clone();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
        assert_eq!(parts.len(), if threads > 1 { threads } else { 0 }, "{parts:?}");
        assert!(!parts.contains(&std::thread::current().id()));
        let names: Vec<String> = parsed.objects.iter().map(|o| o.key().name).collect();
        let want: Vec<String> = (0..3000)
            .filter(|i| *i != 1500)
            .map(|i| format!("s{i}"))
            .collect();
        assert_eq!(names, want);
        assert_eq!(parsed.problems.len(), 1, "{:?}", parsed.problems);
        // Each document is 5 lines: the broken one starts on line 1 + 1500 * 5.
        assert_eq!(parsed.problems[0].origin, "big.yaml:7501");
        // A runner that does not run its part loses nothing.
        assert_eq!(parse_documents_on(&text, "big.yaml", |_| {}), parsed);
    }
}
