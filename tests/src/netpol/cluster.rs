//! The cluster the policies apply to: namespaces and pods with their labels,
//! addresses and named ports, and the objects (Namespace, Pod, NetworkPolicy) as an
//! API server holds them, so that the agent can be given exactly what the oracle
//! judges.

use std::{collections::BTreeMap, net::IpAddr};

use serde_json::{Value, json};

/// The label the API server puts on every namespace, with the namespace's name.
pub(super) const NS_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub ip: IpAddr,
    /// named container ports: (name, port, protocol "TCP"/"UDP"/"SCTP")
    pub ports: Vec<(String, u16, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub namespaces: Vec<NsInfo>,
    pub pods: Vec<PodInfo>,
}

/// A label map from literal pairs.
pub(super) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Cluster {
    pub fn pod(&self, ns: &str, name: &str) -> &PodInfo {
        self.pods
            .iter()
            .find(|p| p.namespace == ns && p.name == name)
            .unwrap_or_else(|| panic!("no pod {ns}/{name} in the cluster"))
    }

    pub fn pod_mut(&mut self, ns: &str, name: &str) -> &mut PodInfo {
        self.pods
            .iter_mut()
            .find(|p| p.namespace == ns && p.name == name)
            .unwrap_or_else(|| panic!("no pod {ns}/{name} in the cluster"))
    }

    pub fn ns_mut(&mut self, name: &str) -> &mut NsInfo {
        self.namespaces
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no namespace {name} in the cluster"))
    }

    /// The namespace called `name`, if the cluster has it.
    pub fn namespace(&self, name: &str) -> Option<&NsInfo> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    /// The pod with address `ip`, if any: everything else is outside the cluster.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&PodInfo> {
        self.pods.iter().find(|p| p.ip == ip)
    }

    /// Namespace and Pod objects as an API server holds them (namespaces first).
    pub fn manifests(&self) -> Vec<Value> {
        let namespaces = self.namespaces.iter().map(|ns| {
            json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": { "name": ns.name, "labels": ns.labels },
            })
        });
        let pods = self.pods.iter().map(|pod| {
            let ports: Vec<Value> = pod
                .ports
                .iter()
                .map(|(name, port, proto)| json!({ "name": name, "containerPort": port, "protocol": proto }))
                .collect();
            crate::services::pod(
                &pod.namespace,
                &pod.name,
                json!(pod.labels),
                &pod.node,
                &[pod.ip],
                json!(ports),
            )
        });
        namespaces.chain(pods).collect()
    }
}

/// A NetworkPolicy object (`networking.k8s.io/v1`) in namespace `ns`.
pub(super) fn netpol(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "name": name, "namespace": ns },
        "spec": spec,
    })
}

/// `address/32` or `address/128`: an ipBlock naming one host.
pub(super) fn host_cidr(ip: IpAddr) -> String {
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    format!("{ip}/{bits}")
}

#[cfg(test)]
mod tests {
    use super::NS_NAME_LABEL;
    use crate::netpol::scenarios::numbered_xyz as xyz;

    #[test]
    fn manifests_look_like_api_objects() {
        let c = xyz();
        let m = c.manifests();
        assert_eq!(m.len(), 12);
        assert_eq!(m[0]["metadata"]["labels"][NS_NAME_LABEL], "x");
        let pod = &m[3];
        assert_eq!(pod["kind"], "Pod");
        assert_eq!(pod["status"]["podIP"], "10.1.1.1");
        assert_eq!(pod["spec"]["containers"][0]["ports"][0]["name"], "serve-80-tcp");
    }
}
