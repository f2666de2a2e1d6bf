//! The oracle: whether Kubernetes NetworkPolicy (networking.k8s.io/v1) lets a new
//! connection through, written straight from the Kubernetes documentation
//! (<https://kubernetes.io/docs/concepts/services-networking/network-policies/>) and
//! the API reference.
//!
//! It shares no code with the agent's policy compiler (agent/model) on purpose: a bug
//! the two shared would never show up. It favours obviousness over speed (it rescans
//! every policy for every connection).

use std::{collections::BTreeMap, net::IpAddr};

use ipnetwork::IpNetwork;
use serde_json::{Value, json};

use super::cluster::{Cluster, PodInfo};

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

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use serde_json::{Value, json};

    use super::{allowed, selector_matches};
    use crate::netpol::{
        cluster::{Cluster, labels, netpol},
        scenarios::{a_egress, a_from, a_ports, expression, ns_is, numbered_xyz as xyz, pod_is},
    };

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
}
