//! Property test (no root): on random pods, namespaces and policies, the agent's
//! policy compiler and datapath encoding decide every flow exactly as the
//! independent evaluator of the test code (`weir_lab::netpol::oracle`) does. The
//! cases are proptest strategies (`weir_lab::netpol::generate`): a failing case is
//! shrunk to a small cluster and few rules before it is reported.
//!
//! The encoding is judged through `DesiredPolicy::admits`, which performs the
//! eBPF programs' lookups (endpoint, ipcache LPM, rule LPM for the peer's
//! identity and for every peer) on the compiled map contents.

use std::net::IpAddr;

use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{FileFailurePersistence, TestRunner},
};
use serde_json::Value;
use weir_lab::netpol::{RandomCase, allowed, random_cases};
use weir_model::{
    Model, Protocol, parse_documents,
    policy::{DesiredPolicy, PolicyEncoder, compile_policies},
};

fn model(objects: &[Value]) -> Model {
    let yaml = objects
        .iter()
        .map(|o| serde_saphyr::to_string(o).expect("YAML"))
        .collect::<Vec<_>>()
        .join("---\n");
    let (parsed, problems) = parse_documents(&yaml, "random.yaml");
    assert!(problems.is_empty(), "{problems:#?}");
    Model::from_objects(parsed)
}

/// Ports worth probing: every number a case uses, and its neighbours.
fn ports(case: &RandomCase) -> Vec<u16> {
    let mut ports = vec![1, 80, 81, 443, 8080, 65535];
    for pod in &case.cluster.pods {
        ports.extend(pod.ports.iter().map(|(_, p, _)| *p));
    }
    let text = serde_json::to_string(&case.policies).expect("json");
    for key in ["\"port\":", "\"endPort\":"] {
        for piece in text.split(key).skip(1) {
            let digits: String = piece.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(p) = digits.parse::<u16>() {
                ports.extend([p.saturating_sub(1), p, p.saturating_add(1)]);
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// A new connection: source, destination, protocol, destination port.
type Flow = (IpAddr, IpAddr, Protocol, u16);

/// Every flow between two addresses of `case` (pods and outside addresses), on every
/// protocol and every port worth probing.
fn flows(case: &RandomCase) -> Vec<Flow> {
    let addresses: Vec<IpAddr> = case
        .cluster
        .pods
        .iter()
        .map(|p| p.ip)
        .chain(case.external.iter().copied())
        .collect();
    let ports = ports(case);
    let mut flows = Vec::new();
    for &src in &addresses {
        for &dst in &addresses {
            if src == dst {
                continue; // never leaves the pod: no datapath to ask
            }
            for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                flows.extend(ports.iter().map(|&port| (src, dst, proto, port)));
            }
        }
    }
    flows
}

/// The agent's side: the case's objects compiled and encoded into the datapath's
/// maps for a node holding every pod.
fn encode(case: &RandomCase) -> DesiredPolicy {
    let mut objects = case.cluster.manifests();
    objects.extend(case.policies.iter().cloned());
    let (compiled, _problems) = compile_policies(&model(&objects));
    let pods: Vec<IpAddr> = case.cluster.pods.iter().map(|p| p.ip).collect();
    PolicyEncoder::default().encode(&compiled, &pods)
}

/// The oracle's verdict on `flow`.
fn expected(case: &RandomCase, (src, dst, proto, port): Flow) -> bool {
    allowed(&case.cluster, &case.policies, src, dst, proto.as_str(), port)
}

/// As many cases as the hand-written generator drew (seeds 0..300); a failing one is
/// remembered beside this file (policy_agreement.proptest-regressions) and replayed
/// first on the next run.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 300,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// The datapath's verdict (the egress lookups at the source, the ingress lookups
    /// at the destination) is the oracle's on every flow.
    #[test]
    fn compiler_and_encoding_agree_with_the_simple_evaluator_on_random_cases(case in random_cases()) {
        let maps = encode(&case);
        for flow in flows(&case) {
            let (src, dst, proto, port) = flow;
            let n = proto.ipproto();
            let egress = maps.admits(src, true, dst, n, port).unwrap_or(true);
            let ingress = maps.admits(dst, false, src, n, port).unwrap_or(true);
            prop_assert_eq!(
                egress && ingress,
                expected(&case, flow),
                "{} -> {} {}/{}\ncluster: {:#?}\npolicies: {}",
                src,
                dst,
                proto,
                port,
                case.cluster,
                serde_json::to_string_pretty(&case.policies).expect("json")
            );
        }
    }
}

/// The agreement above must not be vacuous: on a fixed draw of as many cases, most
/// isolate some pod and many flows are denied (not only the everything-allowed
/// default). A fixed draw, so that passing never depends on the run's seed.
#[test]
fn random_cases_exercise_isolation() {
    let mut runner = TestRunner::deterministic();
    let strategy = random_cases();
    let (mut isolated_cases, mut denied) = (0, 0);
    for _ in 0..config().cases {
        let case = strategy.new_tree(&mut runner).expect("a case").current();
        let maps = encode(&case);
        isolated_cases += usize::from(!maps.endpoints.is_empty());
        // Counted on the datapath's side, much cheaper than the oracle's: the two
        // agree, or the property test fails.
        denied += flows(&case)
            .into_iter()
            .filter(|&(src, dst, proto, port)| {
                let n = proto.ipproto();
                maps.admits(src, true, dst, n, port) == Some(false)
                    || maps.admits(dst, false, src, n, port) == Some(false)
            })
            .count();
    }
    assert!(
        isolated_cases > 200 && denied > 10_000,
        "{isolated_cases} cases isolate, {denied} flows denied"
    );
}
