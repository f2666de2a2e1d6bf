//! The policy compiler against small clusters: resolved rules, and the datapath
//! encoding agreeing with them flow by flow.

use std::net::IpAddr;

use super::*;
use crate::{
    model::Model,
    net::Protocol,
    object::{Kind, Object, ObjectKey},
    parse::parse_documents,
    problem::Problem,
    testing::{Rng, namespace, pod},
};

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
    let mut objects: Vec<Object> = Vec::new();
    for (n, ns) in ["x", "y"].iter().enumerate() {
        objects.push(namespace(ns).label("ns", ns).into());
        for (i, name) in ["a", "b"].iter().enumerate() {
            let ip = format!("10.0.{n}.{}", i + 1);
            objects.push(
                pod(ns, name)
                    .label("pod", name)
                    .named_port("serve-80", 80)
                    .named_port_of("serve-81", 81, "UDP")
                    .ips(&[&ip])
                    .into(),
            );
        }
    }
    let (parsed, problems) = parse_documents(policies, "test.yaml");
    assert!(problems.is_empty(), "{problems:#?}");
    objects.extend(parsed);
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
fn policies_union() {
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

/// A restarted agent's encoder, given the maps the last one left, numbers an
/// unchanged cluster exactly as they are; after a change, an identity keeps
/// its number only where it stands for the same prefixes, and the others are
/// fresh (above every number the maps hold).
#[test]
fn a_restart_keeps_the_numbers_that_mean_the_same() {
    let pods = ["x/a", "x/b", "y/a", "y/b"].map(ip);
    // x/a admits namespace y; y's pods send to a block and to `peers` of y.
    let policies = |peers: &str| {
        cluster(&format!(
            "{}{}",
            policy(
                "x",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n"
            ),
            policy(
                "y",
                &format!(
                    "  podSelector: {{}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: 192.168.0.0/16, except: [192.168.1.0/24]}}}}, {{podSelector: {peers}}}]}}]\n"
                )
            ),
        ))
    };
    let before = policies("{matchLabels: {pod: b}}");
    let mut first = PolicyEncoder::default();
    let maps = first.encode(&before, &pods);
    // Another compile by the same encoder, to move its numbers off their first
    // values: the restart must not depend on numbering in order.
    let maps = {
        let _ = first.encode(&cluster(""), &pods);
        let _ = first.encode(&cluster(""), &pods);
        let again = first.encode(&before, &pods);
        assert_ne!(again, maps, "numbers moved");
        again
    };
    assert!(!maps.ipcache.is_empty() && !maps.endpoints.is_empty());
    let mut restarted = PolicyEncoder::default();
    restarted.adopt(&maps);
    assert_eq!(restarted.encode(&before, &pods), maps, "nothing to write");

    // The cluster changed while no agent ran: y/a's addresses join the peer
    // set of y's egress (now every pod of y), y/b's do not change.
    let after = policies("{}");
    let mut restarted = PolicyEncoder::default();
    restarted.adopt(&maps);
    let changed = restarted.encode(&after, &pods);
    let max_old = maps.ipcache.values().max().copied().unwrap_or(0);
    let prefixes = |m: &DesiredPolicy, id: u32| -> Vec<IpcacheEntry> {
        m.ipcache
            .iter()
            .filter(|(_, v)| **v == id)
            .map(|(e, _)| *e)
            .collect()
    };
    let mut kept = 0;
    for id in changed
        .ipcache
        .values()
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
    {
        if (weir_common::IDENTITY_FIRST..=max_old).contains(&id) {
            assert_eq!(
                prefixes(&changed, id),
                prefixes(&maps, id),
                "identity {id} kept with other members"
            );
            kept += 1;
        }
    }
    assert!(kept > 0, "some identities mean the same: {changed:#?}");
    assert_eq!(
        changed.endpoints, maps.endpoints,
        "the same pods, isolated the same ways"
    );
}

/// A node's maps come from its own pods' rules alone: the same maps as
/// encoding every pod's, and the same problems, including those of a policy
/// that selects only another node's pods (checked, not resolved).
#[test]
fn a_node_resolves_only_its_own_pods_and_still_reports_every_policy() {
    let mut objects: Vec<Object> = Vec::new();
    for (n, ns) in ["x", "y"].iter().enumerate() {
        objects.push(namespace(ns).label("ns", ns).into());
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            objects.push(
                pod(ns, name)
                    .label("pod", name)
                    .named_port("serve-80", 80)
                    .node(if i == 0 { "n1" } else { "n2" })
                    .ips(&[&format!("10.0.{n}.{}", i + 1)])
                    .into(),
            );
        }
    }
    let policies = [
        // Selects pods of both nodes; peers by pod, namespace and block.
        policy(
            "x",
            "  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}, {namespaceSelector: {matchLabels: {ns: y}}}, {ipBlock: {cidr: 192.168.0.0/16}}], ports: [{port: serve-80}]}]\n  egress: [{to: [{podSelector: {matchLabels: {pod: c}}}], ports: [{port: serve-80}]}]\n",
        ),
        // Only n2's pods, with a part the API server would refuse.
        policy(
            "y",
            "  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{ipBlock: {cidr: not-a-cidr}}]}, {ports: [{port: 70000}]}]\n",
        ),
        // Only n1's pod, egress to every pod of y.
        policy(
            "y",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n",
        ),
    ]
    .join("---\n");
    let (parsed, problems) = parse_documents(&policies, "test.yaml");
    assert!(problems.is_empty(), "{problems:#?}");
    objects.extend(parsed);
    let model = Model::from_objects(objects);

    let (everything, all_problems) = compile_policies(&model);
    assert_eq!(all_problems.len(), 2, "{all_problems:#?}");
    for node in ["n1", "n2", "n3"] {
        let local = local_pod_ips(&model, node);
        let (maps, problems) = compile_node(&model, node, &mut PolicyEncoder::default());
        assert_eq!(
            maps,
            PolicyEncoder::default().encode(&everything, &local),
            "{node}"
        );
        let reasons = |p: &[Problem]| p.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(reasons(&problems), reasons(&all_problems), "{node}");
    }
    assert!(
        !compile_node(&model, "n1", &mut PolicyEncoder::default())
            .0
            .endpoints
            .is_empty(),
        "n1's pods are isolated"
    );
}

/// The policies of the random cluster: every kind of peer and port the
/// compiler tells apart, some selecting pods of one node only.
const RANDOM_POLICIES: [&str; 8] = [
    "  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: http}]}]\n",
    "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: t1}}, podSelector: {matchLabels: {app: c}}}]}]\n",
    "  podSelector: {matchLabels: {app: b}}\n  egress: [{to: [{podSelector: {matchExpressions: [{key: app, operator: In, values: [a, c]}]}}], ports: [{port: http}]}]\n",
    "  podSelector: {matchLabels: {app: c}}\n  policyTypes: [Ingress, Egress]\n  ingress: [{from: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.1.1.0/24]}}, {namespaceSelector: {}}]}]\n",
    "  podSelector: {matchLabels: {app: a}}\n  egress: [{to: [{ipBlock: {cidr: 10.1.0.0/16}}], ports: [{port: http}, {port: 53, protocol: UDP}]}]\n",
    "  podSelector: {matchLabels: {app: d}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: free}}}]}, {ports: [{port: 70000}]}]\n",
    "  podSelector: {matchLabels: {app: b}}\n  ingress: []\n",
    "  podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [a]}]}\n  ingress: [{from: [{podSelector: {matchLabels: {app: a}}, namespaceSelector: {matchLabels: {team: t2}}}], ports: [{port: 80, endPort: 90}]}]\n",
];

/// A random object of the random cluster: a pod (some sharing an address,
/// some finished or on the host's network, some in a namespace without a
/// Namespace object), a namespace or a policy; or `None` for its removal.
fn random_object(rng: &mut Rng) -> (ObjectKey, Option<Object>) {
    let namespaces = ["x", "y", "z", "free"];
    match rng.below(10) {
        0..=5 => {
            let ns = namespaces[rng.below(namespaces.len())];
            let name = format!("p{}", rng.below(8));
            let key = ObjectKey::new(Kind::Pod, ns, name.as_str());
            if rng.below(8) == 0 {
                return (key, None);
            }
            let ip = format!("10.1.{}.{}", rng.below(3), rng.below(6) + 1);
            let mut pod = pod(ns, &name)
                .label("app", ["a", "b", "c", "d"][rng.below(4)])
                .node(["n1", "n2"][rng.below(2)])
                .named_port("http", [80, 8080][rng.below(2)]);
            if rng.below(5) > 0 {
                pod = pod.ips(&[&ip]);
            }
            if rng.below(12) == 0 {
                pod = pod.phase("Succeeded");
            }
            (key, Some(pod.into()))
        }
        6 => {
            let ns = namespaces[rng.below(3)];
            let key = ObjectKey::new(Kind::Namespace, "", ns);
            if rng.below(4) == 0 {
                return (key, None);
            }
            (
                key,
                Some(namespace(ns).label("team", ["t1", "t2"][rng.below(2)]).into()),
            )
        }
        _ => {
            let ns = namespaces[rng.below(3)];
            let name = format!("np{}", rng.below(4));
            let key = ObjectKey::new(Kind::NetworkPolicy, ns, name.as_str());
            if rng.below(5) == 0 {
                return (key, None);
            }
            let spec = RANDOM_POLICIES[rng.below(RANDOM_POLICIES.len())];
            let yaml = format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
            );
            let (mut objects, problems) = parse_documents(&yaml, "random.yaml");
            assert!(problems.is_empty(), "{problems:#?}");
            (key, objects.pop())
        }
    }
}

/// The compiler that resolves only what a change touches agrees with one
/// that resolves everything afresh, after every change of a random sequence
/// (pods relabelled, moved between nodes, readdressed, finished, removed;
/// namespaces relabelled; policies added, changed, removed), for each node
/// and for the whole cluster: the same rules, local addresses and problems,
/// hence the same maps.
#[test]
fn resolving_only_what_changed_agrees_with_resolving_everything() {
    for seed in 1..=6u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut model = Model::new();
        let mut compilers = [None, Some("n1"), Some("n2")].map(|node| (node, PolicyCompiler::new(node)));
        for step in 0..300 {
            let mut changed = std::collections::BTreeSet::new();
            for _ in 0..=rng.below(3) {
                let (key, object) = random_object(&mut rng);
                match object {
                    Some(object) => {
                        model.upsert(object, "random.yaml");
                    }
                    None => {
                        model.remove(&key);
                    }
                }
                changed.insert(key);
            }
            for (node, compiler) in &mut compilers {
                let problems = compiler.compile(&model, Some(&changed));
                let mut fresh = PolicyCompiler::new(*node);
                let fresh_problems = fresh.compile(&model, None);
                let context = format!("seed {seed}, step {step}, node {node:?}, after {changed:?}");
                assert_eq!(compiler.policies(), fresh.policies(), "{context}");
                let sorted = |c: &PolicyCompiler| {
                    let mut ips = c.local_ips().to_vec();
                    ips.sort_unstable();
                    ips
                };
                assert_eq!(sorted(compiler), sorted(&fresh), "{context}");
                assert_eq!(problems, fresh_problems, "{context}");
            }
        }
    }
}
