//! Random clusters and policies for the property test (tests/tests/policy_agreement.rs)
//! that holds the agent's policy compiler to the oracle.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use ipnetwork::IpNetwork;
use serde_json::{Value, json};

use super::cluster::{Cluster, NS_NAME_LABEL, NsInfo, PodInfo, host_cidr, netpol};

fn parse_cidr(text: &str) -> IpNetwork {
    text.parse()
        .unwrap_or_else(|e| panic!("ipBlock CIDR {text:?} does not parse: {e}"))
}

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
    use std::{collections::BTreeSet, net::IpAddr};

    use super::random_case;
    use crate::netpol::oracle::allowed;

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
