//! Where pods' traffic is masqueraded: the destinations inside the cluster
//! (the `weir_nomasq_v1` map), as ip-masq-agent's `nonMasqueradeCIDRs` plus
//! what is always inside: the cluster's pod CIDRs and the Nodes' addresses.
//! Everything else a pod reaches leaves from its node's address.

use std::{collections::BTreeMap, net::IpAddr};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use weir_common::NOMASQ_F_CLUSTER;

use crate::{Kind, Model, Object, nodes};

/// What the agent was told (its flags).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MasqConfig {
    /// `--cluster-cidr`: the cluster's pod CIDRs; empty: every Node's podCIDRs
    /// and [`Self::own_pod_cidrs`].
    pub cluster_cidrs: Vec<IpNetwork>,
    /// This node's pod CIDRs when its Node object gives none (`--pod-cidrs`).
    pub own_pod_cidrs: Vec<IpNetwork>,
    /// `--non-masquerade-cidrs`.
    pub non_masquerade: Vec<IpNetwork>,
    /// This node's own addresses (its namespace's, whatever the Node says).
    pub own_addresses: Vec<IpAddr>,
}

/// The contents of the `weir_nomasq_v1` map: prefix -> `NOMASQ_F_*`. A prefix
/// inside a cluster pod CIDR is flagged as inside the cluster too: the map
/// answers with the longest prefix only, and a narrower
/// `--non-masquerade-cidrs` entry must not take the cluster's flag away.
pub fn nomasq(model: &Model, config: &MasqConfig) -> BTreeMap<IpNetwork, u32> {
    let node_objects: Vec<&Node> = model
        .of_kind(Kind::Node)
        .filter_map(|(_, entry)| match &entry.object {
            Object::Node(n) => Some(n.as_ref()),
            _ => None,
        })
        .collect();
    let cluster: Vec<IpNetwork> = if config.cluster_cidrs.is_empty() {
        node_objects
            .iter()
            .flat_map(|n| nodes::pod_cidrs(n))
            .chain(config.own_pod_cidrs.iter().copied())
            .collect()
    } else {
        config.cluster_cidrs.clone()
    };
    let cluster: Vec<IpNetwork> = cluster.iter().map(normal).collect();
    let addresses = node_objects
        .iter()
        .flat_map(|n| nodes::node_addresses(n))
        .chain(config.own_addresses.iter().copied())
        // One address: a prefix of its full length.
        .map(IpNetwork::from);
    let mut out: BTreeMap<IpNetwork, u32> = BTreeMap::new();
    for net in addresses.chain(config.non_masquerade.iter().map(normal)) {
        out.entry(net).or_insert(0);
    }
    for net in &cluster {
        out.insert(*net, NOMASQ_F_CLUSTER);
    }
    for (net, flags) in out.iter_mut() {
        if cluster
            .iter()
            .any(|c| c.is_ipv4() == net.is_ipv4() && c.prefix() <= net.prefix() && c.contains(net.network()))
        {
            *flags |= NOMASQ_F_CLUSTER;
        }
    }
    out
}

/// `net` with its host bits cleared, as an LPM key wants it.
fn normal(net: &IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(*net)
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test should fail loudly on the first surprise"
)]
mod tests {
    use super::*;
    use crate::parse_documents;

    fn model(yaml: &str) -> Model {
        let (objects, problems) = parse_documents(yaml, "nodes.yaml");
        assert!(problems.is_empty(), "{problems:?}");
        Model::from_objects(objects)
    }

    const NODES: &str = "---
apiVersion: v1
kind: Node
metadata: {name: a}
spec: {podCIDRs: [10.244.1.0/24, fd00:1::/64]}
status: {addresses: [{type: InternalIP, address: 192.168.1.1}, {type: ExternalIP, address: 203.0.113.1}, {type: Hostname, address: a}]}
---
apiVersion: v1
kind: Node
metadata: {name: b}
spec: {podCIDR: 10.244.2.0/24}
status: {addresses: [{type: InternalIP, address: 192.168.1.2}]}
";

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn every_nodes_pod_cidrs_are_the_cluster_and_every_nodes_addresses_are_inside() {
        let config = MasqConfig {
            own_addresses: vec!["192.168.1.1".parse().unwrap(), "10.9.9.9".parse().unwrap()],
            ..Default::default()
        };
        let got = nomasq(&model(NODES), &config);
        let want: BTreeMap<IpNetwork, u32> = [
            ("10.244.1.0/24", NOMASQ_F_CLUSTER),
            ("10.244.2.0/24", NOMASQ_F_CLUSTER),
            ("fd00:1::/64", NOMASQ_F_CLUSTER),
            ("192.168.1.1/32", 0),
            ("192.168.1.2/32", 0),
            ("203.0.113.1/32", 0),
            ("10.9.9.9/32", 0),
        ]
        .into_iter()
        .map(|(n, f)| (net(n), f))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn cluster_cidr_wins_over_nodes_and_narrower_exceptions_stay_in_the_cluster() {
        let config = MasqConfig {
            cluster_cidrs: vec![net("10.244.0.0/16")],
            own_pod_cidrs: vec![net("10.99.0.0/24")],
            // Host bits are cleared; one range inside the cluster, one outside.
            non_masquerade: vec![net("10.244.7.1/24"), net("172.16.0.0/12")],
            own_addresses: vec![],
        };
        let got = nomasq(&model(NODES), &config);
        assert_eq!(got.get(&net("10.244.0.0/16")), Some(&NOMASQ_F_CLUSTER));
        assert_eq!(got.get(&net("10.244.7.0/24")), Some(&NOMASQ_F_CLUSTER));
        assert_eq!(got.get(&net("172.16.0.0/12")), Some(&0));
        // The Nodes' pod CIDRs and --pod-cidrs give way to --cluster-cidr.
        assert_eq!(got.get(&net("10.244.1.0/24")), None);
        assert_eq!(got.get(&net("10.99.0.0/24")), None);
        assert_eq!(got.get(&net("192.168.1.2/32")), Some(&0));
    }

    #[test]
    fn without_nodes_own_pod_cidrs_are_the_cluster() {
        let config = MasqConfig {
            own_pod_cidrs: vec![net("10.99.0.0/24")],
            ..Default::default()
        };
        let got = nomasq(&Model::default(), &config);
        assert_eq!(
            got,
            [(net("10.99.0.0/24"), NOMASQ_F_CLUSTER)].into_iter().collect()
        );
    }
}
