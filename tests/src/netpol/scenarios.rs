//! The upstream model: the "x, y, z / a, b, c" cluster ([`Cluster::xyz`]) and
//! scenarios on it modelled on the upstream e2e netpol suite
//! (test/e2e/network/netpol/network_policy.go; [`scenarios`]), which the end-to-end
//! test (tests/tests/root_netpol.rs) plays on lab pods.

use std::{collections::BTreeMap, net::IpAddr};

use serde_json::{Value, json};

use super::{
    cluster::{Cluster, NS_NAME_LABEL, NsInfo, PodInfo, host_cidr, labels, netpol},
    probes::matrix,
};

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

fn match_labels(key: &str, value: &str) -> Value {
    json!({ "matchLabels": { key: value } })
}

pub(super) fn pod_is(name: &str) -> Value {
    match_labels("pod", name)
}

pub(super) fn ns_is(name: &str) -> Value {
    match_labels("ns", name)
}

/// A selector with one expression (`values` omitted when empty, as for Exists).
pub(super) fn expression(key: &str, operator: &str, values: &[&str]) -> Value {
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
pub(super) fn a_egress(rules: Value) -> Value {
    json!({ "podSelector": pod_is("a"), "policyTypes": ["Egress"], "egress": rules })
}

/// Spec: ingress to pod a from these peers, any port.
pub(super) fn a_from(peers: Value) -> Value {
    a_ingress(json!([{ "from": peers }]))
}

/// Spec: ingress to pod a from anywhere on these ports.
pub(super) fn a_ports(ports: Value) -> Value {
    a_ingress(json!([{ "ports": ports }]))
}

/// Spec: egress from pod a to these peers, any port.
fn a_to(peers: Value) -> Value {
    a_egress(json!([{ "to": peers }]))
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

/// xyz with x/a = 10.1.1.1 ... z/c = 10.1.3.3, for the unit tests.
#[cfg(test)]
pub(super) fn numbered_xyz() -> Cluster {
    use std::net::Ipv4Addr;

    let index = |all: &str, one: &str| all.find(one).expect("known name") as u8 + 1;
    Cluster::xyz(
        |ns, pod| IpAddr::V4(Ipv4Addr::new(10, 1, index("xyz", ns), index("abc", pod))),
        |ns, _| format!("node-{ns}"),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{ALLOW_ALL_SCENARIOS, numbered_xyz as xyz, scenarios};

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
}
