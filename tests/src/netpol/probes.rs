//! The probes an end-to-end test runs between pods, and what the oracle expects of
//! each: the reachability matrix.

use serde_json::Value;

use super::{cluster::Cluster, oracle::allowed};

/// What one probe checks: a new connection between two pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// (namespace, pod)
    pub from: (String, String),
    /// (namespace, pod)
    pub to: (String, String),
    pub proto: &'static str,
    pub port: u16,
}

impl Probe {
    /// What the policies say about this probe.
    pub fn expected(&self, cluster: &Cluster, policies: &[Value]) -> bool {
        let src = cluster.pod(&self.from.0, &self.from.1).ip;
        let dst = cluster.pod(&self.to.0, &self.to.1).ip;
        allowed(cluster, policies, src, dst, self.proto, self.port)
    }
}

/// Every ordered pair of pods (self pairs included), on TCP and UDP, ports 80 and 81.
pub fn probes(cluster: &Cluster) -> Vec<Probe> {
    let mut out = Vec::new();
    for from in &cluster.pods {
        for to in &cluster.pods {
            for proto in ["TCP", "UDP"] {
                for port in [80, 81] {
                    out.push(Probe {
                        from: (from.namespace.clone(), from.name.clone()),
                        to: (to.namespace.clone(), to.name.clone()),
                        proto,
                        port,
                    });
                }
            }
        }
    }
    out
}

/// The expected outcome of every probe of `probes(cluster)`, in that order.
pub fn matrix(cluster: &Cluster, policies: &[Value]) -> Vec<bool> {
    probes(cluster)
        .iter()
        .map(|p| p.expected(cluster, policies))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{matrix, probes};
    use crate::netpol::scenarios::numbered_xyz as xyz;

    #[test]
    fn probes_cover_every_ordered_pair_twice_two_protocols() {
        let c = xyz();
        assert_eq!(probes(&c).len(), 9 * 9 * 4);
        assert!(matrix(&c, &[]).iter().all(|ok| *ok));
    }
}
