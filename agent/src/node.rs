//! This node's Node object: its pod CIDRs become the IPAM ranges of the CNI
//! configuration the agent writes, and (with the cluster source, unless
//! `--nodeport-addresses` says otherwise) its addresses are where NodePorts are
//! served and what external flows to remote endpoints are source-NATed to;
//! its zone label is what endpoints' zone hints are compared with. All reread
//! whenever the Node changes.

use std::{collections::BTreeSet, net::IpAddr};

use ipnetwork::IpNetwork;
use serde_json::Value;
use tracing::{error, info, warn};
use weir_model::{Kind, Model, NodeContext, ObjectKey};

use crate::{
    cni_conf::{self, ConfOptions},
    status::{Conflist, Status},
    sync::SharedDatapath,
};

pub struct NodeWatch {
    name: String,
    /// NodePort addresses come from the Node object (the cluster source, no
    /// `--nodeport-addresses`).
    addresses_from_node: bool,
    /// Pod CIDRs when the Node object has none (`--pod-cidrs`, for the
    /// directory source); with the cluster source a Node without them is an
    /// error, not a guess.
    fallback_cidrs: Vec<IpNetwork>,
    cluster: bool,
    conf: Option<ConfOptions>,
    /// What the Node object said last.
    cidrs: Vec<IpNetwork>,
    addresses: Vec<IpAddr>,
    /// Its `topology.kubernetes.io/zone` label (`""`: none).
    zone: String,
    read: bool,
    /// The conflist as last written.
    written: Option<Value>,
}

impl NodeWatch {
    pub fn new(
        name: &str,
        cluster: bool,
        addresses_from_node: bool,
        fallback_cidrs: Vec<IpNetwork>,
        conf: Option<ConfOptions>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            addresses_from_node,
            fallback_cidrs,
            cluster,
            conf,
            cidrs: Vec::new(),
            addresses: Vec::new(),
            zone: String::new(),
            read: false,
            written: None,
        }
    }

    /// Reads the Node object when `changed` touches it (or not yet read);
    /// `true` when what it gives the service compiler changed (the NodePort
    /// addresses, the zone): see [`Self::context`].
    pub fn update(&mut self, model: &Model, changed: &BTreeSet<ObjectKey>, status: &Status) -> bool {
        let key = ObjectKey::new(Kind::Node, "", self.name.clone());
        if self.read && !changed.contains(&key) {
            return false;
        }
        self.read = true;
        let node = weir_model::nodes::get(model, &self.name);
        let mut cidrs: Vec<IpNetwork> = node.map_or_else(Vec::new, weir_model::nodes::pod_cidrs);
        if cidrs.is_empty() && !self.cluster {
            cidrs = self.fallback_cidrs.clone();
        }
        let problem = match (node, cidrs.is_empty()) {
            (None, true) if self.cluster => Some(format!("Node {} not found", self.name)),
            (Some(_), true) if self.cluster => Some(format!(
                "Node {} has no spec.podCIDRs: pods cannot get addresses (is the controller manager allocating node CIDRs?)",
                self.name
            )),
            _ => None,
        };
        if let Some(p) = &problem
            && self.conf.is_some()
        {
            error!(
                node = self.name,
                problem = p,
                "no CNI configuration can be written"
            );
        }
        status.node_problem(problem.filter(|_| self.conf.is_some()));
        if cidrs != self.cidrs {
            info!(node = self.name, pod_cidrs = ?cidrs, "pod CIDRs");
            self.cidrs = cidrs;
        }
        // A Node deleted (or not yet seen) keeps the zone it had, as with
        // kube-proxy: its endpoints' hints do not go with it.
        let zone = node.map_or(self.zone.as_str(), weir_model::nodes::zone);
        let mut changed = false;
        if zone != self.zone {
            info!(node = self.name, zone, "zone: recompiling");
            status.zone(zone);
            self.zone = zone.to_owned();
            changed = true;
        }
        if !self.addresses_from_node {
            return changed;
        }
        let addresses: Vec<IpAddr> = node.map(weir_model::nodes::node_addresses).unwrap_or_default();
        if addresses.is_empty() || addresses == self.addresses {
            return changed;
        }
        self.addresses = addresses;
        true
    }

    /// `current` with the Node's zone, and with its addresses as the NodePort
    /// addresses when they come from the Node.
    pub fn context(&self, current: &NodeContext) -> NodeContext {
        let from_node = self.addresses_from_node && !self.addresses.is_empty();
        NodeContext {
            zone: self.zone.clone(),
            node_ips: if from_node {
                self.addresses.clone()
            } else {
                current.node_ips.clone()
            },
            ..current.clone()
        }
    }

    /// Makes the first address of each family the source of external flows to
    /// remote endpoints (the `weir_node_v1` map), as at start.
    pub fn write_snat(&self, maps: &mut SharedDatapath, addresses: &[IpAddr]) {
        let mut dp = maps.lock();
        let mut node = dp.node.get(&0, 0).unwrap_or_default();
        let first = |v6: bool| addresses.iter().find(|a| a.is_ipv6() == v6).copied();
        node.v4 = first(false).map_or([0; 16], |a| weir_model::net::to_abi(a).0);
        node.v6 = first(true).map_or([0; 16], |a| weir_model::net::to_abi(a).0);
        if let Err(e) = dp.node.set(0, node, 0) {
            warn!(error = %e, "writing the node's source-NAT addresses");
        }
    }

    /// Whether nothing is left to do (the conflist written, or none wanted).
    pub fn settled(&self) -> bool {
        self.conf.is_none() || self.written.is_some()
    }

    /// Writes the CNI configuration once the agent serves its CNI socket and
    /// the node has pod CIDRs, and whenever they change.
    pub fn write_conf(&mut self, status: &Status) {
        let Some(options) = &self.conf else {
            return;
        };
        if !status.is_cni_serving() {
            status.conflist(Conflist::Waiting("the CNI socket is not served yet".into()));
            return;
        }
        if self.cidrs.is_empty() {
            status.conflist(Conflist::Waiting(format!("Node {} has no pod CIDRs", self.name)));
            return;
        }
        let conf = cni_conf::render(&self.cidrs, options);
        if self.written.as_ref() == Some(&conf) {
            return;
        }
        match cni_conf::write(&conf, options) {
            Ok(wrote) => {
                if wrote {
                    info!(path = %options.path.display(), pod_cidrs = ?self.cidrs, "CNI configuration written");
                }
                self.written = Some(conf);
                status.conflist(Conflist::Written);
            }
            Err(e) => {
                // Said once per distinct error: the loop comes round every second.
                let why = e.to_string();
                if !matches!(status.conflist_state(), Conflist::Refused(w) if w == why) {
                    error!(error = why, "the CNI configuration cannot be written");
                }
                status.conflist(Conflist::Refused(why));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use weir_model::{Model, parse_documents};

    use super::*;

    fn node_in(zone: Option<&str>) -> Model {
        node_at(zone, "192.168.1.10")
    }

    fn node_at(zone: Option<&str>, address: &str) -> Model {
        let labels = zone.map_or(String::new(), |z| format!("topology.kubernetes.io/zone: {z}"));
        let yaml = format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels: {{{labels}}}\nspec: {{podCIDR: 10.244.1.0/24}}\nstatus: {{addresses: [{{type: InternalIP, address: {address}}}]}}\n"
        );
        let (objects, problems) = parse_documents(&yaml, "node.yaml");
        assert!(problems.is_empty(), "{problems:?}");
        Model::from_objects(objects)
    }

    /// The zone is read from the Node and given to the service compiler; the
    /// NodePort addresses stay the flags' when they do not come from the Node.
    #[test]
    fn the_zone_follows_the_node_and_outlives_its_deletion() {
        let mut watch = NodeWatch::new("n1", false, false, Vec::new(), None);
        let status = Status::default();
        let changed = BTreeSet::from([ObjectKey::new(Kind::Node, "", "n1")]);
        let current = NodeContext {
            node_ips: vec!["192.168.1.10".parse().expect("ip")],
            ..NodeContext::new("n1")
        };
        assert!(watch.update(&node_in(Some("zone-a")), &changed, &status));
        let context = watch.context(&current);
        assert_eq!(
            (context.zone.as_str(), &context.node_ips),
            ("zone-a", &current.node_ips)
        );
        // Read again, unchanged: nothing to recompile.
        assert!(!watch.update(&node_in(Some("zone-a")), &changed, &status));
        assert!(watch.update(&node_in(Some("zone-b")), &changed, &status));
        assert_eq!(watch.context(&current).zone, "zone-b");
        // Deleted: the last zone stays (kube-proxy's topology ignores a
        // Node's deletion).
        assert!(!watch.update(&Model::from_objects(Vec::new()), &changed, &status));
        assert_eq!(watch.context(&current).zone, "zone-b");
        // Its label removed: no zone.
        assert!(watch.update(&node_in(None), &changed, &status));
        assert_eq!(watch.context(&current).zone, "");
    }

    /// With the NodePort addresses from the Node too: either changing is a
    /// change.
    #[test]
    fn zone_and_addresses_from_the_node_each_make_a_change() {
        let mut watch = NodeWatch::new("n1", true, true, Vec::new(), None);
        let status = Status::default();
        let changed = BTreeSet::from([ObjectKey::new(Kind::Node, "", "n1")]);
        let current = NodeContext::new("n1");
        assert!(watch.update(&node_at(Some("zone-a"), "192.168.1.10"), &changed, &status));
        let context = watch.context(&current);
        assert_eq!(context.zone, "zone-a");
        assert_eq!(context.node_ips, ["192.168.1.10".parse::<IpAddr>().expect("ip")]);
        // The zone alone.
        assert!(watch.update(&node_at(Some("zone-b"), "192.168.1.10"), &changed, &status));
        assert_eq!(watch.context(&current).zone, "zone-b");
        // The address alone.
        assert!(watch.update(&node_at(Some("zone-b"), "192.168.1.11"), &changed, &status));
        let context = watch.context(&current);
        assert_eq!(
            (context.zone.as_str(), context.node_ips),
            ("zone-b", vec!["192.168.1.11".parse::<IpAddr>().expect("ip")])
        );
        assert!(!watch.update(&node_at(Some("zone-b"), "192.168.1.11"), &changed, &status));
        assert_eq!(status.report()["zone"], "zone-b");
    }
}
