//! The cluster's Nodes as the datapath needs them: each Node's pod CIDRs
//! (`spec.podCIDRs`, or the older `spec.podCIDR`) and its InternalIP of each
//! family, and from them the routes `--routing native` installs: every other
//! Node's pod CIDRs via that Node's InternalIP of the CIDR's family, and the
//! tunnels `--routing vxlan` keeps to the same addresses.

use std::{collections::BTreeMap, net::IpAddr};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use weir_common::TunnelEndpoint;

use crate::{Kind, Model, Object, net::to_abi, policy::IpcacheEntry};

/// A Node's pod CIDRs, as allocated by the controller manager (dual-stack:
/// one per family); unparsable entries are left out.
pub fn pod_cidrs(node: &Node) -> Vec<IpNetwork> {
    node.spec
        .as_ref()
        .and_then(|s| {
            s.pod_cidrs
                .clone()
                .filter(|c| !c.is_empty())
                .or_else(|| s.pod_cidr.clone().map(|c| vec![c]))
        })
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// A Node's addresses of `types` (`InternalIP`, `ExternalIP`), in its order.
pub fn addresses(node: &Node, types: &[&str]) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| types.contains(&a.type_.as_str()))
        .filter_map(|a| crate::net::parse_ip(&a.address))
        .collect()
}

/// The Node `name`, if the model holds it.
pub fn get<'m>(model: &'m Model, name: &str) -> Option<&'m Node> {
    match model.get(&crate::ObjectKey::new(Kind::Node, "", name)) {
        Some(crate::model::Entry {
            object: Object::Node(node),
            ..
        }) => Some(node),
        _ => None,
    }
}

/// A Node's zone: its `topology.kubernetes.io/zone` label, `""` without one
/// (what kube-proxy compares endpoints' zone hints with).
pub fn zone(node: &Node) -> &str {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(crate::topology::LABEL_ZONE))
        .map_or("", String::as_str)
}

/// A Node's own addresses, InternalIP and ExternalIP (where kube-proxy serves
/// NodePorts by default).
pub fn node_addresses(node: &Node) -> Vec<IpAddr> {
    addresses(node, &["InternalIP", "ExternalIP"])
}

/// A route to another Node's pods.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeRoute {
    /// The next hop: the Node's InternalIP of the CIDR's family.
    pub via: IpAddr,
    /// The Node it leads to, for logs.
    pub node: String,
}

/// Every other Node's pod CIDRs -> the route to them. A CIDR of a Node with no
/// InternalIP of its family (`tunnelled`: of any family, IPv4 first: an
/// overlay carries IPv6 pods between IPv4 nodes), or one that overlaps this
/// node's own pod CIDRs or another Node's, is left out and reported
/// (`problems`): a route there would send pods' traffic to the wrong place.
pub fn routes(model: &Model, own: &str, tunnelled: bool) -> (BTreeMap<IpNetwork, NodeRoute>, Vec<String>) {
    let mut problems = Vec::new();
    let nodes: Vec<(&str, &Node)> = model
        .of_kind(Kind::Node)
        .filter_map(|(key, entry)| match &entry.object {
            Object::Node(n) => Some((key.name.as_str(), n.as_ref())),
            _ => None,
        })
        .collect();
    let own_cidrs: Vec<IpNetwork> = nodes
        .iter()
        .filter(|(name, _)| *name == own)
        .flat_map(|(_, n)| pod_cidrs(n))
        .collect();
    let mut routes: BTreeMap<IpNetwork, NodeRoute> = BTreeMap::new();
    let mut taken: Vec<(IpNetwork, &str)> = own_cidrs.iter().map(|c| (*c, own)).collect();
    for (name, node) in nodes.iter().filter(|(name, _)| *name != own) {
        let internal = addresses(node, &["InternalIP"]);
        for cidr in pod_cidrs(node) {
            if let Some((_, other)) = taken.iter().find(|(t, _)| overlaps(t, &cidr)) {
                problems.push(format!(
                    "Node {name}: pod CIDR {cidr} overlaps Node {other}'s: no route installed"
                ));
                continue;
            }
            // Tunnels run over IPv4 wherever the Node has it: one outer
            // family keeps one overhead, so one pod MTU fits every tunnel.
            let via = if tunnelled {
                internal.iter().find(|a| a.is_ipv4()).or(internal.first())
            } else {
                internal.iter().find(|a| a.is_ipv4() == cidr.is_ipv4())
            };
            let Some(via) = via else {
                problems.push(format!(
                    "Node {name}: no InternalIP of pod CIDR {cidr}'s family: no route installed"
                ));
                continue;
            };
            taken.push((cidr, name));
            routes.insert(
                cidr,
                NodeRoute {
                    via: *via,
                    node: (*name).to_owned(),
                },
            );
        }
    }
    (routes, problems)
}

/// `--routing vxlan`: the tunnel map's contents for `routes`, each pod CIDR
/// -> the address of the Node that has it (the outer destination).
pub fn tunnels(routes: &BTreeMap<IpNetwork, NodeRoute>) -> BTreeMap<IpcacheEntry, TunnelEndpoint> {
    routes
        .iter()
        .map(|(cidr, route)| {
            let (addr, family) = to_abi(route.via);
            (
                IpcacheEntry::of(*cidr),
                TunnelEndpoint {
                    addr,
                    family,
                    _pad: [0; 3],
                },
            )
        })
        .collect()
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test should fail loudly on the first surprise"
)]
mod tests {
    use super::*;
    use crate::parse_documents;

    fn node(name: &str, cidrs: &[&str], internal: &[&str]) -> String {
        let cidrs: Vec<String> = cidrs.iter().map(|c| format!("\"{c}\"")).collect();
        let addrs: Vec<String> = internal
            .iter()
            .map(|a| format!("{{\"type\": \"InternalIP\", \"address\": \"{a}\"}}"))
            .chain(std::iter::once(
                "{\"type\": \"Hostname\", \"address\": \"h\"}".to_owned(),
            ))
            .collect();
        format!(
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nspec: {{podCIDRs: [{}]}}\nstatus: {{addresses: [{}]}}\n",
            cidrs.join(", "),
            addrs.join(", ")
        )
    }

    fn model(yaml: &str) -> Model {
        let (objects, problems) = parse_documents(yaml, "nodes.yaml");
        assert!(problems.is_empty(), "{problems:?}");
        Model::from_objects(objects)
    }

    #[test]
    fn every_other_node_is_reached_through_its_internal_ip_per_family() {
        let m = model(
            &[
                node(
                    "a",
                    &["10.244.1.0/24", "fd00:1::/64"],
                    &["192.168.1.1", "fc00::1"],
                ),
                node(
                    "b",
                    &["10.244.2.0/24", "fd00:2::/64"],
                    &["192.168.1.2", "fc00::2"],
                ),
                node("c", &["10.244.3.0/24"], &["192.168.1.3"]),
            ]
            .concat(),
        );
        let (routes, problems) = routes(&m, "a", false);
        assert!(problems.is_empty(), "{problems:?}");
        let got: Vec<(String, String, String)> = routes
            .iter()
            .map(|(c, r)| (c.to_string(), r.via.to_string(), r.node.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("10.244.2.0/24", "192.168.1.2", "b"),
                ("10.244.3.0/24", "192.168.1.3", "c"),
                ("fd00:2::/64", "fc00::2", "b"),
            ]
            .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
        );
    }

    #[test]
    fn tunnels_lead_each_pod_cidr_to_its_node() {
        let m = model(
            &[
                node("a", &["10.244.1.0/24"], &["192.168.1.1"]),
                node(
                    "b",
                    &["10.244.2.0/24", "fd00:2::/64"],
                    &["192.168.1.2", "fc00::2"],
                ),
            ]
            .concat(),
        );
        let (routes, _) = routes(&m, "a", true);
        let got: Vec<(String, String)> = tunnels(&routes)
            .iter()
            .map(|(k, t)| {
                let cidr = IpNetwork::new(
                    crate::net::from_abi(k.key.addr, k.key.family).unwrap(),
                    (k.prefix_len - weir_common::IPCACHE_PREFIX_BITS) as u8,
                )
                .unwrap();
                let node = crate::net::from_abi(t.addr, t.family).unwrap();
                (cidr.to_string(), node.to_string())
            })
            .collect();
        assert_eq!(
            got,
            [("10.244.2.0/24", "192.168.1.2"), ("fd00:2::/64", "192.168.1.2")]
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    #[test]
    fn unroutable_or_overlapping_cidrs_are_reported_not_routed() {
        let m = model(
            &[
                node("a", &["10.244.1.0/24"], &["192.168.1.1"]),
                // No IPv6 InternalIP for its IPv6 CIDR.
                node("b", &["10.244.2.0/24", "fd00:2::/64"], &["192.168.1.2"]),
                // Overlaps this node's own pods.
                node("c", &["10.244.1.128/25"], &["192.168.1.3"]),
                // No addresses yet (a Node registering).
                node("d", &["10.244.4.0/24"], &[]),
            ]
            .concat(),
        );
        let (native, problems) = routes(&m, "a", false);
        assert_eq!(
            native.keys().map(|c| c.to_string()).collect::<Vec<_>>(),
            ["10.244.2.0/24"]
        );
        // Through an overlay, node b's IPv6 pods are reached over IPv4.
        let (tunnelled, problems_tunnelled) = routes(&m, "a", true);
        assert_eq!(
            tunnelled
                .get(&"fd00:2::/64".parse::<IpNetwork>().unwrap())
                .map(|r| r.via.to_string()),
            Some("192.168.1.2".to_owned())
        );
        assert_eq!(problems_tunnelled.len(), 2, "{problems_tunnelled:?}");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("fd00:2::/64") && p.contains("InternalIP"))
        );
        assert!(problems.iter().any(|p| p.contains("overlaps Node a's")));
        assert!(problems.iter().any(|p| p.starts_with("Node d:")));
    }

    #[test]
    fn the_older_single_pod_cidr_field_counts_too() {
        let yaml = "apiVersion: v1\nkind: Node\nmetadata: {name: b}\nspec: {podCIDR: 10.244.9.0/24}\nstatus: {addresses: [{type: InternalIP, address: 192.168.1.9}]}\n";
        let (routes, _) = routes(&model(yaml), "a", false);
        assert_eq!(
            routes.values().map(|r| r.via.to_string()).collect::<Vec<_>>(),
            ["192.168.1.9"]
        );
        assert_eq!(routes.keys().next().unwrap().to_string(), "10.244.9.0/24");
    }
}
