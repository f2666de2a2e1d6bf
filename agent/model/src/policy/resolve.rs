//! One policy against the pods: which pods it selects, and each of its rules
//! with peers resolved to addresses and named ports to numbers.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use ipnetwork::IpNetwork;
use k8s_openapi::{
    api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::{
    pods::PodView,
    rules::{Allow, PeerMatch, PodPolicies, PortMatch, in_block},
    selector::selects,
};
use crate::{
    labels::Labels,
    model::Model,
    net::{Protocol, port_number},
    object::ObjectKey,
    pod::named_port,
};

/// Adds what `policy` (`key`) means for each local pod it selects to `out`
/// ([`PodView::local`]). A policy that selects pods, none of them local, is
/// still checked (the same reports as resolving it).
pub(super) fn apply(
    key: &ObjectKey,
    policy: &NetworkPolicy,
    cluster: &mut Cluster<'_>,
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
    let picks = |p: &&PodView| spec.pod_selector.as_ref().is_none_or(|s| selects(s, &p.labels));
    let of_policy = of_namespace(cluster.pods, &key.namespace);
    let selected: Vec<&PodView> = of_policy.iter().filter(|p| p.local).filter(picks).collect();
    // Checked: resolved for one of the pods it selects, against no pods, into
    // rules thrown away.
    let mut checked = PodPolicies::default();
    let (selected, out) = if !selected.is_empty() {
        (selected, out)
    } else if let Some(pod) = of_policy.iter().find(picks) {
        cluster.checking = true;
        (vec![pod], &mut checked)
    } else {
        return;
    };
    // Peers do not depend on the selected pod, only named ingress ports do:
    // peers are resolved once per policy (a scan of every pod per rule), on
    // the first pod selected, and what that reported is reported again for
    // each pod, as if resolved for each.
    let mut ingress_peers: Option<Vec<(PeerMatch, Vec<String>)>> = None;
    let mut egress: Option<(Vec<Allow>, Vec<String>)> = None;
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
                let peers = ingress_peers.get_or_insert_with(|| {
                    spec.ingress
                        .iter()
                        .flatten()
                        .map(|r| {
                            let mut said = Vec::new();
                            let peers = resolve_peers(&key.namespace, r.from.as_deref(), cluster, &mut |s| {
                                said.push(s)
                            });
                            (peers, said)
                        })
                        .collect()
                });
                spec.ingress
                    .iter()
                    .flatten()
                    .zip(peers.iter())
                    .map(|(r, (peers, said))| {
                        said.iter().for_each(|s| report(s.clone()));
                        Allow {
                            peers: peers.clone(),
                            ports: ports_of(r.ports.as_deref(), Some((pod, cluster.model)), report),
                        }
                    })
                    .collect()
            } else {
                let (rules, said) = egress.get_or_insert_with(|| {
                    let mut said = Vec::new();
                    let rules = spec
                        .egress
                        .iter()
                        .flatten()
                        .flat_map(|r| {
                            egress_rules(
                                &key.namespace,
                                r.to.as_deref(),
                                r.ports.as_deref(),
                                cluster,
                                &mut |s| said.push(s),
                            )
                        })
                        .collect();
                    (rules, said)
                });
                said.iter().for_each(|s| report(s.clone()));
                rules.clone()
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
    cluster.checking = false;
}

/// Egress rules with named ports resolve on each peer pod: one rule per peer pod
/// then (those peers' own numbers), plus the rule for the rest with numeric ports.
fn egress_rules(
    namespace: &str,
    to: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    cluster: &mut Cluster<'_>,
    report: &mut impl FnMut(String),
) -> Vec<Allow> {
    let named = ports
        .into_iter()
        .flatten()
        .any(|p| matches!(p.port, Some(IntOrString::String(_))));
    if !named {
        return vec![resolve(namespace, to, ports, None, cluster, report)];
    }
    let all = resolve(namespace, to, ports, None, cluster, report);
    // Pods named by a selector, or inside an ipBlock: a named port resolves on
    // any destination pod, so these rules depend on every pod.
    cluster.every_pod = true;
    let is_peer = |p: &PodView| match &all.peers {
        PeerMatch::All => true,
        PeerMatch::Some { pods, blocks } => p
            .ips
            .iter()
            .any(|ip| pods.contains(ip) || blocks.iter().any(|b| in_block(b, *ip))),
    };
    // Each peer pod with its own numbers...
    let mut rules: Vec<Allow> = cluster
        .pods()
        .iter()
        .filter(|p| is_peer(p))
        .map(|p| Allow {
            peers: PeerMatch::Some {
                pods: p.ips.iter().copied().collect(),
                blocks: Vec::new(),
            },
            ports: ports_of(ports, Some((p, cluster.model)), report),
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
    destination: Option<(&PodView, &Model)>,
    cluster: &mut Cluster<'_>,
    report: &mut impl FnMut(String),
) -> Allow {
    Allow {
        peers: resolve_peers(namespace, peers, cluster, report),
        ports: ports_of(ports, destination, report),
    }
}

/// The pods of namespace `ns`: `pods` is in namespace order (the model's).
fn of_namespace<'p>(pods: &'p [PodView], ns: &str) -> &'p [PodView] {
    let start = pods.partition_point(|p| p.namespace.as_str() < ns);
    let len = pods[start..].partition_point(|p| p.namespace == ns);
    &pods[start..start + len]
}

/// A peer's selectors as written (`Debug`), with the namespace it is written
/// in when it has no `namespaceSelector` (`""` otherwise): many policies name
/// the same peers (a monitoring namespace, the pods of an app), and each is a
/// scan of pods.
pub(super) type PeerKey = (String, String);

/// The addresses of the pods a peer's selectors pick, kept between compiles
/// until a change of pods could alter them ([`Peer::may_pick`]).
#[derive(Debug)]
pub(super) struct Peer {
    pub ips: Vec<IpAddr>,
    namespace_selector: Option<LabelSelector>,
    pod_selector: Option<LabelSelector>,
}

impl Peer {
    /// Whether this peer (`scope`: its key's namespace) picks a pod of
    /// `namespace` (labelled `namespace_labels`) with `labels`.
    pub fn may_pick(
        &self,
        scope: &str,
        namespace: &str,
        namespace_labels: Option<&BTreeMap<String, String>>,
        labels: &Labels,
    ) -> bool {
        let in_scope = match &self.namespace_selector {
            None => scope == namespace,
            Some(selector) => namespace_labels.is_some_and(|l| selects(selector, l)),
        };
        in_scope && self.pod_selector.as_ref().is_none_or(|s| selects(s, labels))
    }
}

/// What policies are resolved against: the pods (in namespace order, as the
/// model keeps them), every namespace's labels, the model (for named ports)
/// and the peers resolved so far; and what the policy being resolved read.
pub(super) struct Cluster<'c> {
    pub pods: &'c [PodView],
    pub namespaces: &'c BTreeMap<String, BTreeMap<String, String>>,
    pub model: &'c Model,
    peers: &'c mut HashMap<PeerKey, Peer>,
    /// The peers the policy being resolved named.
    pub used: Vec<PeerKey>,
    /// Whether its rules depend on every pod (named egress ports).
    pub every_pod: bool,
    /// Only checked (see `apply`): resolved against no pods.
    checking: bool,
}

impl<'c> Cluster<'c> {
    pub fn new(
        pods: &'c [PodView],
        namespaces: &'c BTreeMap<String, BTreeMap<String, String>>,
        model: &'c Model,
        peers: &'c mut HashMap<PeerKey, Peer>,
    ) -> Self {
        Self {
            pods,
            namespaces,
            model,
            peers,
            used: Vec::new(),
            every_pod: false,
            checking: false,
        }
    }

    /// The pods rules resolve against: none while a policy is only checked.
    fn pods(&self) -> &'c [PodView] {
        if self.checking { &[] } else { self.pods }
    }
}

/// The addresses and blocks a rule's peers name.
fn resolve_peers(
    namespace: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    cluster: &mut Cluster<'_>,
    report: &mut impl FnMut(String),
) -> PeerMatch {
    match peers {
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
                if cluster.pods().is_empty() {
                    // Checked only (see `apply`): no pod to pick.
                    continue;
                }
                let scope = if peer.namespace_selector.is_none() {
                    namespace
                } else {
                    ""
                };
                let key = (
                    scope.to_owned(),
                    format!("{:?} {:?}", peer.namespace_selector, peer.pod_selector),
                );
                let (pods, namespaces) = (cluster.pods, cluster.namespaces);
                cluster.used.push(key.clone());
                let picked = cluster.peers.entry(key).or_insert_with(|| {
                    // The pods of the namespaces the peer names (every pod's
                    // namespace is in `namespaces`), not a scan of the cluster.
                    let in_namespaces: Vec<&[PodView]> = match &peer.namespace_selector {
                        None => vec![of_namespace(pods, namespace)],
                        Some(selector) => namespaces
                            .iter()
                            .filter(|(_, labels)| selects(selector, *labels))
                            .map(|(ns, _)| of_namespace(pods, ns))
                            .collect(),
                    };
                    let picks =
                        |pod: &&PodView| peer.pod_selector.as_ref().is_none_or(|s| selects(s, &pod.labels));
                    Peer {
                        ips: in_namespaces
                            .into_iter()
                            .flatten()
                            .filter(picks)
                            .flat_map(|pod| pod.ips.iter().copied())
                            .collect(),
                        namespace_selector: peer.namespace_selector.clone(),
                        pod_selector: peer.pod_selector.clone(),
                    }
                });
                ips.extend(picked.ips.iter().copied());
            }
            PeerMatch::Some { pods: ips, blocks }
        }
    }
}

/// The ports of a rule; named ports resolved on `destination` (unresolvable:
/// nothing). A port the API server would refuse (an unknown protocol, a number
/// outside 1-65535, an `endPort` below `port`, past 65535 or beside a named or
/// missing `port`) is reported, and the whole rule then admits nothing: the
/// object could not have been created, so no part of it is guessed at.
fn ports_of(
    ports: Option<&[NetworkPolicyPort]>,
    destination: Option<(&PodView, &Model)>,
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
        match (&p.port, p.end_port) {
            (None, None) => out.push((proto, 1, u16::MAX)),
            (Some(IntOrString::Int(n)), end) => {
                let Some(lo) = port_number(*n) else {
                    report(format!("port {n} is outside 1-65535: the rule admits nothing"));
                    return PortMatch::Some(Vec::new());
                };
                let hi = match end.map(|e| (e, port_number(e))) {
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
                if let Some(n) = destination
                    .and_then(|(pod, model)| pod.facts(model))
                    .and_then(|pod| named_port(pod, name, proto))
                {
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
