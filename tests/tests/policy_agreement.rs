//! Property test (no root): on random pods, namespaces and policies, the agent's
//! policy compiler and datapath encoding decide every flow exactly as the
//! independent evaluator of the test code (`weir_lab::netpol`) does.
//!
//! The encoding is judged through `DesiredPolicy::admits`, which performs the
//! eBPF programs' lookups (endpoint, ipcache LPM, rule LPM for the peer's
//! identity and for every peer) on the compiled map contents.

use std::net::IpAddr;

use serde_json::Value;
use weir_lab::netpol::{RandomCase, allowed, random_case};
use weir_model::{
    Model, Protocol, parse_documents,
    policy::{PolicyEncoder, compile_policies},
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

#[test]
fn compiler_and_encoding_agree_with_the_simple_evaluator_on_random_cases() {
    let mut isolated_cases = 0;
    let mut denied = 0u64;
    for seed in 0..300 {
        let case = random_case(seed);
        let mut objects = case.cluster.manifests();
        objects.extend(case.policies.iter().cloned());
        let (compiled, _problems) = compile_policies(&model(&objects));
        let pods: Vec<IpAddr> = case.cluster.pods.iter().map(|p| p.ip).collect();
        let maps = PolicyEncoder::default().encode(&compiled, &pods);
        isolated_cases += usize::from(!maps.endpoints.is_empty());
        let addresses: Vec<IpAddr> = pods.iter().chain(&case.external).copied().collect();
        let ports = ports(&case);
        for src in &addresses {
            for dst in &addresses {
                if src == dst {
                    continue; // never leaves the pod: no datapath to ask
                }
                for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                    for &port in &ports {
                        let n = proto.ipproto();
                        let egress = maps.admits(*src, true, *dst, n, port).unwrap_or(true);
                        let ingress = maps.admits(*dst, false, *src, n, port).unwrap_or(true);
                        let expected =
                            allowed(&case.cluster, &case.policies, *src, *dst, proto.as_str(), port);
                        denied += u64::from(!expected);
                        assert_eq!(
                            egress && ingress,
                            expected,
                            "seed {seed}: {src} -> {dst} {proto}/{port}\ncluster: {:#?}\npolicies: {}",
                            case.cluster,
                            serde_json::to_string_pretty(&case.policies).expect("json")
                        );
                    }
                }
            }
        }
    }
    // The cases must exercise isolation, not only the everything-allowed default.
    assert!(
        isolated_cases > 200 && denied > 10_000,
        "{isolated_cases} cases isolate, {denied} flows denied"
    );
}
