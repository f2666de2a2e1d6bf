//! Kubernetes NetworkPolicy (networking.k8s.io/v1) for the tests: the expected side.
//!
//! The end-to-end tests probe real reachability between lab pods and compare it with
//! a matrix computed here. This module is an *independent*, deliberately simple
//! evaluator written straight from the Kubernetes documentation
//! (<https://kubernetes.io/docs/concepts/services-networking/network-policies/>) and
//! the API reference, sharing no code with the agent's policy compiler: a bug the two
//! shared would never show up. It favours obviousness over speed (it rescans every
//! policy for every connection).
//!
//! Policies are plain `serde_json::Value`s exactly as an API server holds them
//! (`apiVersion`, `kind`, `metadata {name, namespace}`, `spec` in camelCase), so the
//! same objects can be written to the agent's manifest directory.
//!
//! Also here: the upstream e2e "x, y, z / a, b, c" cluster ([`Cluster::xyz`]), the
//! probes a test runs ([`probes`]), scenarios modelled on the upstream e2e netpol
//! suite (test/e2e/network/netpol/network_policy.go; [`scenarios`]) and deterministic
//! random cases for property tests ([`random_case`]).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use ipnetwork::IpNetwork;
use serde_json::{Value, json};

/// The label the API server puts on every namespace, with the namespace's name.
const NS_NAME_LABEL: &str = "kubernetes.io/metadata.name";

// ---------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub ip: IpAddr,
    /// named container ports: (name, port, protocol "TCP"/"UDP"/"SCTP")
    pub ports: Vec<(String, u16, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub namespaces: Vec<NsInfo>,
    pub pods: Vec<PodInfo>,
}

/// A label map from literal pairs.
fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Cluster {
    /// The upstream model: namespaces x, y, z labelled `ns: <name>` (plus
    /// `kubernetes.io/metadata.name: <name>` as the API server adds), pods a, b, c in
    /// each labelled `pod: <name>`, every pod serving TCP and UDP on 80 and 81 with
    /// container ports named serve-80-tcp, serve-81-tcp, serve-80-udp, serve-81-udp.
    /// `ip_of(ns, pod)` and `node_of(ns, pod)` supply addresses and node names.
    pub fn xyz(ip_of: impl Fn(&str, &str) -> IpAddr, node_of: impl Fn(&str, &str) -> String) -> Cluster {
        let mut cluster = Cluster {
            namespaces: Vec::new(),
            pods: Vec::new(),
        };
        for ns in ["x", "y", "z"] {
            cluster.namespaces.push(NsInfo {
                name: ns.into(),
                labels: labels(&[("ns", ns), (NS_NAME_LABEL, ns)]),
            });
            for pod in ["a", "b", "c"] {
                cluster.pods.push(PodInfo {
                    namespace: ns.into(),
                    name: pod.into(),
                    node: node_of(ns, pod),
                    labels: labels(&[("pod", pod)]),
                    ip: ip_of(ns, pod),
                    ports: xyz_ports(),
                });
            }
        }
        cluster
    }

    pub fn pod(&self, ns: &str, name: &str) -> &PodInfo {
        self.pods
            .iter()
            .find(|p| p.namespace == ns && p.name == name)
            .unwrap_or_else(|| panic!("no pod {ns}/{name} in the cluster"))
    }

    pub fn pod_mut(&mut self, ns: &str, name: &str) -> &mut PodInfo {
        self.pods
            .iter_mut()
            .find(|p| p.namespace == ns && p.name == name)
            .unwrap_or_else(|| panic!("no pod {ns}/{name} in the cluster"))
    }

    pub fn ns_mut(&mut self, name: &str) -> &mut NsInfo {
        self.namespaces
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no namespace {name} in the cluster"))
    }

    /// The namespace called `name`, if the cluster has it.
    pub fn namespace(&self, name: &str) -> Option<&NsInfo> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    /// The pod with address `ip`, if any: everything else is outside the cluster.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&PodInfo> {
        self.pods.iter().find(|p| p.ip == ip)
    }

    /// Namespace and Pod objects as an API server holds them (namespaces first).
    pub fn manifests(&self) -> Vec<Value> {
        let namespaces = self.namespaces.iter().map(|ns| {
            json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": { "name": ns.name, "labels": ns.labels },
            })
        });
        let pods = self.pods.iter().map(|pod| {
            let ports: Vec<Value> = pod
                .ports
                .iter()
                .map(|(name, port, proto)| json!({ "name": name, "containerPort": port, "protocol": proto }))
                .collect();
            crate::services::pod(
                &pod.namespace,
                &pod.name,
                json!(pod.labels),
                &pod.node,
                &[pod.ip],
                json!(ports),
            )
        });
        namespaces.chain(pods).collect()
    }
}

/// The four ports every xyz pod serves.
fn xyz_ports() -> Vec<(String, u16, String)> {
    [(80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP")]
        .into_iter()
        .map(|(port, proto)| {
            let name = format!("serve-{port}-{}", proto.to_lowercase());
            (name, port, proto.to_string())
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// The evaluator
// ---------------------------------------------------------------------------------

/// Which side of a connection a policy rule governs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The name in `spec.policyTypes`.
    fn policy_type(self) -> &'static str {
        match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        }
    }

    /// The spec field holding the rules.
    fn rules_field(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// The rule field holding the peers.
    fn peers_field(self) -> &'static str {
        match self {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        }
    }
}

/// Whether a NEW connection from address `src` to address `dst` on `proto`
/// ("TCP"/"UDP"/"SCTP") and `port` is allowed by `policies`: by the egress side when
/// `src` is a pod of the cluster, and by the ingress side when `dst` is a pod.
/// Addresses that are no pod are never isolated. A pod talking to itself is always
/// allowed.
///
/// Isolation: a pod is isolated for a direction when some policy of *its* namespace
/// selects it (`spec.podSelector`, empty = all pods) with that direction in its
/// policy types. Allowed traffic is then the union of those policies' rules.
pub fn allowed(
    cluster: &Cluster,
    policies: &[Value],
    src: IpAddr,
    dst: IpAddr,
    proto: &str,
    port: u16,
) -> bool {
    if src == dst {
        return true;
    }
    let src_pod = cluster.pod_by_ip(src);
    let dst_pod = cluster.pod_by_ip(dst);
    let conn = Connection { proto, port, dst_pod };
    let egress_ok =
        src_pod.is_none_or(|pod| side_allows(cluster, policies, pod, Direction::Egress, dst, &conn));
    let ingress_ok =
        dst_pod.is_none_or(|pod| side_allows(cluster, policies, pod, Direction::Ingress, src, &conn));
    egress_ok && ingress_ok
}

/// What a port rule looks at: the protocol, the port, and the destination pod (whose
/// container ports give named ports their meaning; none for an outside address).
struct Connection<'a> {
    proto: &'a str,
    port: u16,
    dst_pod: Option<&'a PodInfo>,
}

/// Whether `pod`'s side of the connection (its ingress or egress) lets it through,
/// `peer` being the address at the other end.
fn side_allows(
    cluster: &Cluster,
    policies: &[Value],
    pod: &PodInfo,
    dir: Direction,
    peer: IpAddr,
    conn: &Connection,
) -> bool {
    let mut selecting = policies
        .iter()
        .filter(|p| selects(p, pod) && policy_types(p).contains(&dir))
        .peekable();
    if selecting.peek().is_none() {
        return true; // not isolated in this direction
    }
    selecting.any(|policy| {
        let ns = policy_namespace(policy);
        list(&policy["spec"], dir.rules_field())
            .iter()
            .any(|rule| rule_admits(cluster, ns, rule, dir, peer, conn))
    })
}

/// A present, non-null field (`null` and absent mean the same in the API).
fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|f| !f.is_null())
}

/// A list field; absent, null and empty all give an empty slice.
fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    field(v, key).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn policy_namespace(policy: &Value) -> &str {
    policy["metadata"]["namespace"]
        .as_str()
        .unwrap_or_else(|| panic!("NetworkPolicy without metadata.namespace: {policy}"))
}

/// Whether `policy` applies to `pod`: same namespace and podSelector matches.
fn selects(policy: &Value, pod: &PodInfo) -> bool {
    let empty = json!({});
    let selector = field(&policy["spec"], "podSelector").unwrap_or(&empty);
    policy_namespace(policy) == pod.namespace && selector_matches(selector, &pod.labels)
}

/// `spec.policyTypes`, or when absent/empty the API server's default: Ingress, plus
/// Egress when the policy has egress rules. "Has egress rules" is upstream's
/// `len(spec.Egress) != 0` (SetDefaults_NetworkPolicy), so an empty `egress: []`
/// does NOT make the policy an egress policy.
fn policy_types(policy: &Value) -> Vec<Direction> {
    let spec = &policy["spec"];
    let given = list(spec, "policyTypes");
    if !given.is_empty() {
        return [Direction::Ingress, Direction::Egress]
            .into_iter()
            .filter(|d| given.iter().any(|t| t.as_str() == Some(d.policy_type())))
            .collect();
    }
    let mut types = vec![Direction::Ingress];
    if !list(spec, "egress").is_empty() {
        types.push(Direction::Egress);
    }
    types
}

/// One ingress/egress rule: its peers AND its ports; absent or empty lists admit all.
fn rule_admits(
    cluster: &Cluster,
    policy_ns: &str,
    rule: &Value,
    dir: Direction,
    peer: IpAddr,
    conn: &Connection,
) -> bool {
    let peers = list(rule, dir.peers_field());
    let ports = list(rule, "ports");
    let peer_ok = peers.is_empty() || peers.iter().any(|p| peer_matches(cluster, policy_ns, p, peer));
    let port_ok = ports.is_empty() || ports.iter().any(|p| port_matches(p, conn));
    peer_ok && port_ok
}

/// One entry of `from`/`to`.
fn peer_matches(cluster: &Cluster, policy_ns: &str, peer: &Value, addr: IpAddr) -> bool {
    if let Some(block) = field(peer, "ipBlock") {
        return ip_block_contains(block, addr);
    }
    let pod_selector = field(peer, "podSelector");
    let ns_selector = field(peer, "namespaceSelector");
    if pod_selector.is_none() && ns_selector.is_none() {
        return false; // the API server rejects such a peer; admit nothing rather than guess
    }
    // Selectors only ever name pods: an outside address never matches them.
    let Some(pod) = cluster.pod_by_ip(addr) else {
        return false;
    };
    let ns_ok = match ns_selector {
        // podSelector alone: pods of the policy's own namespace.
        None => pod.namespace == policy_ns,
        Some(sel) => cluster
            .namespace(&pod.namespace)
            .is_some_and(|ns| selector_matches(sel, &ns.labels)),
    };
    let pod_ok = pod_selector.is_none_or(|sel| selector_matches(sel, &pod.labels));
    ns_ok && pod_ok
}

fn parse_cidr(text: &str) -> IpNetwork {
    text.parse()
        .unwrap_or_else(|e| panic!("ipBlock CIDR {text:?} does not parse: {e}"))
}

/// Inside `cidr` and outside every `except`.
fn ip_block_contains(block: &Value, addr: IpAddr) -> bool {
    let cidr = block["cidr"]
        .as_str()
        .unwrap_or_else(|| panic!("ipBlock without cidr: {block}"));
    let excepted = list(block, "except").iter().any(|e| {
        let e = e
            .as_str()
            .unwrap_or_else(|| panic!("ipBlock except {e} is no string"));
        parse_cidr(e).contains(addr)
    });
    parse_cidr(cidr).contains(addr) && !excepted
}

/// A metav1.LabelSelector: matchLabels AND matchExpressions; `{}` matches everything.
fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = field(selector, "matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|want| {
            want.iter()
                .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
        });
    let expressions_ok = list(selector, "matchExpressions")
        .iter()
        .all(|e| expression_matches(e, labels));
    labels_ok && expressions_ok
}

fn expression_matches(expr: &Value, labels: &BTreeMap<String, String>) -> bool {
    let key = expr["key"].as_str().unwrap_or_default();
    let values: Vec<&str> = list(expr, "values").iter().filter_map(Value::as_str).collect();
    let value = labels.get(key).map(String::as_str);
    match expr["operator"].as_str() {
        Some("In") => value.is_some_and(|v| values.contains(&v)),
        Some("NotIn") => value.is_none_or(|v| !values.contains(&v)),
        Some("Exists") => value.is_some(),
        Some("DoesNotExist") => value.is_none(),
        _ => false, // unknown operators select nothing
    }
}

/// One entry of `ports`.
fn port_matches(entry: &Value, conn: &Connection) -> bool {
    let proto = field(entry, "protocol").and_then(Value::as_str).unwrap_or("TCP");
    if proto != conn.proto {
        return false;
    }
    match field(entry, "port") {
        None => true, // every port of the protocol
        Some(Value::Number(n)) => {
            let first = n.as_u64().unwrap_or(u64::MAX);
            let last = field(entry, "endPort").and_then(Value::as_u64).unwrap_or(first);
            (first..=last).contains(&u64::from(conn.port))
        }
        // A named port means whatever the destination pod calls by that name.
        Some(Value::String(name)) => conn.dst_pod.is_some_and(|pod| {
            pod.ports
                .iter()
                .any(|(n, number, p)| n == name && p == proto && *number == conn.port)
        }),
        Some(_) => false,
    }
}

// ---------------------------------------------------------------------------------
// Probes
// ---------------------------------------------------------------------------------

/// What one probe checks: a new connection between two pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// (namespace, pod)
    pub from: (String, String),
    /// (namespace, pod)
    pub to: (String, String),
    pub proto: &'static str,
    pub port: u16,
}

impl Probe {
    /// What the policies say about this probe.
    pub fn expected(&self, cluster: &Cluster, policies: &[Value]) -> bool {
        let src = cluster.pod(&self.from.0, &self.from.1).ip;
        let dst = cluster.pod(&self.to.0, &self.to.1).ip;
        allowed(cluster, policies, src, dst, self.proto, self.port)
    }
}

/// Every ordered pair of pods (self pairs included), on TCP and UDP, ports 80 and 81.
pub fn probes(cluster: &Cluster) -> Vec<Probe> {
    let mut out = Vec::new();
    for from in &cluster.pods {
        for to in &cluster.pods {
            for proto in ["TCP", "UDP"] {
                for port in [80, 81] {
                    out.push(Probe {
                        from: (from.namespace.clone(), from.name.clone()),
                        to: (to.namespace.clone(), to.name.clone()),
                        proto,
                        port,
                    });
                }
            }
        }
    }
    out
}

/// The expected outcome of every probe of `probes(cluster)`, in that order.
pub fn matrix(cluster: &Cluster, policies: &[Value]) -> Vec<bool> {
    probes(cluster)
        .iter()
        .map(|p| p.expected(cluster, policies))
        .collect()
}

// ---------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------

/// A step of a scenario: the full set of policies in force and the labels at that
/// point. Labels are absolute (starting from the xyz defaults) and replace a pod's or
/// namespace's labels wholesale, except `kubernetes.io/metadata.name`, which the API
/// server keeps on every namespace.
#[derive(Clone, Debug)]
pub struct Step {
    pub policies: Vec<Value>,
    /// (namespace, pod, labels)
    pub pod_labels: Vec<(String, String, BTreeMap<String, String>)>,
    /// (namespace, labels)
    pub ns_labels: Vec<(String, BTreeMap<String, String>)>,
}

impl Step {
    /// These policies and the default labels.
    pub fn new(policies: Vec<Value>) -> Step {
        Step {
            policies,
            pod_labels: Vec::new(),
            ns_labels: Vec::new(),
        }
    }

    /// Sets pod `ns`/`pod`'s labels to exactly `pairs`.
    pub fn with_pod_labels(mut self, ns: &str, pod: &str, pairs: &[(&str, &str)]) -> Step {
        self.pod_labels.push((ns.into(), pod.into(), labels(pairs)));
        self
    }

    /// Sets namespace `ns`'s labels to exactly `pairs` (plus its name label).
    pub fn with_ns_labels(mut self, ns: &str, pairs: &[(&str, &str)]) -> Step {
        self.ns_labels.push((ns.into(), labels(pairs)));
        self
    }

    /// A copy of `base` with this step's labels.
    pub fn apply_labels(&self, base: &Cluster) -> Cluster {
        let mut cluster = base.clone();
        for (ns, pod, labels) in &self.pod_labels {
            cluster.pod_mut(ns, pod).labels = labels.clone();
        }
        for (ns, labels) in &self.ns_labels {
            let mut labels = labels.clone();
            labels.insert(NS_NAME_LABEL.into(), ns.clone());
            cluster.ns_mut(ns).labels = labels;
        }
        cluster
    }

    /// The expected matrix at this step (see [`matrix`]).
    pub fn expected(&self, base: &Cluster) -> Vec<bool> {
        matrix(&self.apply_labels(base), &self.policies)
    }
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    /// In order; each gives the whole state, not a delta.
    pub steps: Vec<Step>,
}

/// The scenarios whose every step allows everything between pods, on purpose
/// (every other scenario denies some probe at some step).
pub const ALLOW_ALL_SCENARIOS: &[&str] = &[
    "allow-all-ingress-empty-rule",
    "allow-all-egress-empty-rule",
    "policy-selecting-no-pod-isolates-nothing",
    "ingress-x-from-all-namespaces-empty-namespace-selector",
];

fn netpol(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "name": name, "namespace": ns },
        "spec": spec,
    })
}

fn match_labels(key: &str, value: &str) -> Value {
    json!({ "matchLabels": { key: value } })
}

fn pod_is(name: &str) -> Value {
    match_labels("pod", name)
}

fn ns_is(name: &str) -> Value {
    match_labels("ns", name)
}

/// A selector with one expression (`values` omitted when empty, as for Exists).
fn expression(key: &str, operator: &str, values: &[&str]) -> Value {
    let mut expr = json!({ "key": key, "operator": operator });
    if !values.is_empty() {
        expr["values"] = json!(values);
    }
    json!({ "matchExpressions": [expr] })
}

/// Spec: pod a, ingress only, these rules.
fn a_ingress(rules: Value) -> Value {
    json!({ "podSelector": pod_is("a"), "policyTypes": ["Ingress"], "ingress": rules })
}

/// Spec: pod a, egress only, these rules.
fn a_egress(rules: Value) -> Value {
    json!({ "podSelector": pod_is("a"), "policyTypes": ["Egress"], "egress": rules })
}

/// Spec: ingress to pod a from these peers, any port.
fn a_from(peers: Value) -> Value {
    a_ingress(json!([{ "from": peers }]))
}

/// Spec: ingress to pod a from anywhere on these ports.
fn a_ports(ports: Value) -> Value {
    a_ingress(json!([{ "ports": ports }]))
}

/// Spec: egress from pod a to these peers, any port.
fn a_to(peers: Value) -> Value {
    a_egress(json!([{ "to": peers }]))
}

/// `address/32` or `address/128`.
fn host_cidr(ip: IpAddr) -> String {
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    format!("{ip}/{bits}")
}

/// The whole address family of `ip`.
fn everything(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "0.0.0.0/0" } else { "::/0" }
}

/// Scenarios being written down, in order.
#[derive(Default)]
struct Book(Vec<Scenario>);

impl Book {
    fn steps(&mut self, name: &str, steps: Vec<Step>) {
        let name = name.to_string();
        self.0.push(Scenario { name, steps });
    }

    /// One step with these policies and the default labels.
    fn policies(&mut self, name: &str, policies: Vec<Value>) {
        self.steps(name, vec![Step::new(policies)]);
    }

    /// One step with a single policy in `ns`, named after the scenario.
    fn one(&mut self, name: &str, ns: &str, spec: Value) {
        self.policies(name, vec![netpol(ns, name, spec)]);
    }
}

/// Scenarios on the xyz cluster `c` (ipBlock ones need its pod IPs), modelled on the
/// upstream e2e netpol suite. Multi-step scenarios change the expected matrix at
/// every step.
pub fn scenarios(c: &Cluster) -> Vec<Scenario> {
    let mut book = Book::default();
    isolation_scenarios(&mut book);
    selector_scenarios(&mut book);
    ip_block_scenarios(&mut book, c);
    port_scenarios(&mut book);
    combination_scenarios(&mut book);
    change_scenarios(&mut book, c);
    book.0
}

/// Default deny and allow all, in both directions; what a policy does not select.
fn isolation_scenarios(b: &mut Book) {
    let all = json!({});
    let same_ns = json!([{ "podSelector": all }]);
    b.one(
        "default-deny-ingress-in-x",
        "x",
        json!({ "podSelector": all, "policyTypes": ["Ingress"] }),
    );
    b.one(
        "default-deny-egress-in-x",
        "x",
        json!({ "podSelector": all, "policyTypes": ["Egress"] }),
    );
    b.one(
        "default-deny-ingress-and-egress-in-x",
        "x",
        json!({ "podSelector": all, "policyTypes": ["Ingress", "Egress"] }),
    );
    b.one(
        "allow-all-ingress-empty-rule",
        "x",
        json!({ "podSelector": all, "ingress": [{}] }),
    );
    b.one(
        "allow-all-egress-empty-rule",
        "x",
        json!({ "podSelector": all, "policyTypes": ["Egress"], "egress": [{}] }),
    );
    b.one(
        "ingress-y-from-same-namespace-empty-pod-selector",
        "y",
        json!({ "podSelector": all, "ingress": [{ "from": same_ns }] }),
    );
    b.one(
        "egress-x-to-same-namespace-only",
        "x",
        json!({ "podSelector": all, "policyTypes": ["Egress"], "egress": [{ "to": same_ns }] }),
    );
    b.one(
        "policy-selecting-no-pod-isolates-nothing",
        "x",
        json!({ "podSelector": pod_is("nobody"), "policyTypes": ["Ingress", "Egress"] }),
    );
    b.one(
        "deny-y-a-does-not-affect-x",
        "y",
        json!({ "podSelector": pod_is("a") }),
    );
}

/// Peers by pod and namespace selectors, every operator.
fn selector_scenarios(b: &mut Book) {
    let all = json!({});
    b.one(
        "ingress-x-a-from-pod-b-only",
        "x",
        a_from(json!([{ "podSelector": pod_is("b") }])),
    );
    b.one(
        "ingress-x-a-from-namespace-y-only",
        "x",
        a_from(json!([{ "namespaceSelector": ns_is("y") }])),
    );
    b.one(
        "ingress-x-a-from-pod-b-in-namespace-y-one-peer",
        "x",
        a_from(json!([{ "namespaceSelector": ns_is("y"), "podSelector": pod_is("b") }])),
    );
    b.one(
        "ingress-x-a-from-namespace-y-or-pod-b-two-peers",
        "x",
        a_from(json!([{ "namespaceSelector": ns_is("y") }, { "podSelector": pod_is("b") }])),
    );
    b.one(
        "ingress-x-from-all-namespaces-empty-namespace-selector",
        "x",
        json!({ "podSelector": all, "ingress": [{ "from": [{ "namespaceSelector": all }] }] }),
    );
    b.one(
        "ingress-x-a-from-pod-b-in-any-namespace",
        "x",
        a_from(json!([{ "namespaceSelector": all, "podSelector": pod_is("b") }])),
    );

    let pods = |sel: Value| a_from(json!([{ "podSelector": sel }]));
    b.one(
        "ingress-x-a-pod-selector-in-b-c",
        "x",
        pods(expression("pod", "In", &["b", "c"])),
    );
    b.one(
        "ingress-x-a-pod-selector-not-in-a-b",
        "x",
        pods(expression("pod", "NotIn", &["a", "b"])),
    );
    b.one(
        "ingress-x-a-pod-selector-exists",
        "x",
        pods(expression("pod", "Exists", &[])),
    );
    let no_env = netpol("x", "no-env", pods(expression("env", "DoesNotExist", &[])));
    b.steps(
        "ingress-x-a-pod-selector-does-not-exist",
        vec![Step::new(vec![no_env]).with_pod_labels("x", "b", &[("pod", "b"), ("env", "qa")])],
    );

    let namespaces = |sel: Value| a_from(json!([{ "namespaceSelector": sel }]));
    b.one(
        "ingress-x-a-namespace-selector-in-y-z",
        "x",
        namespaces(expression("ns", "In", &["y", "z"])),
    );
    b.one(
        "ingress-x-a-namespace-selector-not-in-x-y",
        "x",
        namespaces(expression("ns", "NotIn", &["x", "y"])),
    );
    let y_blue = [("ns", "y"), ("team", "blue")];
    let team = netpol("x", "team", namespaces(expression("team", "Exists", &[])));
    b.steps(
        "ingress-x-a-namespace-selector-exists",
        vec![Step::new(vec![team]).with_ns_labels("y", &y_blue)],
    );
    let no_team = netpol(
        "x",
        "no-team",
        namespaces(expression("team", "DoesNotExist", &[])),
    );
    b.steps(
        "ingress-x-a-namespace-selector-does-not-exist",
        vec![Step::new(vec![no_team]).with_ns_labels("y", &y_blue)],
    );

    b.one(
        "ingress-x-a-expressions-on-both-selectors",
        "x",
        a_from(json!([{ "namespaceSelector": expression("ns", "In", &["y", "z"]),
                         "podSelector": expression("pod", "NotIn", &["a"]) }])),
    );
    // matchLabels and matchExpressions must both hold: these two never do.
    let contradiction = json!({ "matchLabels": { "pod": "b" },
        "matchExpressions": [{ "key": "pod", "operator": "NotIn", "values": ["b"] }] });
    b.one(
        "ingress-x-a-match-labels-and-expressions-are-anded",
        "x",
        pods(contradiction),
    );
}

/// ipBlock peers, by pod IP: ipBlock applies to pods' addresses too.
fn ip_block_scenarios(b: &mut Book, c: &Cluster) {
    let y_b = c.pod("y", "b").ip;
    let only_y_b = json!([{ "ipBlock": { "cidr": host_cidr(y_b) } }]);
    let all_but_y_b = json!([{ "ipBlock": { "cidr": everything(y_b), "except": [host_cidr(y_b)] } }]);
    b.one("egress-x-a-to-ip-block-y-b-32", "x", a_to(only_y_b.clone()));
    b.one("ingress-x-a-from-ip-block-y-b-32", "x", a_from(only_y_b));
    b.one(
        "ingress-x-a-ip-block-all-except-y-b",
        "x",
        a_from(all_but_y_b.clone()),
    );
    b.one("egress-x-a-ip-block-all-except-y-b", "x", a_to(all_but_y_b));
    b.one(
        "egress-x-a-to-ip-block-or-pod-selector",
        "x",
        a_to(json!([{ "ipBlock": { "cidr": host_cidr(y_b) } }, { "podSelector": pod_is("c") }])),
    );
}

/// Ports: numeric, ranges, named, protocols.
fn port_scenarios(b: &mut Book) {
    b.one(
        "ingress-x-a-tcp-port-80-only",
        "x",
        a_ports(json!([{ "port": 80 }])),
    );
    b.one(
        "ingress-x-a-udp-port-81-only-keeps-tcp-closed",
        "x",
        a_ports(json!([{ "protocol": "UDP", "port": 81 }])),
    );
    b.one(
        "ingress-x-a-sctp-only-isolates-tcp-and-udp",
        "x",
        a_ports(json!([{ "protocol": "SCTP" }])),
    );
    b.one(
        "ingress-x-a-any-tcp-port",
        "x",
        a_ports(json!([{ "protocol": "TCP" }])),
    );
    b.one(
        "ingress-x-a-tcp-end-port-80-81",
        "x",
        a_ports(json!([{ "port": 80, "endPort": 81 }])),
    );
    b.one(
        "ingress-x-a-tcp-end-port-81-90",
        "x",
        a_ports(json!([{ "port": 81, "endPort": 90 }])),
    );
    b.one(
        "ingress-x-a-tcp-end-port-70-80",
        "x",
        a_ports(json!([{ "port": 70, "endPort": 80 }])),
    );
    b.one(
        "ingress-x-a-udp-end-port-80-81",
        "x",
        a_ports(json!([{ "protocol": "UDP", "port": 80, "endPort": 81 }])),
    );
    b.one(
        "ingress-x-a-named-port-serve-80-tcp",
        "x",
        a_ports(json!([{ "port": "serve-80-tcp" }])),
    );
    b.one(
        "ingress-x-a-named-port-serve-81-udp",
        "x",
        a_ports(json!([{ "protocol": "UDP", "port": "serve-81-udp" }])),
    );
    // serve-80-tcp names a TCP port: as UDP it names nothing, so nothing is let in.
    b.one(
        "ingress-x-a-named-port-with-wrong-protocol-matches-nothing",
        "x",
        a_ports(json!([{ "protocol": "UDP", "port": "serve-80-tcp" }])),
    );
    b.one(
        "egress-x-a-named-port-serve-81-tcp-on-destination",
        "x",
        a_egress(json!([{ "ports": [{ "port": "serve-81-tcp" }] }])),
    );
    b.one(
        "egress-x-a-named-port-serve-80-udp-on-destination",
        "x",
        a_egress(json!([{ "ports": [{ "protocol": "UDP", "port": "serve-80-udp" }] }])),
    );
}

/// Several rules, policies and directions together.
fn combination_scenarios(b: &mut Book) {
    let from_y = json!([{ "namespaceSelector": ns_is("y") }]);
    let to_z = json!([{ "namespaceSelector": ns_is("z") }]);
    let only_b = json!([{ "podSelector": pod_is("b") }]);
    b.policies(
        "ingress-x-a-multiple-policies-union",
        vec![
            netpol("x", "from-b", a_from(only_b.clone())),
            netpol(
                "x",
                "from-z",
                a_from(json!([{ "namespaceSelector": ns_is("z") }])),
            ),
        ],
    );
    b.policies(
        "ingress-x-a-multiple-policies-union-of-ports",
        vec![
            netpol("x", "tcp-80", a_ports(json!([{ "port": 80 }]))),
            netpol(
                "x",
                "y-udp-81",
                a_ingress(json!([{ "from": from_y, "ports": [{ "protocol": "UDP", "port": 81 }] }])),
            ),
        ],
    );
    b.one(
        "ingress-x-a-from-namespace-y-on-tcp-81-only",
        "x",
        a_ingress(json!([{ "from": from_y, "ports": [{ "port": 81 }] }])),
    );
    b.one("egress-x-a-to-namespace-y-only", "x", a_to(from_y.clone()));
    b.one(
        "egress-denied-ingress-allowed-x-a",
        "x",
        json!({ "podSelector": pod_is("a"), "policyTypes": ["Ingress", "Egress"], "ingress": [{}] }),
    );
    // The server lets everyone in, but the client may not send: egress wins.
    b.policies(
        "egress-deny-on-client-wins-over-server-ingress-allow",
        vec![
            netpol("x", "a-to-z", a_to(to_z.clone())),
            netpol(
                "y",
                "b-open",
                json!({ "podSelector": pod_is("b"), "ingress": [{}] }),
            ),
        ],
    );
    b.one(
        "ingress-and-egress-x-a-controlled-independently",
        "x",
        json!({ "podSelector": pod_is("a"), "policyTypes": ["Ingress", "Egress"],
                "ingress": [{ "from": from_y }], "egress": [{ "to": to_z }] }),
    );
    b.one(
        "policy-types-egress-only-ignores-ingress-rules",
        "x",
        json!({ "podSelector": pod_is("a"), "policyTypes": ["Egress"],
                "ingress": [{ "from": only_b }], "egress": [{ "to": only_b }] }),
    );
    b.one(
        "default-policy-types-with-egress-rules-isolate-both",
        "x",
        json!({ "podSelector": pod_is("a"), "ingress": [{ "from": only_b }], "egress": [{ "to": from_y }] }),
    );
    // Upstream defaulting adds Egress only for a non-empty egress list.
    b.one(
        "default-policy-types-empty-egress-list-isolates-ingress-only",
        "x",
        json!({ "podSelector": pod_is("a"), "ingress": [{ "from": only_b }], "egress": [] }),
    );
    b.one(
        "ingress-x-deny-other-namespaces",
        "x",
        json!({ "podSelector": {}, "ingress": [{ "from": [{ "podSelector": {} }] }] }),
    );
}

/// Multi-step: labels changed, policies added, updated and deleted.
fn change_scenarios(b: &mut Book, c: &Cluster) {
    let y_b = c.pod("y", "b").ip;
    let locked = netpol(
        "x",
        "locked",
        json!({ "podSelector": match_labels("role", "locked") }),
    );
    let x_b_locked = [("pod", "b"), ("role", "locked")];
    b.steps(
        "label-change-pod-becomes-selected",
        vec![
            Step::new(vec![locked.clone()]),
            Step::new(vec![locked.clone()]).with_pod_labels("x", "b", &x_b_locked),
        ],
    );
    b.steps(
        "label-change-pod-stops-being-selected",
        vec![
            Step::new(vec![locked.clone()]).with_pod_labels("x", "b", &x_b_locked),
            Step::new(vec![locked]),
        ],
    );

    let friends = netpol(
        "x",
        "friends",
        a_from(json!([{ "podSelector": match_labels("role", "friend") }])),
    );
    b.steps(
        "label-change-pod-becomes-allowed-peer",
        vec![
            Step::new(vec![friends.clone()]),
            Step::new(vec![friends]).with_pod_labels("x", "c", &[("pod", "c"), ("role", "friend")]),
        ],
    );

    let blue = netpol(
        "x",
        "blue",
        a_from(json!([{ "namespaceSelector": match_labels("team", "blue") }])),
    );
    b.steps(
        "namespace-label-change-namespace-becomes-allowed-peer",
        vec![
            Step::new(vec![blue.clone()]),
            Step::new(vec![blue.clone()]).with_ns_labels("z", &[("ns", "z"), ("team", "blue")]),
        ],
    );
    b.steps(
        "namespace-label-change-namespace-stops-being-allowed-peer",
        vec![
            Step::new(vec![blue.clone()]).with_ns_labels("y", &[("ns", "y"), ("team", "blue")]),
            Step::new(vec![blue]),
        ],
    );

    let deny_x = netpol(
        "x",
        "deny-all",
        json!({ "podSelector": {}, "policyTypes": ["Ingress", "Egress"] }),
    );
    b.steps(
        "policy-deletion-restores-all-allowed",
        vec![Step::new(vec![deny_x]), Step::new(vec![])],
    );

    // Same object name: an update, not a second policy.
    let tcp_80 = netpol("x", "tcp-port", a_ports(json!([{ "port": 80 }])));
    let tcp_81 = netpol("x", "tcp-port", a_ports(json!([{ "port": 81 }])));
    b.steps(
        "policy-update-port-80-to-81",
        vec![Step::new(vec![tcp_80.clone()]), Step::new(vec![tcp_81])],
    );

    let allow_all = netpol("x", "allow-all", json!({ "podSelector": {}, "ingress": [{}] }));
    b.steps(
        "ingress-allow-all-policy-takes-precedence",
        vec![
            Step::new(vec![tcp_80.clone()]),
            Step::new(vec![tcp_80, allow_all]),
        ],
    );
    let egress_80 = netpol("x", "egress-80", a_egress(json!([{ "ports": [{ "port": 80 }] }])));
    let egress_all = netpol(
        "x",
        "egress-all",
        json!({ "podSelector": {}, "policyTypes": ["Egress"], "egress": [{}] }),
    );
    b.steps(
        "egress-allow-all-policy-takes-precedence",
        vec![
            Step::new(vec![egress_80.clone()]),
            Step::new(vec![egress_80, egress_all]),
        ],
    );

    // An address in one policy's except and another's cidr is allowed (union).
    let except = json!([{ "ipBlock": { "cidr": everything(y_b), "except": [host_cidr(y_b)] } }]);
    let except = netpol("x", "except-y-b", a_from(except));
    let only_y_b = netpol(
        "x",
        "only-y-b",
        a_from(json!([{ "ipBlock": { "cidr": host_cidr(y_b) } }])),
    );
    b.steps(
        "ip-block-excepted-address-allowed-by-second-policy",
        vec![Step::new(vec![except.clone()]), Step::new(vec![except, only_y_b])],
    );
}

// ---------------------------------------------------------------------------------
// Random cases
// ---------------------------------------------------------------------------------

/// A random cluster, policies on it, and addresses outside it.
#[derive(Clone, Debug)]
pub struct RandomCase {
    pub cluster: Cluster,
    pub policies: Vec<Value>,
    /// Addresses no pod has: some inside the pods' 10.1.0.0/16, some in 192.0.2.0/24.
    pub external: Vec<IpAddr>,
}

/// xorshift64, seeded through splitmix64 so that neighbouring seeds diverge at once.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(z.max(1)) // xorshift never leaves 0
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// 0..n
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// lo..=hi
    fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn coin(&mut self) -> bool {
        self.below(2) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// Small vocabularies, so that selectors often match and the same port name means
// different numbers on different pods.
const LABEL_KEYS: &[&str] = &["app", "team", "env"];
const LABEL_VALUES: &[&str] = &["red", "green", "blue"];
const PORT_NAMES: &[&str] = &["http", "dns", "metrics"];
const PORT_NUMBERS: &[u16] = &[53, 80, 81, 8080];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];
const EXTERNAL: &[Ipv4Addr] = &[
    Ipv4Addr::new(10, 1, 0, 250),
    Ipv4Addr::new(10, 1, 200, 1),
    Ipv4Addr::new(192, 0, 2, 1),
    Ipv4Addr::new(192, 0, 2, 77),
];

/// Deterministic random cluster (2-3 namespaces, 3-8 pods in 10.1.0.0/16) and 1-4
/// policies exercising every selector operator, peer kind and port form, for
/// property tests.
pub fn random_case(seed: u64) -> RandomCase {
    let mut rng = Rng::new(seed);
    let namespaces: Vec<NsInfo> = (0..rng.between(2, 3))
        .map(|i| {
            let name = format!("n{i}");
            let mut labels = random_labels(&mut rng);
            labels.insert(NS_NAME_LABEL.into(), name.clone());
            NsInfo { name, labels }
        })
        .collect();
    let pods: Vec<PodInfo> = (0..rng.between(3, 8))
        .map(|i| PodInfo {
            namespace: rng.pick(&namespaces).name.clone(),
            name: format!("p{i}"),
            node: format!("node{}", i % 2),
            labels: random_labels(&mut rng),
            ip: IpAddr::V4(Ipv4Addr::new(10, 1, (i / 4) as u8, 10 + i as u8)),
            ports: random_ports(&mut rng),
        })
        .collect();
    let cluster = Cluster { namespaces, pods };
    let policies = (0..rng.between(1, 4))
        .map(|i| random_policy(&mut rng, &cluster, i))
        .collect();
    let external = EXTERNAL.iter().map(|ip| IpAddr::V4(*ip)).collect();
    RandomCase {
        cluster,
        policies,
        external,
    }
}

fn random_labels(rng: &mut Rng) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for key in LABEL_KEYS {
        if rng.coin() {
            labels.insert(key.to_string(), rng.pick(LABEL_VALUES).to_string());
        }
    }
    labels
}

/// Each vocabulary name at most once (names are unique within a pod).
fn random_ports(rng: &mut Rng) -> Vec<(String, u16, String)> {
    let mut ports = Vec::new();
    for name in PORT_NAMES {
        if rng.coin() {
            let port = *rng.pick(PORT_NUMBERS);
            ports.push((name.to_string(), port, rng.pick(PROTOCOLS).to_string()));
        }
    }
    ports
}

fn random_policy(rng: &mut Rng, cluster: &Cluster, i: usize) -> Value {
    let ns = rng.pick(&cluster.namespaces).name.clone();
    let mut spec = json!({ "podSelector": random_selector(rng) });
    match rng.below(4) {
        0 => {} // absent: defaulted
        1 => spec["policyTypes"] = json!(["Ingress"]),
        2 => spec["policyTypes"] = json!(["Egress"]),
        _ => spec["policyTypes"] = json!(["Ingress", "Egress"]),
    }
    for (rules, peers) in [("ingress", "from"), ("egress", "to")] {
        match rng.below(4) {
            0 => {}                       // absent
            1 => spec[rules] = json!([]), // present but empty
            _ => {
                let list: Vec<Value> = (0..rng.between(1, 2))
                    .map(|_| random_rule(rng, cluster, peers))
                    .collect();
                spec[rules] = json!(list);
            }
        }
    }
    netpol(&ns, &format!("p{i}"), spec)
}

fn random_rule(rng: &mut Rng, cluster: &Cluster, peers_field: &str) -> Value {
    let mut rule = json!({});
    match rng.below(4) {
        0 => {}
        1 => rule[peers_field] = json!([]),
        _ => {
            let peers: Vec<Value> = (0..rng.between(1, 2))
                .map(|_| random_peer(rng, cluster))
                .collect();
            rule[peers_field] = json!(peers);
        }
    }
    match rng.below(4) {
        0 => {}
        1 => rule["ports"] = json!([]),
        _ => {
            let ports: Vec<Value> = (0..rng.between(1, 2)).map(|_| random_port(rng)).collect();
            rule["ports"] = json!(ports);
        }
    }
    rule
}

fn random_selector(rng: &mut Rng) -> Value {
    let mut selector = json!({});
    let kind = rng.below(4); // 0: {}, 1: matchLabels, 2: matchExpressions, 3: both
    if kind == 1 || kind == 3 {
        let labels: BTreeMap<&str, &str> = (0..rng.between(1, 2))
            .map(|_| (*rng.pick(LABEL_KEYS), *rng.pick(LABEL_VALUES)))
            .collect();
        selector["matchLabels"] = json!(labels);
    }
    if kind >= 2 {
        let exprs: Vec<Value> = (0..rng.between(1, 2)).map(|_| random_expression(rng)).collect();
        selector["matchExpressions"] = json!(exprs);
    }
    selector
}

fn random_expression(rng: &mut Rng) -> Value {
    let key = *rng.pick(LABEL_KEYS);
    let operator = *rng.pick(&["In", "NotIn", "Exists", "DoesNotExist"]);
    let mut expr = json!({ "key": key, "operator": operator });
    if operator == "In" || operator == "NotIn" {
        let values: Vec<&str> = (0..rng.between(1, 2)).map(|_| *rng.pick(LABEL_VALUES)).collect();
        expr["values"] = json!(values);
    }
    expr
}

fn random_peer(rng: &mut Rng, cluster: &Cluster) -> Value {
    match rng.below(4) {
        0 => json!({ "podSelector": random_selector(rng) }),
        1 => json!({ "namespaceSelector": random_selector(rng) }),
        2 => json!({ "namespaceSelector": random_selector(rng), "podSelector": random_selector(rng) }),
        _ => json!({ "ipBlock": random_ip_block(rng, cluster) }),
    }
}

/// A CIDR and 0-2 excepts, each a strict subnet of it as the API server demands.
fn random_ip_block(rng: &mut Rng, cluster: &Cluster) -> Value {
    let pod_ip = rng.pick(&cluster.pods).ip;
    let cidrs = [
        "10.1.0.0/16".to_string(),
        "10.1.0.0/20".to_string(),
        "0.0.0.0/0".to_string(),
        "192.0.2.0/24".to_string(),
        host_cidr(pod_ip),
    ];
    let cidr = rng.pick(&cidrs).clone();
    let mut candidates: Vec<String> = ["10.1.0.0/28", "10.1.1.0/24", "10.1.200.0/24", "192.0.2.0/25"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    candidates.extend(cluster.pods.iter().map(|p| host_cidr(p.ip)));
    candidates.extend(EXTERNAL.iter().map(|ip| host_cidr(IpAddr::V4(*ip))));
    let outer = parse_cidr(&cidr);
    candidates.retain(|c| {
        let inner = parse_cidr(c);
        inner.prefix() > outer.prefix() && outer.contains(inner.network())
    });
    let except: Vec<String> = if candidates.is_empty() {
        Vec::new()
    } else {
        (0..rng.below(3)).map(|_| rng.pick(&candidates).clone()).collect()
    };
    if except.is_empty() && rng.coin() {
        json!({ "cidr": cidr })
    } else {
        json!({ "cidr": cidr, "except": except })
    }
}

fn random_port(rng: &mut Rng) -> Value {
    let mut port = json!({});
    if rng.below(4) != 0 {
        port["protocol"] = json!(rng.pick(PROTOCOLS));
    }
    match rng.below(4) {
        0 => {} // every port of the protocol
        1 => port["port"] = json!(rng.pick(PORT_NUMBERS)),
        2 => {
            let first = *rng.pick(PORT_NUMBERS);
            port["port"] = json!(first);
            port["endPort"] = json!(first + rng.below(4) as u16);
        }
        _ => port["port"] = json!(rng.pick(PORT_NAMES)),
    }
    port
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// xyz with x/a = 10.1.1.1 ... z/c = 10.1.3.3.
    fn xyz() -> Cluster {
        let index = |all: &str, one: &str| all.find(one).expect("known name") as u8 + 1;
        Cluster::xyz(
            |ns, pod| IpAddr::V4(Ipv4Addr::new(10, 1, index("xyz", ns), index("abc", pod))),
            |ns, _| format!("node-{ns}"),
        )
    }

    fn ip(c: &Cluster, ns: &str, pod: &str) -> IpAddr {
        c.pod(ns, pod).ip
    }

    /// A policy in x with this spec.
    fn in_x(spec: Value) -> Value {
        netpol("x", "p", spec)
    }

    /// Shorthand: a TCP/UDP connection between two xyz pods.
    fn can(c: &Cluster, p: &[Value], from: (&str, &str), to: (&str, &str), proto: &str, port: u16) -> bool {
        allowed(c, p, ip(c, from.0, from.1), ip(c, to.0, to.1), proto, port)
    }

    #[test]
    fn default_deny_ingress_isolates_but_lets_a_pod_reach_itself() {
        let c = xyz();
        let p = [netpol(
            "x",
            "deny",
            json!({ "podSelector": {}, "policyTypes": ["Ingress"] }),
        )];
        assert!(!can(&c, &p, ("y", "a"), ("x", "b"), "TCP", 80));
        assert!(!can(&c, &p, ("x", "a"), ("x", "b"), "UDP", 81));
        assert!(can(&c, &p, ("x", "b"), ("x", "b"), "TCP", 80));
        assert!(
            can(&c, &p, ("x", "a"), ("y", "b"), "TCP", 80),
            "egress is not isolated"
        );
        let outside: IpAddr = "192.0.2.9".parse().expect("address");
        assert!(!allowed(&c, &p, outside, ip(&c, "x", "a"), "TCP", 80));
        assert!(allowed(&c, &p, ip(&c, "x", "a"), outside, "TCP", 80));
    }

    #[test]
    fn pod_selector_alone_means_the_policy_namespace() {
        let c = xyz();
        let p = [in_x(a_from(json!([{ "podSelector": pod_is("b") }])))];
        assert!(can(&c, &p, ("x", "b"), ("x", "a"), "TCP", 80));
        assert!(!can(&c, &p, ("y", "b"), ("x", "a"), "TCP", 80));
        assert!(!can(&c, &p, ("x", "c"), ("x", "a"), "TCP", 80));
    }

    #[test]
    fn namespace_and_pod_selector_in_one_peer_are_anded() {
        let c = xyz();
        let p = [in_x(a_from(
            json!([{ "namespaceSelector": ns_is("y"), "podSelector": pod_is("b") }]),
        ))];
        assert!(can(&c, &p, ("y", "b"), ("x", "a"), "TCP", 80));
        assert!(!can(&c, &p, ("y", "c"), ("x", "a"), "TCP", 80));
        assert!(!can(&c, &p, ("x", "b"), ("x", "a"), "TCP", 80));
    }

    #[test]
    fn match_expression_operators() {
        let l = labels(&[("app", "web")]);
        let m = |op: &str, values: &[&str], key: &str| selector_matches(&expression(key, op, values), &l);
        assert!(m("In", &["web", "db"], "app") && !m("In", &["db"], "app") && !m("In", &["web"], "tier"));
        assert!(m("NotIn", &["db"], "app") && !m("NotIn", &["web"], "app") && m("NotIn", &["web"], "tier"));
        assert!(m("Exists", &[], "app") && !m("Exists", &[], "tier"));
        assert!(m("DoesNotExist", &[], "tier") && !m("DoesNotExist", &[], "app"));
        assert!(!m("Matches", &["web"], "app"), "unknown operators match nothing");
        assert!(selector_matches(&json!({}), &l));
    }

    #[test]
    fn ip_block_except_carves_out_addresses() {
        let c = xyz();
        let p = [in_x(a_from(
            json!([{ "ipBlock": { "cidr": "10.1.0.0/16", "except": ["10.1.2.0/24"] } }]),
        ))];
        assert!(can(&c, &p, ("z", "c"), ("x", "a"), "TCP", 80));
        assert!(!can(&c, &p, ("y", "a"), ("x", "a"), "TCP", 80));
        let inside: IpAddr = "10.1.9.9".parse().expect("address");
        let outside: IpAddr = "192.0.2.9".parse().expect("address");
        assert!(allowed(&c, &p, inside, ip(&c, "x", "a"), "UDP", 81));
        assert!(!allowed(&c, &p, outside, ip(&c, "x", "a"), "TCP", 80));
    }

    #[test]
    fn named_port_ingress_looks_at_the_selected_pod() {
        let mut c = xyz();
        let p = [in_x(a_ports(json!([{ "port": "serve-80-tcp" }])))];
        assert!(can(&c, &p, ("y", "b"), ("x", "a"), "TCP", 80));
        assert!(!can(&c, &p, ("y", "b"), ("x", "a"), "TCP", 81));
        assert!(!can(&c, &p, ("y", "b"), ("x", "a"), "UDP", 80));
        // Renumber x/a's port: the name follows the destination's own definition.
        c.pod_mut("x", "a").ports[0].1 = 81;
        assert!(can(&c, &p, ("y", "b"), ("x", "a"), "TCP", 81));
        assert!(!can(&c, &p, ("y", "b"), ("x", "a"), "TCP", 80));
    }

    #[test]
    fn named_port_egress_looks_at_the_destination_and_never_matches_outside() {
        let mut c = xyz();
        c.pod_mut("y", "b").ports[1].1 = 9090; // y/b calls 9090 serve-81-tcp
        let p = [in_x(a_egress(json!([{ "ports": [{ "port": "serve-81-tcp" }] }])))];
        assert!(can(&c, &p, ("x", "a"), ("y", "a"), "TCP", 81));
        assert!(!can(&c, &p, ("x", "a"), ("y", "b"), "TCP", 81));
        assert!(can(&c, &p, ("x", "a"), ("y", "b"), "TCP", 9090));
        let outside: IpAddr = "192.0.2.9".parse().expect("address");
        assert!(!allowed(&c, &p, ip(&c, "x", "a"), outside, "TCP", 81));
    }

    #[test]
    fn end_port_is_an_inclusive_range() {
        let c = xyz();
        let p = [in_x(a_ports(json!([{ "port": 70, "endPort": 80 }])))];
        assert!(can(&c, &p, ("y", "b"), ("x", "a"), "TCP", 80));
        assert!(can(&c, &p, ("y", "b"), ("x", "a"), "TCP", 70));
        assert!(!can(&c, &p, ("y", "b"), ("x", "a"), "TCP", 81));
        assert!(!can(&c, &p, ("y", "b"), ("x", "a"), "UDP", 80));
    }

    #[test]
    fn sctp_only_rule_isolates_tcp_and_udp() {
        let c = xyz();
        let p = [in_x(a_ports(json!([{ "protocol": "SCTP" }])))];
        assert!(can(&c, &p, ("y", "b"), ("x", "a"), "SCTP", 80));
        assert!(!can(&c, &p, ("y", "b"), ("x", "a"), "TCP", 80));
        assert!(!can(&c, &p, ("y", "b"), ("x", "a"), "UDP", 81));
    }

    #[test]
    fn default_policy_types_add_egress_only_when_egress_rules_exist() {
        let c = xyz();
        let spec = |egress: Value| json!({ "podSelector": pod_is("a"), "ingress": [{ "from": [{ "podSelector": pod_is("b") }] }], "egress": egress });
        let with = [netpol(
            "x",
            "p",
            spec(json!([{ "to": [{ "namespaceSelector": ns_is("y") }] }])),
        )];
        assert!(
            !can(&c, &with, ("x", "a"), ("z", "a"), "TCP", 80),
            "egress isolated"
        );
        assert!(can(&c, &with, ("x", "a"), ("y", "a"), "TCP", 80));
        assert!(
            !can(&c, &with, ("x", "c"), ("x", "a"), "TCP", 80),
            "ingress isolated"
        );
        let empty = [netpol("x", "p", spec(json!([])))];
        assert!(
            can(&c, &empty, ("x", "a"), ("z", "a"), "TCP", 80),
            "egress: [] is no egress rule"
        );
        assert!(!can(&c, &empty, ("x", "c"), ("x", "a"), "TCP", 80));
    }

    #[test]
    fn scenarios_are_many_unique_and_each_tests_something() {
        let c = xyz();
        let all = scenarios(&c);
        assert!(all.len() >= 45, "only {} scenarios", all.len());
        let names: BTreeSet<&str> = all.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), all.len(), "duplicate scenario names");
        for name in ALLOW_ALL_SCENARIOS {
            assert!(names.contains(name), "allow-all scenario {name} is missing");
        }
        for s in &all {
            assert!(!s.steps.is_empty(), "{} has no step", s.name);
            let restricts = s.steps.iter().any(|step| step.expected(&c).contains(&false));
            let meant_open = ALLOW_ALL_SCENARIOS.contains(&s.name.as_str());
            assert_eq!(
                restricts, !meant_open,
                "scenario {}: restricts = {restricts}",
                s.name
            );
        }
    }

    #[test]
    fn multi_step_scenarios_change_the_matrix_at_every_step() {
        let c = xyz();
        for s in scenarios(&c).iter().filter(|s| s.steps.len() > 1) {
            for pair in s.steps.windows(2) {
                assert_ne!(
                    pair[0].expected(&c),
                    pair[1].expected(&c),
                    "scenario {} has a step changing nothing",
                    s.name
                );
            }
        }
    }

    #[test]
    fn probes_cover_every_ordered_pair_twice_two_protocols() {
        let c = xyz();
        assert_eq!(probes(&c).len(), 9 * 9 * 4);
        assert!(matrix(&c, &[]).iter().all(|ok| *ok));
    }

    #[test]
    fn manifests_look_like_api_objects() {
        let c = xyz();
        let m = c.manifests();
        assert_eq!(m.len(), 12);
        assert_eq!(m[0]["metadata"]["labels"][NS_NAME_LABEL], "x");
        let pod = &m[3];
        assert_eq!(pod["kind"], "Pod");
        assert_eq!(pod["status"]["podIP"], "10.1.1.1");
        assert_eq!(pod["spec"]["containers"][0]["ports"][0]["name"], "serve-80-tcp");
    }

    #[test]
    fn random_cases_are_deterministic_and_well_formed() {
        for seed in 0..200 {
            let a = random_case(seed);
            let b = random_case(seed);
            assert_eq!(a.cluster, b.cluster);
            assert_eq!(a.policies, b.policies);
            assert!((2..=3).contains(&a.cluster.namespaces.len()));
            assert!((3..=8).contains(&a.cluster.pods.len()));
            assert!((1..=4).contains(&a.policies.len()));
            let ips: BTreeSet<IpAddr> = a.cluster.pods.iter().map(|p| p.ip).collect();
            assert_eq!(ips.len(), a.cluster.pods.len(), "pod IPs are unique");
            assert!(a.external.iter().all(|e| !ips.contains(e)));
            // The evaluator runs on every case without panicking.
            let addrs: Vec<IpAddr> = ips.iter().copied().chain(a.external.iter().copied()).collect();
            for src in &addrs {
                for dst in &addrs {
                    allowed(&a.cluster, &a.policies, *src, *dst, "TCP", 80);
                }
            }
        }
        assert_ne!(random_case(1).policies, random_case(2).policies);
    }
}
