//! NetworkPolicy (networking.k8s.io/v1) semantics: which pods a policy isolates
//! and what it lets through, resolved against the model's pods and namespaces.
//!
//! This is the first stage of the policy compiler: [`compile_policies`] turns
//! the policies into, per pod, `None` (not isolated in that direction) or the
//! union of the rules that apply to it, with selectors resolved to pod
//! addresses. [`PodPolicies::allows`] answers for one connection. The datapath
//! encoding (identities, ipcache, policy maps) is built on this form.
//!
//! The rules, from the API reference:
//! - a policy selects the pods of its namespace matching `podSelector` (empty:
//!   all); `policyTypes` defaults to `Ingress`, plus `Egress` when the policy has
//!   egress rules (as the API server defaults it);
//! - a pod is isolated in a direction when a policy selecting it has that type;
//!   what is allowed is the union of the rules of those policies; an empty rule
//!   list allows nothing, a rule without `from`/`to` allows every peer and a rule
//!   without `ports` every port of every protocol;
//! - peers: `podSelector` alone (pods of the policy's namespace),
//!   `namespaceSelector` alone (every pod of matching namespaces), both (matching
//!   pods in matching namespaces), `ipBlock` (addresses in `cidr` outside every
//!   `except`);
//! - ports: `protocol` (default TCP) with no `port` (all ports of it), a number
//!   (with `endPort`, a range), or a name, resolved on the destination pod's
//!   containers (for ingress the selected pod, for egress the peer pod).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnetwork::IpNetwork;
use k8s_openapi::{
    api::{
        core::v1::Pod,
        networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

mod encode;

pub use self::encode::{DesiredPolicy, IpcacheEntry, PolicyEncoder, RuleKey};

use crate::{
    endpoints::named_port,
    model::Model,
    net::Protocol,
    object::{Kind, Object, ObjectKey},
    problem::{Problem, ProblemReason},
};

/// The label the API server puts on every namespace: its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Whether `labels` satisfy `selector` (an empty selector matches everything).
/// An operator other than the four defined makes the selector match nothing.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let exact = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    exact
        && selector.match_expressions.iter().flatten().all(|e| {
            let value = labels.get(&e.key);
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// Which ports a rule opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortMatch {
    /// Every port of every protocol (a rule without `ports`).
    All,
    /// Each entry: a protocol and a range of ports (`1..=65535` for "every port").
    Some(Vec<(Protocol, u16, u16)>),
}

/// Which peers a rule admits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerMatch {
    /// Every peer (a rule without `from`/`to`).
    All,
    Some {
        /// Addresses of the pods the selectors pick.
        pods: BTreeSet<IpAddr>,
        /// `ipBlock`s: a range and its exceptions.
        blocks: Vec<(IpNetwork, Vec<IpNetwork>)>,
    },
}

/// One rule, resolved: peers and ports (named ports already numbers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allow {
    pub peers: PeerMatch,
    pub ports: PortMatch,
}

/// What applies to one pod, per direction: `None` when no policy isolates it
/// that way, else the rules whose union is allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodPolicy {
    pub ingress: Option<Vec<Allow>>,
    pub egress: Option<Vec<Allow>>,
}

/// The policies of the model, per pod address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodPolicies {
    pub pods: BTreeMap<IpAddr, PodPolicy>,
}

/// A pod as policies see it.
struct PodView<'a> {
    namespace: &'a str,
    labels: BTreeMap<String, String>,
    ips: Vec<IpAddr>,
    pod: &'a Pod,
}

impl PodPolicies {
    /// Whether a new connection from `src` to `dst` on `proto`/`port` is allowed:
    /// by `src`'s egress rules (when `src` is a pod here) and by `dst`'s ingress
    /// rules (when `dst` is). Addresses that are no pod are never isolated.
    pub fn allows(&self, src: IpAddr, dst: IpAddr, proto: Protocol, port: u16) -> bool {
        let pass = |rules: Option<&Vec<Allow>>, peer: IpAddr| {
            rules.is_none_or(|rules| rules.iter().any(|r| r.admits(peer, proto, port)))
        };
        pass(self.pods.get(&src).and_then(|p| p.egress.as_ref()), dst)
            && pass(self.pods.get(&dst).and_then(|p| p.ingress.as_ref()), src)
    }
}

impl Allow {
    fn admits(&self, peer: IpAddr, proto: Protocol, port: u16) -> bool {
        let peer_ok = match &self.peers {
            PeerMatch::All => true,
            PeerMatch::Some { pods, blocks } => {
                pods.contains(&peer) || blocks.iter().any(|b| in_block(b, peer))
            }
        };
        let port_ok = match &self.ports {
            PortMatch::All => true,
            PortMatch::Some(ports) => ports
                .iter()
                .any(|(p, lo, hi)| *p == proto && (*lo..=*hi).contains(&port)),
        };
        peer_ok && port_ok
    }
}

/// Whether an address is in an `ipBlock`: inside its CIDR, outside its exceptions.
fn in_block((cidr, except): &(IpNetwork, Vec<IpNetwork>), ip: IpAddr) -> bool {
    cidr.contains(ip) && !except.iter().any(|e| e.contains(ip))
}

/// Resolves every NetworkPolicy of the model. Invalid parts (a bad CIDR, a bad
/// protocol) are reported and left out of their rule, which then admits less,
/// never more.
pub fn compile_policies(model: &Model) -> (PodPolicies, Vec<Problem>) {
    // Every namespace carries `kubernetes.io/metadata.name` (the API server sets
    // it); one that pods name without a Namespace object (a manifest directory
    // may leave `default` out) has that label alone.
    let name_label = |name: &str, labels: Option<&BTreeMap<String, String>>| {
        let mut labels = labels.cloned().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
        labels
    };
    let mut namespaces: BTreeMap<&str, BTreeMap<String, String>> = model
        .of_kind(Kind::Namespace)
        .filter_map(|(key, entry)| match &entry.object {
            Object::Namespace(ns) => Some((
                key.name.as_str(),
                name_label(&key.name, ns.metadata.labels.as_ref()),
            )),
            _ => None,
        })
        .collect();
    let pods: Vec<PodView<'_>> = model
        .of_kind(Kind::Pod)
        .filter_map(|(key, entry)| match &entry.object {
            Object::Pod(pod) if takes_part(pod) => Some(PodView {
                namespace: key.namespace.as_str(),
                labels: pod.metadata.labels.clone().unwrap_or_default(),
                ips: pod_ips(pod),
                pod,
            }),
            _ => None,
        })
        .collect();
    for pod in &pods {
        namespaces
            .entry(pod.namespace)
            .or_insert_with(|| name_label(pod.namespace, None));
    }
    let mut out = PodPolicies::default();
    let mut problems = Vec::new();
    for (key, entry) in model.of_kind(Kind::NetworkPolicy) {
        let Object::NetworkPolicy(policy) = &entry.object else {
            continue;
        };
        let mut report = |reason: String| {
            problems.push(Problem {
                origin: entry.origin.clone(),
                object: Some(key.to_string()),
                reason: ProblemReason::BadPolicy(reason),
            })
        };
        apply(key, policy, &pods, &namespaces, &mut out, &mut report);
    }
    (out, problems)
}

/// Addresses of the pods on `node` that policies see (those it may isolate).
pub fn local_pod_ips(model: &Model, node: &str) -> Vec<IpAddr> {
    model
        .of_kind(Kind::Pod)
        .filter_map(|(_, entry)| match &entry.object {
            Object::Pod(pod) => Some(pod),
            _ => None,
        })
        .filter(|pod| takes_part(pod) && pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .flat_map(|pod| pod_ips(pod))
        .collect()
}

/// The policy maps of `node`: every policy resolved, then encoded for the
/// node's pods by `encoder` (which keeps its numbers between calls).
pub fn compile_node(model: &Model, node: &str, encoder: &mut PolicyEncoder) -> (DesiredPolicy, Vec<Problem>) {
    let (policies, problems) = compile_policies(model);
    (encoder.encode(&policies, &local_pod_ips(model, node)), problems)
}

/// Whether policies see a pod, as selected pod or as peer: not one on the host's
/// network (its address is the node's, which policies do not govern, as in
/// other dataplanes), nor one that has finished (its address may be another's
/// by now).
fn takes_part(pod: &Pod) -> bool {
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !host_network && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// A pod's addresses (`status.podIPs`, or `podIP`).
pub fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    ips
}

fn apply(
    key: &ObjectKey,
    policy: &NetworkPolicy,
    pods: &[PodView<'_>],
    namespaces: &BTreeMap<&str, BTreeMap<String, String>>,
    out: &mut PodPolicies,
    report: &mut impl FnMut(String),
) {
    let Some(spec) = policy.spec.as_ref() else {
        return;
    };
    // The API server's defaulting (SetDefaults_NetworkPolicy): no types means
    // Ingress, plus Egress when there are egress rules.
    let types: Vec<&str> = match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => types.iter().map(String::as_str).collect(),
        _ if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) => vec!["Ingress", "Egress"],
        _ => vec!["Ingress"],
    };
    let selected = pods.iter().filter(|p| {
        p.namespace == key.namespace && spec.pod_selector.as_ref().is_none_or(|s| selects(s, &p.labels))
    });
    for pod in selected {
        for &direction in &types {
            let ingress = match direction {
                "Ingress" => true,
                "Egress" => false,
                other => {
                    report(format!("unknown policyType {other:?}"));
                    continue;
                }
            };
            // Resolved per selected pod: named ports of ingress rules are its own.
            let resolved: Vec<Allow> = if ingress {
                spec.ingress
                    .iter()
                    .flatten()
                    .map(|r| {
                        resolve(
                            &key.namespace,
                            r.from.as_deref(),
                            r.ports.as_deref(),
                            Some(pod),
                            pods,
                            namespaces,
                            report,
                        )
                    })
                    .collect()
            } else {
                spec.egress
                    .iter()
                    .flatten()
                    .flat_map(|r| {
                        egress_rules(
                            &key.namespace,
                            r.to.as_deref(),
                            r.ports.as_deref(),
                            pods,
                            namespaces,
                            report,
                        )
                    })
                    .collect()
            };
            for ip in &pod.ips {
                let entry = out.pods.entry(*ip).or_default();
                let slot = if ingress {
                    &mut entry.ingress
                } else {
                    &mut entry.egress
                };
                slot.get_or_insert_with(Vec::new).extend(resolved.iter().cloned());
            }
        }
    }
}

/// Egress rules with named ports resolve on each peer pod: one rule per peer pod
/// then (those peers' own numbers), plus the rule for the rest with numeric ports.
fn egress_rules(
    namespace: &str,
    to: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    pods: &[PodView<'_>],
    namespaces: &BTreeMap<&str, BTreeMap<String, String>>,
    report: &mut impl FnMut(String),
) -> Vec<Allow> {
    let named = ports
        .into_iter()
        .flatten()
        .any(|p| matches!(p.port, Some(IntOrString::String(_))));
    if !named {
        return vec![resolve(namespace, to, ports, None, pods, namespaces, report)];
    }
    let all = resolve(namespace, to, ports, None, pods, namespaces, report);
    // Pods named by a selector, or inside an ipBlock: a named port resolves on
    // any destination pod.
    let is_peer = |p: &PodView<'_>| match &all.peers {
        PeerMatch::All => true,
        PeerMatch::Some { pods, blocks } => p
            .ips
            .iter()
            .any(|ip| pods.contains(ip) || blocks.iter().any(|b| in_block(b, *ip))),
    };
    // Each peer pod with its own numbers...
    let mut rules: Vec<Allow> = pods
        .iter()
        .filter(|p| is_peer(p))
        .map(|p| Allow {
            peers: PeerMatch::Some {
                pods: p.ips.iter().copied().collect(),
                blocks: Vec::new(),
            },
            ports: ports_of(ports, Some(p), report),
        })
        .collect();
    // ...and the rest (every peer, or the ipBlocks) by number only.
    let rest = match all.peers {
        PeerMatch::All => PeerMatch::All,
        PeerMatch::Some { blocks, .. } => PeerMatch::Some {
            pods: BTreeSet::new(),
            blocks,
        },
    };
    rules.push(Allow {
        peers: rest,
        ports: all.ports,
    });
    rules
}

fn resolve(
    namespace: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    destination: Option<&PodView<'_>>,
    pods: &[PodView<'_>],
    namespaces: &BTreeMap<&str, BTreeMap<String, String>>,
    report: &mut impl FnMut(String),
) -> Allow {
    let peers = match peers {
        None | Some([]) => PeerMatch::All,
        Some(peers) => {
            let mut ips = BTreeSet::new();
            let mut blocks = Vec::new();
            for peer in peers {
                if let Some(block) = &peer.ip_block {
                    let cidr = block.cidr.parse::<IpNetwork>();
                    let except: Result<Vec<IpNetwork>, _> = block
                        .except
                        .iter()
                        .flatten()
                        .map(|e| e.parse::<IpNetwork>())
                        .collect();
                    match (cidr, except) {
                        (Ok(cidr), Ok(except)) => blocks.push((cidr, except)),
                        _ => report(format!("ipBlock {:?}: not a CIDR", block.cidr)),
                    }
                    continue;
                }
                let in_namespace = |pod: &PodView<'_>| match &peer.namespace_selector {
                    None => pod.namespace == namespace,
                    Some(selector) => namespaces
                        .get(pod.namespace)
                        .is_some_and(|labels| selects(selector, labels)),
                };
                let picked =
                    |pod: &PodView<'_>| peer.pod_selector.as_ref().is_none_or(|s| selects(s, &pod.labels));
                for pod in pods.iter().filter(|p| in_namespace(p) && picked(p)) {
                    ips.extend(pod.ips.iter().copied());
                }
            }
            PeerMatch::Some { pods: ips, blocks }
        }
    };
    Allow {
        peers,
        ports: ports_of(ports, destination, report),
    }
}

/// The ports of a rule; named ports resolved on `destination` (unresolvable:
/// nothing). A port the API server would refuse (an unknown protocol, a number
/// outside 1-65535, an `endPort` below `port`, past 65535 or beside a named or
/// missing `port`) is reported, and the whole rule then admits nothing: the
/// object could not have been created, so no part of it is guessed at.
fn ports_of(
    ports: Option<&[NetworkPolicyPort]>,
    destination: Option<&PodView<'_>>,
    report: &mut impl FnMut(String),
) -> PortMatch {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return PortMatch::All;
    };
    let mut out = Vec::new();
    for p in ports {
        let Some(proto) = Protocol::parse(p.protocol.as_deref()) else {
            report(format!(
                "protocol {:?} unknown: the rule admits nothing",
                p.protocol
            ));
            return PortMatch::Some(Vec::new());
        };
        let number = |n: i32| u16::try_from(n).ok().filter(|n| *n != 0);
        match (&p.port, p.end_port) {
            (None, None) => out.push((proto, 1, u16::MAX)),
            (Some(IntOrString::Int(n)), end) => {
                let Some(lo) = number(*n) else {
                    report(format!("port {n} is outside 1-65535: the rule admits nothing"));
                    return PortMatch::Some(Vec::new());
                };
                let hi = match end.map(|e| (e, number(e))) {
                    None => lo,
                    Some((_, Some(hi))) if hi >= lo => hi,
                    Some((e, _)) => {
                        report(format!(
                            "endPort {e} is below port {lo} or outside 1-65535: the rule admits nothing"
                        ));
                        return PortMatch::Some(Vec::new());
                    }
                };
                out.push((proto, lo, hi));
            }
            (Some(IntOrString::String(name)), None) => {
                if let Some(n) = destination.and_then(|d| named_port(d.pod, name, proto)) {
                    out.push((proto, n, n));
                }
            }
            (port, Some(e)) => {
                report(format!(
                    "endPort {e} needs a numeric port, not {port:?}: the rule admits nothing"
                ));
                return PortMatch::Some(Vec::new());
            }
        }
    }
    PortMatch::Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_documents;

    /// Namespaces x and y (labelled `ns: x`, `ns: y`), pods a and b in each
    /// (`pod: a`, ...), each serving `serve-80` (80/TCP) and `serve-81` (81/UDP).
    fn cluster(policies: &str) -> PodPolicies {
        let (compiled, problems) = cluster_with_problems(policies);
        assert!(problems.is_empty(), "{problems:#?}");
        encoding_agrees(&compiled);
        compiled
    }

    /// [`cluster`], with the compiler's problems.
    fn cluster_with_problems(policies: &str) -> (PodPolicies, Vec<Problem>) {
        let mut yaml = String::new();
        for (n, ns) in ["x", "y"].iter().enumerate() {
            yaml += &format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n---\n"
            );
            for (i, pod) in ["a", "b"].iter().enumerate() {
                yaml += &format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}\nspec: {{containers: [{{name: c, image: i, ports: [{{name: serve-80, containerPort: 80}}, {{name: serve-81, containerPort: 81, protocol: UDP}}]}}]}}\nstatus: {{podIP: 10.0.{n}.{}, podIPs: [{{ip: 10.0.{n}.{}}}]}}\n---\n",
                    i + 1,
                    i + 1
                );
            }
        }
        yaml += policies;
        let (objects, problems) = parse_documents(&yaml, "test.yaml");
        assert!(problems.is_empty(), "{problems:#?}");
        compile_policies(&Model::from_objects(objects))
    }

    /// The datapath encoding (all pods local) decides every flow between the
    /// pods and some outside addresses as the resolved rules do.
    fn encoding_agrees(compiled: &PodPolicies) {
        let pods = ["x/a", "x/b", "y/a", "y/b"].map(ip);
        let outside = ["192.168.1.5", "192.168.2.5", "10.0.0.9"].map(|a| a.parse::<IpAddr>().expect("ip"));
        let maps = PolicyEncoder::default().encode(compiled, &pods);
        for src in pods.iter().chain(&outside) {
            for dst in pods.iter().chain(&outside) {
                for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                    for port in [79, 80, 81, 82, 443] {
                        let n = proto.ipproto();
                        let egress = maps.admits(*src, true, *dst, n, port).unwrap_or(true);
                        let ingress = maps.admits(*dst, false, *src, n, port).unwrap_or(true);
                        assert_eq!(
                            egress && ingress,
                            compiled.allows(*src, *dst, proto, port),
                            "{src} -> {dst} {proto}/{port}"
                        );
                    }
                }
            }
        }
    }

    fn ip(pod: &str) -> IpAddr {
        match pod {
            "x/a" => "10.0.0.1",
            "x/b" => "10.0.0.2",
            "y/a" => "10.0.1.1",
            "y/b" => "10.0.1.2",
            other => other,
        }
        .parse()
        .expect("ip")
    }

    fn tcp(p: &PodPolicies, from: &str, to: &str, port: u16) -> bool {
        p.allows(ip(from), ip(to), Protocol::Tcp, port)
    }

    fn policy(ns: &str, spec: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p-{}, namespace: {ns}}}\nspec:\n{spec}---\n",
            spec.len()
        )
    }

    #[test]
    fn no_policy_allows_everything_and_default_deny_isolates_one_direction() {
        let open = cluster("");
        assert!(tcp(&open, "x/a", "y/b", 80));
        let deny = cluster(&policy("x", "  podSelector: {}\n  policyTypes: [Ingress]\n"));
        assert!(!tcp(&deny, "x/b", "x/a", 80), "ingress isolated");
        assert!(!tcp(&deny, "y/a", "x/a", 80));
        assert!(tcp(&deny, "x/a", "y/a", 80), "egress not isolated");
        assert!(tcp(&deny, "y/a", "y/b", 80), "other namespaces unaffected");
        // Egress rules make Egress a type by default; an empty list does not.
        let egress = cluster(&policy(
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  egress: [{ports: [{port: 443}]}]\n",
        ));
        assert!(
            !tcp(&egress, "x/a", "y/a", 80) && !tcp(&egress, "y/a", "x/a", 80),
            "both directions isolated"
        );
        assert!(tcp(&egress, "x/b", "y/a", 80));
        let empty = cluster(&policy(
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  egress: []\n",
        ));
        assert!(tcp(&empty, "x/a", "y/a", 80) && !tcp(&empty, "y/a", "x/a", 80));
    }

    #[test]
    fn peers_by_pod_namespace_both_and_ip_block() {
        let by_pod = cluster(&policy(
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n",
        ));
        assert!(tcp(&by_pod, "x/b", "x/a", 80));
        assert!(
            !tcp(&by_pod, "y/b", "x/a", 80),
            "a podSelector alone means the policy's namespace"
        );
        let by_name = cluster(&policy(
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]\n",
        ));
        assert!(
            tcp(&by_name, "y/a", "x/a", 80) && !tcp(&by_name, "x/b", "x/a", 80),
            "the name label, always there"
        );
        let by_ns = cluster(&policy(
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n",
        ));
        assert!(tcp(&by_ns, "y/a", "x/a", 80) && tcp(&by_ns, "y/b", "x/a", 80));
        assert!(!tcp(&by_ns, "x/b", "x/a", 80));
        let both = cluster(&policy(
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]\n",
        ));
        assert!(tcp(&both, "y/b", "x/a", 80));
        assert!(!tcp(&both, "y/a", "x/a", 80) && !tcp(&both, "x/b", "x/a", 80));
        let block = cluster(&policy(
            "x",
            "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}}]}]\n",
        ));
        assert!(tcp(&block, "x/a", "192.168.2.5", 443));
        assert!(!tcp(&block, "x/a", "192.168.1.5", 443), "except");
        assert!(!tcp(&block, "x/a", "y/a", 80));
    }

    #[test]
    fn ports_protocols_named_ports_and_ranges() {
        let tcp80 = cluster(&policy(
            "x",
            "  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]\n",
        ));
        assert!(tcp(&tcp80, "y/a", "x/a", 80));
        assert!(!tcp(&tcp80, "y/a", "x/a", 81));
        assert!(
            !tcp80.allows(ip("y/a"), ip("x/a"), Protocol::Udp, 80),
            "a TCP rule never opens UDP"
        );
        let sctp = cluster(&policy(
            "x",
            "  podSelector: {}\n  ingress: [{ports: [{protocol: SCTP, port: 80}]}]\n",
        ));
        assert!(
            !tcp(&sctp, "y/a", "x/a", 80),
            "an SCTP-only policy still isolates TCP"
        );
        let named = cluster(&policy(
            "x",
            "  podSelector: {}\n  ingress: [{ports: [{port: serve-80}, {protocol: UDP, port: serve-81}]}]\n",
        ));
        assert!(tcp(&named, "y/a", "x/a", 80));
        assert!(named.allows(ip("y/a"), ip("x/a"), Protocol::Udp, 81));
        assert!(!named.allows(ip("y/a"), ip("x/a"), Protocol::Udp, 80));
        let egress_named = cluster(&policy(
            "x",
            "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: serve-80}]}]\n",
        ));
        assert!(tcp(&egress_named, "x/a", "y/b", 80), "resolved on the peer pod");
        assert!(!tcp(&egress_named, "x/a", "192.168.9.9", 80), "no pod, no name");
        let block_named = cluster(&policy(
            "x",
            "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 10.0.1.0/24}}], ports: [{port: serve-80}]}]\n",
        ));
        assert!(
            tcp(&block_named, "x/a", "y/b", 80),
            "named port on a pod inside the block"
        );
        assert!(!tcp(&block_named, "x/a", "x/b", 80), "outside the block");
        let range = cluster(&policy(
            "x",
            "  podSelector: {}\n  ingress: [{ports: [{port: 80, endPort: 81}]}]\n",
        ));
        assert!(tcp(&range, "y/a", "x/a", 81) && !tcp(&range, "y/a", "x/a", 82));
    }

    #[test]
    fn policies_union_and_match_expressions() {
        let two = policy(
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n",
        ) + &policy(
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 81}]}]\n",
        );
        let union = cluster(&two);
        assert!(tcp(&union, "x/b", "x/a", 80));
        assert!(tcp(&union, "y/a", "x/a", 81) && !tcp(&union, "y/a", "x/a", 80));
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let expr = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: "pod".into(),
                    operator: op.into(),
                    values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
                },
            ]),
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

    #[test]
    fn ports_the_api_server_refuses_make_their_rule_admit_nothing() {
        for bad in [
            "{port: 90, endPort: 85}",
            "{port: 90, endPort: 70000}",
            "{port: 0}",
            "{port: 70000}",
            "{port: serve-80, endPort: 90}",
            "{endPort: 90}",
            "{port: 80, protocol: ICMP}",
        ] {
            // A good port beside the bad one opens nothing either.
            let (compiled, problems) = cluster_with_problems(&policy(
                "x",
                &format!(
                    "  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{ports: [{{port: 81, protocol: UDP}}, {bad}]}}]\n"
                ),
            ));
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert!(
                problems[0].to_string().contains("admits nothing"),
                "{}",
                problems[0]
            );
            let (a, b) = (ip("x/a"), ip("x/b"));
            assert!(
                !compiled.allows(b, a, Protocol::Udp, 81),
                "{bad}: the rule still opened 81/UDP"
            );
            assert!(!compiled.allows(b, a, Protocol::Tcp, 90), "{bad}");
            assert!(compiled.allows(a, b, Protocol::Tcp, 90), "x/b is not isolated");
        }
    }
}
