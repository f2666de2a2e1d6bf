//! Random clusters and policies, as proptest strategies, for the property test that
//! holds the agent's policy compiler to the oracle (tests/tests/policy_agreement.rs).
//!
//! Policies point into the cluster (their namespace, a pod's address in an ipBlock)
//! through [`Index`]es resolved only when a case is assembled, instead of being drawn
//! from an already drawn cluster (`prop_flat_map`): the cluster and the policies are
//! then shrunk independently, so a failing case shrinks to few pods and namespaces
//! under policies that still mean the same thing.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    net::{IpAddr, Ipv4Addr},
};

use ipnetwork::IpNetwork;
use proptest::{
    collection::{btree_map, vec},
    option,
    prelude::*,
    sample::{Index, select},
};
use serde_json::{Value, json};

use super::cluster::{Cluster, NS_NAME_LABEL, NsInfo, PodInfo, host_cidr, netpol};

/// A random cluster, policies on it, and addresses outside it.
#[derive(Clone, Debug)]
pub struct RandomCase {
    pub cluster: Cluster,
    pub policies: Vec<Value>,
    /// Addresses no pod has: some inside the pods' 10.1.0.0/16, some in 192.0.2.0/24.
    pub external: Vec<IpAddr>,
}

// Small vocabularies, so that selectors often match and the same port name means
// different numbers on different pods.
const LABEL_KEYS: &[&str] = &["app", "team", "env"];
const LABEL_VALUES: &[&str] = &["red", "green", "blue"];
const OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist"];
const PORT_NAMES: &[&str] = &["http", "dns", "metrics"];
const PORT_NUMBERS: &[u16] = &[53, 80, 81, 8080];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];
/// `spec.policyTypes`: absent (defaulted by the API server) or given.
const POLICY_TYPES: &[Option<&[&str]>] = &[
    None,
    Some(&["Ingress"]),
    Some(&["Egress"]),
    Some(&["Ingress", "Egress"]),
];
const EXTERNAL: &[Ipv4Addr] = &[
    Ipv4Addr::new(10, 1, 0, 250),
    Ipv4Addr::new(10, 1, 200, 1),
    Ipv4Addr::new(192, 0, 2, 1),
    Ipv4Addr::new(192, 0, 2, 77),
];
/// ipBlock CIDRs besides a pod's own /32: the pods' range, part of it, everything,
/// and a range with no pod.
const CIDRS: &[&str] = &["10.1.0.0/16", "10.1.0.0/20", "0.0.0.0/0", "192.0.2.0/24"];
/// Excepts besides the pods' and the external addresses' /32s (each used only
/// inside a CIDR it is a strict subnet of).
const EXCEPTS: &[&str] = &["10.1.0.0/28", "10.1.1.0/24", "10.1.200.0/24", "192.0.2.0/25"];

/// Random clusters (2-3 namespaces, 3-8 pods in 10.1.0.0/16) with 1-4 policies
/// exercising every selector operator, peer kind and port form, and four addresses
/// outside the cluster.
pub fn random_cases() -> impl Strategy<Value = RandomCase> {
    (vec(labels(), 2..=3), vec(pod(), 3..=8), vec(policy(), 1..=4)).prop_map(
        |(namespaces, pods, policies)| {
            let cluster = cluster(namespaces, pods);
            let policies = policies
                .iter()
                .enumerate()
                .map(|(i, policy)| policy.render(&cluster, i))
                .collect();
            let external = EXTERNAL.iter().map(|ip| IpAddr::V4(*ip)).collect();
            RandomCase {
                cluster,
                policies,
                external,
            }
        },
    )
}

// ---------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------

/// A pod before it has a name and an address: those follow from its place in the
/// list, so that dropping a pod while shrinking leaves a well-formed cluster.
#[derive(Clone, Debug)]
struct PodDraft {
    namespace: Index,
    labels: BTreeMap<String, String>,
    ports: Vec<(String, u16, String)>,
}

fn pod() -> impl Strategy<Value = PodDraft> {
    (any::<Index>(), labels(), ports()).prop_map(|(namespace, labels, ports)| PodDraft {
        namespace,
        labels,
        ports,
    })
}

/// Namespaces n0, n1, ... and pods p0, p1, ... at 10.1.(i / 4).(10 + i) on two nodes.
fn cluster(namespace_labels: Vec<BTreeMap<String, String>>, pods: Vec<PodDraft>) -> Cluster {
    let namespaces: Vec<NsInfo> = namespace_labels
        .into_iter()
        .enumerate()
        .map(|(i, mut labels)| {
            let name = format!("n{i}");
            labels.insert(NS_NAME_LABEL.into(), name.clone());
            NsInfo { name, labels }
        })
        .collect();
    let pods = pods
        .into_iter()
        .enumerate()
        .map(|(i, pod)| PodInfo {
            namespace: pod.namespace.get(&namespaces).name.clone(),
            name: format!("p{i}"),
            node: format!("node{}", i % 2),
            labels: pod.labels,
            ip: IpAddr::V4(Ipv4Addr::new(10, 1, (i / 4) as u8, 10 + i as u8)),
            ports: pod.ports,
        })
        .collect();
    Cluster { namespaces, pods }
}

/// Each key of the vocabulary, or not, with a value of the vocabulary.
fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    vec(option::of(select(LABEL_VALUES)), LABEL_KEYS.len()).prop_map(|values| {
        LABEL_KEYS
            .iter()
            .zip(values)
            .filter_map(|(key, value)| Some((key.to_string(), value?.to_string())))
            .collect()
    })
}

/// Each name of the vocabulary at most once (names are unique within a pod).
fn ports() -> impl Strategy<Value = Vec<(String, u16, String)>> {
    let port = (select(PORT_NUMBERS), select(PROTOCOLS));
    vec(option::of(port), PORT_NAMES.len()).prop_map(|ports| {
        PORT_NAMES
            .iter()
            .zip(ports)
            .filter_map(|(name, port)| {
                let (number, proto) = port?;
                Some((name.to_string(), number, proto.to_string()))
            })
            .collect()
    })
}

// ---------------------------------------------------------------------------------
// The policies
// ---------------------------------------------------------------------------------

/// A list field of the API: absent, present but empty, or 1-2 items. Absent and
/// empty mean different things in places (`egress: []` does not default the policy
/// types to Egress; `from: []` is every peer), so both are drawn.
#[derive(Clone, Debug)]
enum List<T> {
    Absent,
    Empty,
    Items(Vec<T>),
}

fn list<T: Clone + Debug>(item: impl Strategy<Value = T>) -> impl Strategy<Value = List<T>> {
    prop_oneof![
        1 => Just(List::Absent),
        1 => Just(List::Empty),
        2 => vec(item, 1..=2).prop_map(List::Items),
    ]
}

impl<T> List<T> {
    /// Sets `object[key]` unless absent, each item rendered by `render`.
    fn render_into(&self, object: &mut Value, key: &str, render: impl FnMut(&T) -> Value) {
        match self {
            List::Absent => {}
            List::Empty => object[key] = json!([]),
            List::Items(items) => object[key] = items.iter().map(render).collect(),
        }
    }
}

/// A NetworkPolicy before it is placed in the cluster.
#[derive(Clone, Debug)]
struct PolicyDraft {
    namespace: Index,
    pod_selector: Value,
    policy_types: Option<&'static [&'static str]>,
    ingress: List<Rule>,
    egress: List<Rule>,
}

fn policy() -> impl Strategy<Value = PolicyDraft> {
    let rules = || list(rule());
    (any::<Index>(), selector(), select(POLICY_TYPES), rules(), rules()).prop_map(
        |(namespace, pod_selector, policy_types, ingress, egress)| PolicyDraft {
            namespace,
            pod_selector,
            policy_types,
            ingress,
            egress,
        },
    )
}

impl PolicyDraft {
    /// The object, named p`i`, in the namespace its index picks.
    fn render(&self, cluster: &Cluster, i: usize) -> Value {
        let ns = &self.namespace.get(&cluster.namespaces).name;
        let mut spec = json!({ "podSelector": self.pod_selector });
        if let Some(types) = self.policy_types {
            spec["policyTypes"] = json!(types);
        }
        self.ingress
            .render_into(&mut spec, "ingress", |r| r.render(cluster, "from"));
        self.egress
            .render_into(&mut spec, "egress", |r| r.render(cluster, "to"));
        netpol(ns, &format!("p{i}"), spec)
    }
}

/// One ingress or egress rule: its peers and its ports.
#[derive(Clone, Debug)]
struct Rule {
    peers: List<Peer>,
    ports: List<Value>,
}

fn rule() -> impl Strategy<Value = Rule> {
    (list(peer()), list(port())).prop_map(|(peers, ports)| Rule { peers, ports })
}

impl Rule {
    /// `peers_field` is `from` or `to`.
    fn render(&self, cluster: &Cluster, peers_field: &str) -> Value {
        let mut rule = json!({});
        self.peers
            .render_into(&mut rule, peers_field, |p| p.render(cluster));
        self.ports.render_into(&mut rule, "ports", Value::clone);
        rule
    }
}

/// One entry of `from` or `to`.
#[derive(Clone, Debug)]
enum Peer {
    /// podSelector, namespaceSelector or both: nothing to resolve.
    Selectors(Value),
    IpBlock {
        cidr: Cidr,
        /// Absent, or indices into the excepts that fit inside the CIDR (none may).
        except: Option<Vec<Index>>,
    },
}

#[derive(Clone, Debug)]
enum Cidr {
    Fixed(&'static str),
    /// The /32 of the pod this index picks.
    PodHost(Index),
}

fn peer() -> impl Strategy<Value = Peer> {
    let cidr = prop_oneof![
        CIDRS.len() as u32 => select(CIDRS).prop_map(Cidr::Fixed),
        1 => any::<Index>().prop_map(Cidr::PodHost),
    ];
    let except = prop_oneof![
        1 => Just(None),
        1 => Just(Some(Vec::new())),
        4 => vec(any::<Index>(), 1..=2).prop_map(Some),
    ];
    prop_oneof![
        selector().prop_map(|pods| Peer::Selectors(json!({ "podSelector": pods }))),
        selector().prop_map(|nss| Peer::Selectors(json!({ "namespaceSelector": nss }))),
        (selector(), selector()).prop_map(|(nss, pods)| {
            Peer::Selectors(json!({ "namespaceSelector": nss, "podSelector": pods }))
        }),
        (cidr, except).prop_map(|(cidr, except)| Peer::IpBlock { cidr, except }),
    ]
}

impl Peer {
    fn render(&self, cluster: &Cluster) -> Value {
        let (cidr, except) = match self {
            Peer::Selectors(selectors) => return selectors.clone(),
            Peer::IpBlock { cidr, except } => (cidr, except),
        };
        let cidr = match cidr {
            Cidr::Fixed(cidr) => cidr.to_string(),
            Cidr::PodHost(pod) => host_cidr(pod.get(&cluster.pods).ip),
        };
        let mut block = json!({ "cidr": cidr });
        if let Some(except) = except {
            let candidates = excepts_inside(cluster, &cidr);
            let picked: Vec<&String> = if candidates.is_empty() {
                Vec::new() // a pod's /32 has no strict subnet: `except: []`
            } else {
                except.iter().map(|i| i.get(&candidates)).collect()
            };
            block["except"] = json!(picked);
        }
        json!({ "ipBlock": block })
    }
}

/// The excepts that are strict subnets of `cidr`, as the API server demands.
fn excepts_inside(cluster: &Cluster, cidr: &str) -> Vec<String> {
    let outer = parse_cidr(cidr);
    let hosts = cluster
        .pods
        .iter()
        .map(|p| p.ip)
        .chain(EXTERNAL.iter().map(|ip| IpAddr::V4(*ip)))
        .map(host_cidr);
    EXCEPTS
        .iter()
        .map(|c| c.to_string())
        .chain(hosts)
        .filter(|c| {
            let inner = parse_cidr(c);
            inner.prefix() > outer.prefix() && outer.contains(inner.network())
        })
        .collect()
}

fn parse_cidr(text: &str) -> IpNetwork {
    text.parse()
        .unwrap_or_else(|e| panic!("ipBlock CIDR {text:?} does not parse: {e}"))
}

/// A LabelSelector: `{}`, matchLabels, matchExpressions, or both.
fn selector() -> impl Strategy<Value = Value> {
    let labels = || btree_map(select(LABEL_KEYS), select(LABEL_VALUES), 1..=2);
    let expressions = || vec(expression(), 1..=2);
    prop_oneof![
        Just(json!({})),
        labels().prop_map(|labels| json!({ "matchLabels": labels })),
        expressions().prop_map(|exprs| json!({ "matchExpressions": exprs })),
        (labels(), expressions())
            .prop_map(|(labels, exprs)| json!({ "matchLabels": labels, "matchExpressions": exprs })),
    ]
}

/// Every operator; values (1-2, repeats allowed) only where the operator takes them.
fn expression() -> impl Strategy<Value = Value> {
    let values = vec(select(LABEL_VALUES), 1..=2);
    (select(LABEL_KEYS), select(OPERATORS), values).prop_map(|(key, operator, values)| {
        let mut expr = json!({ "key": key, "operator": operator });
        if operator == "In" || operator == "NotIn" {
            expr["values"] = json!(values);
        }
        expr
    })
}

/// The forms of a port entry besides its protocol.
#[derive(Clone, Debug)]
enum PortForm {
    /// Every port of the protocol.
    Any,
    Number(u16),
    /// `port` and `endPort` 0-3 above it (a range of one included).
    Range(u16, u16),
    Named(&'static str),
}

/// One entry of `ports`: protocol absent (TCP) a quarter of the time.
fn port() -> impl Strategy<Value = Value> {
    let form = prop_oneof![
        Just(PortForm::Any),
        select(PORT_NUMBERS).prop_map(PortForm::Number),
        (select(PORT_NUMBERS), 0..4u16).prop_map(|(first, more)| PortForm::Range(first, first + more)),
        select(PORT_NAMES).prop_map(PortForm::Named),
    ];
    (option::weighted(0.75, select(PROTOCOLS)), form).prop_map(|(protocol, form)| {
        let mut port = json!({});
        if let Some(protocol) = protocol {
            port["protocol"] = json!(protocol);
        }
        match form {
            PortForm::Any => {}
            PortForm::Number(number) => port["port"] = json!(number),
            PortForm::Range(first, last) => {
                port["port"] = json!(first);
                port["endPort"] = json!(last);
            }
            PortForm::Named(name) => port["port"] = json!(name),
        }
        port
    })
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, net::IpAddr};

    use proptest::{
        prelude::*,
        strategy::{Strategy, ValueTree},
        test_runner::TestRunner,
    };
    use serde_json::Value;

    use super::{RandomCase, random_cases};
    use crate::netpol::oracle::allowed;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn random_cases_are_well_formed(case in random_cases()) {
            prop_assert!((2..=3).contains(&case.cluster.namespaces.len()));
            prop_assert!((3..=8).contains(&case.cluster.pods.len()));
            prop_assert!((1..=4).contains(&case.policies.len()));
            let ips: BTreeSet<IpAddr> = case.cluster.pods.iter().map(|p| p.ip).collect();
            prop_assert_eq!(ips.len(), case.cluster.pods.len(), "pod IPs are unique");
            prop_assert!(case.external.iter().all(|e| !ips.contains(e)));
            // The evaluator runs on every case without panicking.
            let addrs: Vec<IpAddr> = ips.iter().chain(&case.external).copied().collect();
            for src in &addrs {
                for dst in &addrs {
                    allowed(&case.cluster, &case.policies, *src, *dst, "TCP", 80);
                }
            }
        }
    }

    /// Every form the hand-written generator drew before the strategies replaced it
    /// (`ingress` absent, empty or with rules; each peer kind; each selector shape
    /// and operator; each ipBlock CIDR kind with and without excepts; each port form
    /// and protocol, ...) still comes up in 300 cases, as many as the property test
    /// draws.
    #[test]
    fn random_cases_draw_every_form() {
        let mut runner = TestRunner::deterministic();
        let strategy = random_cases();
        let mut seen = BTreeSet::new();
        for _ in 0..300 {
            let case = strategy.new_tree(&mut runner).expect("a case").current();
            forms(&case, &mut seen);
        }
        let mut expected: Vec<String> = Vec::new();
        expected.extend((2..=3).map(|n| format!("namespaces {n}")));
        expected.extend((3..=8).map(|n| format!("pods {n}")));
        expected.extend((1..=4).map(|n| format!("policies {n}")));
        expected.extend((0..=3).map(|n| format!("pod labels {n}")));
        expected.extend((0..=3).map(|n| format!("namespace labels {n}")));
        expected.extend((0..=3).map(|n| format!("pod ports {n}")));
        for types in [
            "absent",
            r#"["Ingress"]"#,
            r#"["Egress"]"#,
            r#"["Ingress","Egress"]"#,
        ] {
            expected.push(format!("policyTypes {types}"));
        }
        let shapes = [
            "{}",
            "matchLabels",
            "matchExpressions",
            "matchLabels+matchExpressions",
        ];
        for place in ["spec", "podSelector", "namespaceSelector"] {
            expected.extend(shapes.iter().map(|s| format!("{place} selector {s}")));
        }
        for operator in ["In", "NotIn", "Exists", "DoesNotExist"] {
            expected.push(format!("operator {operator}"));
        }
        for (rules, peers) in [("ingress", "from"), ("egress", "to")] {
            let lists = [
                (rules.to_string(), "rules"),
                (peers.to_string(), "peers"),
                (format!("{rules} ports"), "ports"),
            ];
            for (field, some) in lists {
                expected.extend(["absent", "empty", some].map(|k| format!("{field} {k}")));
            }
            for peer in [
                "podSelector",
                "namespaceSelector",
                "namespaceSelector+podSelector",
                "ipBlock",
            ] {
                expected.push(format!("{rules} peer {peer}"));
            }
            for protocol in ["absent", "TCP", "UDP", "SCTP"] {
                expected.push(format!("{rules} port protocol {protocol}"));
            }
            for form in ["any", "number", "range of one", "range", "named"] {
                expected.push(format!("{rules} port {form}"));
            }
        }
        for cidr in ["10.1.0.0/16", "10.1.0.0/20", "0.0.0.0/0", "192.0.2.0/24"] {
            for except in ["absent", "empty", "some"] {
                expected.push(format!("ipBlock {cidr} except {except}"));
            }
        }
        expected.extend(["absent", "empty"].map(|e| format!("ipBlock pod /32 except {e}")));
        for except in [
            "10.1.0.0/28",
            "10.1.1.0/24",
            "10.1.200.0/24",
            "192.0.2.0/25",
            "pod /32",
            "outside /32",
        ] {
            expected.push(format!("except {except}"));
        }
        let missing: Vec<&String> = expected.iter().filter(|f| !seen.contains(*f)).collect();
        assert!(missing.is_empty(), "never drawn: {missing:#?}");
    }

    /// The forms `case` holds, named as in [`random_cases_draw_every_form`].
    fn forms(case: &RandomCase, seen: &mut BTreeSet<String>) {
        let cluster = &case.cluster;
        seen.insert(format!("namespaces {}", cluster.namespaces.len()));
        seen.insert(format!("pods {}", cluster.pods.len()));
        seen.insert(format!("policies {}", case.policies.len()));
        for ns in &cluster.namespaces {
            seen.insert(format!("namespace labels {}", ns.labels.len() - 1)); // less the name
        }
        for pod in &cluster.pods {
            seen.insert(format!("pod labels {}", pod.labels.len()));
            seen.insert(format!("pod ports {}", pod.ports.len()));
        }
        let host = |cidr: &str| {
            let is = |ip: &IpAddr| cidr == format!("{ip}/32");
            if cluster.pods.iter().any(|p| is(&p.ip)) {
                "pod /32".to_string()
            } else if case.external.iter().any(is) {
                "outside /32".to_string()
            } else {
                cidr.to_string()
            }
        };
        for policy in &case.policies {
            let spec = &policy["spec"];
            let types = spec.get("policyTypes").map_or("absent".into(), Value::to_string);
            seen.insert(format!("policyTypes {types}"));
            selector(seen, "spec", &spec["podSelector"]);
            for (rules, peers) in [("ingress", "from"), ("egress", "to")] {
                seen.insert(format!("{rules} {}", list(spec, rules, "rules")));
                for rule in items(spec, rules) {
                    seen.insert(format!("{peers} {}", list(rule, peers, "peers")));
                    seen.insert(format!("{rules} ports {}", list(rule, "ports", "ports")));
                    for peer in items(rule, peers) {
                        let kinds: Vec<&str> = ["ipBlock", "namespaceSelector", "podSelector"]
                            .into_iter()
                            .filter(|k| peer.get(k).is_some())
                            .collect();
                        seen.insert(format!("{rules} peer {}", kinds.join("+")));
                        for place in ["podSelector", "namespaceSelector"] {
                            if let Some(s) = peer.get(place) {
                                selector(seen, place, s);
                            }
                        }
                        if let Some(block) = peer.get("ipBlock") {
                            let cidr = host(block["cidr"].as_str().unwrap_or_default());
                            let except = match block.get("except").and_then(Value::as_array) {
                                None => "absent",
                                Some(e) if e.is_empty() => "empty",
                                Some(_) => "some",
                            };
                            seen.insert(format!("ipBlock {cidr} except {except}"));
                            for e in items(block, "except") {
                                seen.insert(format!("except {}", host(e.as_str().unwrap_or_default())));
                            }
                        }
                    }
                    for port in items(rule, "ports") {
                        let protocol = port.get("protocol").and_then(Value::as_str).unwrap_or("absent");
                        seen.insert(format!("{rules} port protocol {protocol}"));
                        let form = match (port.get("port"), port.get("endPort")) {
                            (None, _) => "any",
                            (Some(Value::String(_)), _) => "named",
                            (Some(first), Some(last)) if first == last => "range of one",
                            (Some(_), Some(_)) => "range",
                            (Some(_), None) => "number",
                        };
                        seen.insert(format!("{rules} port {form}"));
                    }
                }
            }
        }
    }

    fn selector(seen: &mut BTreeSet<String>, place: &str, selector: &Value) {
        let parts: Vec<&str> = ["matchLabels", "matchExpressions"]
            .into_iter()
            .filter(|k| selector.get(k).is_some())
            .collect();
        let shape = if parts.is_empty() {
            "{}".to_string()
        } else {
            parts.join("+")
        };
        seen.insert(format!("{place} selector {shape}"));
        for expr in items(selector, "matchExpressions") {
            seen.insert(format!(
                "operator {}",
                expr["operator"].as_str().unwrap_or_default()
            ));
        }
    }

    /// "absent", "empty", or `some` for a list field.
    fn list(object: &Value, key: &str, some: &str) -> String {
        match object.get(key).and_then(Value::as_array) {
            None => "absent".into(),
            Some(a) if a.is_empty() => "empty".into(),
            Some(_) => some.into(),
        }
    }

    fn items<'a>(object: &'a Value, key: &str) -> &'a [Value] {
        object
            .get(key)
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }
}
