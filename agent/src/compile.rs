//! `weir-agent compile`: what every map of a node would hold for a directory
//! of manifests, offline (no root, no kernel): the directory read as
//! `--source dir:` reads it, compiled by the agent's own compilers, rendered
//! by `weirctl`'s own views. A change to a cluster's Services or policies can
//! so be reviewed as a diff of datapath state (`compile` before and after).
//!
//! Numbers (rev-NAT, backend, endpoint ids, identities) are a fresh agent's:
//! allocated in the order objects sort (namespace, name), the same for the
//! same manifests. A running agent keeps the numbers it gave earlier, so its
//! `weirctl` views can differ from this in numbers, never in what they mean.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
    time::Duration,
};

use serde::Serialize;
use weir_model::{
    IdAllocator, Kind, NodeContext, Object, Problem,
    policy::{PolicyEncoder, compile_node},
    services::ServiceCompiler,
    topology::TopologyMode,
};

use crate::{
    ctl::{
        BackendRow, IpcacheRow, NameTable, PolicyRow, Row, ServiceRow, SourceRangeRow, backend_rows,
        frontend_text, ipcache_rows, policy_rows, service_rows, source_range_rows, to_table,
    },
    source::{DirSource, Source as _, SourceError},
};

/// Every map's desired contents for one node, in `weirctl`'s terms.
#[derive(Debug, Serialize)]
pub struct Compiled {
    pub node: String,
    /// The node's NodePort addresses: its Node object's InternalIP and
    /// ExternalIP addresses, when the directory has it.
    pub node_ips: Vec<IpAddr>,
    pub services: Vec<ServiceRow>,
    pub backends: Vec<BackendRow>,
    pub revnat: Vec<RevNatRow>,
    pub maglev: Vec<MaglevRow>,
    pub source_ranges: Vec<SourceRangeRow>,
    pub health_checks: Vec<HealthCheckRow>,
    pub isolated_endpoints: Vec<IsolatedRow>,
    pub ipcache: Vec<IpcacheRow>,
    pub policy: Vec<PolicyRow>,
    /// What was skipped, and why (as the agent logs and counts it).
    pub skipped: Vec<SkippedRow>,
}

/// A reverse-NAT entry: what replies from a frontend's backends are rewritten to.
#[derive(Debug, Serialize)]
pub struct RevNatRow {
    pub id: u32,
    pub frontend: String,
}

impl Row for RevNatRow {
    const HEADERS: &'static [&'static str] = &["ID", "FRONTEND"];

    fn cells(&self) -> Vec<String> {
        vec![self.id.to_string(), self.frontend.clone()]
    }
}

/// A Maglev lookup table: its entries' backend ids in order (JSON only), and
/// how many entries each backend has.
#[derive(Debug, Serialize)]
pub struct MaglevRow {
    pub rev_nat_id: u32,
    pub size: usize,
    /// Backend id -> entries.
    pub shares: BTreeMap<u32, usize>,
    /// The table, its backend ids space-separated (one diffable line).
    pub table: String,
}

impl Row for MaglevRow {
    const HEADERS: &'static [&'static str] = &["REV_NAT_ID", "SIZE", "SHARES (BACKEND=ENTRIES)"];

    fn cells(&self) -> Vec<String> {
        let shares: Vec<String> = self.shares.iter().map(|(id, n)| format!("{id}={n}")).collect();
        vec![
            self.rev_nat_id.to_string(),
            self.size.to_string(),
            shares.join(" "),
        ]
    }
}

/// A `healthCheckNodePort` the agent serves, and what it answers.
#[derive(Debug, Serialize)]
pub struct HealthCheckRow {
    pub port: u16,
    pub service: String,
    /// This node's ready endpoints: 200 with this count, or 503 at 0.
    pub local_endpoints: usize,
}

impl Row for HealthCheckRow {
    const HEADERS: &'static [&'static str] = &["PORT", "SERVICE", "LOCAL_ENDPOINTS"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.port.to_string(),
            self.service.clone(),
            self.local_endpoints.to_string(),
        ]
    }
}

/// A local pod address NetworkPolicy isolates.
#[derive(Debug, Serialize)]
pub struct IsolatedRow {
    pub address: String,
    pub endpoint_id: u32,
    pub ingress: bool,
    pub egress: bool,
}

impl Row for IsolatedRow {
    const HEADERS: &'static [&'static str] = &["ADDRESS", "ENDPOINT_ID", "ISOLATED"];

    fn cells(&self) -> Vec<String> {
        let dirs: Vec<&str> = [(self.ingress, "ingress"), (self.egress, "egress")]
            .into_iter()
            .filter_map(|(on, d)| on.then_some(d))
            .collect();
        vec![self.address.clone(), self.endpoint_id.to_string(), dirs.join(",")]
    }
}

#[derive(Debug, Serialize)]
pub struct SkippedRow {
    /// `file.yaml:LINE`.
    pub origin: String,
    /// `Kind namespace/name`, when known.
    pub object: Option<String>,
    pub reason: String,
}

impl Row for SkippedRow {
    const HEADERS: &'static [&'static str] = &["ORIGIN", "OBJECT", "REASON"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.origin.clone(),
            self.object.clone().unwrap_or_else(|| "-".to_owned()),
            self.reason.clone(),
        ]
    }
}

/// Compiles the manifests of `dir` for the node `node`, whose NodePort
/// addresses are `node_ips` (none: its Node object's) and whose zone is its
/// Node object's.
pub fn compile(dir: &Path, node: &str, node_ips: &[IpAddr]) -> Result<Compiled, SourceError> {
    let mut source = DirSource::new(dir.to_path_buf());
    // The first read takes every file, whatever the timeout.
    let changes = source.next(Duration::ZERO)?.unwrap_or_default();
    let model = source.model();
    let node_object = weir_model::nodes::get(model, node);
    // No addresses given: the InternalIP and ExternalIP ones, as the kube
    // source's NodePort addresses.
    let node_ips = if node_ips.is_empty() {
        node_object.map_or_else(Vec::new, weir_model::nodes::node_addresses)
    } else {
        node_ips.to_vec()
    };
    let context = NodeContext {
        node_ips: node_ips.clone(),
        zone: node_object.map_or("", weir_model::nodes::zone).to_owned(),
        ..NodeContext::new(node)
    };
    let mut problems = changes.problems;
    let mut compiler = ServiceCompiler::with_views(context, IdAllocator::new());
    problems.extend(compiler.compile_all(model));
    let desired = compiler.desired();
    let names: BTreeMap<u32, String> = compiler
        .frontends()
        .map(|f| {
            let name = if f.port_name.is_empty() {
                f.service.clone()
            } else {
                format!("{}:{}", f.service, f.port_name)
            };
            (f.rev_nat_id, name)
        })
        .collect();
    let source_ranges = source_range_rows(&desired.source_ranges, &desired.revnat, &names);
    let topologies: BTreeMap<u32, TopologyMode> = compiler
        .frontends()
        .filter_map(|f| Some((f.rev_nat_id, f.topology?)))
        .collect();
    let mut services = service_rows(desired);
    for row in &mut services {
        row.service = names.get(&row.rev_nat_id).cloned();
        row.topology = topologies.get(&row.rev_nat_id).copied();
    }
    let (policy, policy_problems) = compile_node(model, node, &mut PolicyEncoder::default());
    problems.extend(policy_problems);
    let names = pod_names(model);
    let mut backends = backend_rows(desired);
    for row in &mut backends {
        row.pod = names.pod(&row.address);
    }
    let mut rules = policy_rows(&policy);
    for row in &mut rules {
        row.pod = row.endpoint.as_deref().and_then(|e| names.pod(e));
    }
    Ok(Compiled {
        node: node.to_owned(),
        node_ips,
        backends,
        revnat: desired
            .revnat
            .iter()
            .map(|(id, r)| RevNatRow {
                id: *id,
                frontend: frontend_text(Some(r)),
            })
            .collect(),
        maglev: desired
            .maglev
            .iter()
            .map(|(id, table)| {
                let mut shares = BTreeMap::new();
                for backend in table {
                    *shares.entry(*backend).or_default() += 1;
                }
                let ids: Vec<String> = table.iter().map(u32::to_string).collect();
                MaglevRow {
                    rev_nat_id: *id,
                    size: table.len(),
                    shares,
                    table: ids.join(" "),
                }
            })
            .collect(),
        services,
        source_ranges,
        health_checks: compiler
            .health_checks()
            .into_iter()
            .map(|(port, h)| HealthCheckRow {
                port,
                service: format!("{}/{}", h.namespace, h.name),
                local_endpoints: h.local_endpoints,
            })
            .collect(),
        isolated_endpoints: policy
            .endpoints
            .iter()
            .map(|(k, v)| IsolatedRow {
                address: weir_model::net::from_abi(k.addr, k.family)
                    .map_or_else(|| "?".to_owned(), |a| a.to_string()),
                endpoint_id: v.id,
                ingress: v.flags & weir_common::POLICY_F_INGRESS != 0,
                egress: v.flags & weir_common::POLICY_F_EGRESS != 0,
            })
            .collect(),
        ipcache: ipcache_rows(&policy),
        policy: rules,
        skipped: skipped(problems),
    })
}

/// Every Pod's addresses, with its `namespace/name`: the cluster's, where the
/// agent's name table has its node's.
fn pod_names(model: &weir_model::Model) -> NameTable {
    let mut out = NameTable::default();
    for (_, entry) in model.of_kind(Kind::Pod) {
        if let Object::Pod(pod) = &entry.object {
            for ip in pod.own_addresses() {
                out.pods
                    .insert(ip, format!("{}/{}", pod.meta.namespace, pod.meta.name));
            }
        }
    }
    out
}

/// Problems as rows, each once (a compile can report what the parse did).
fn skipped(problems: Vec<Problem>) -> Vec<SkippedRow> {
    let mut seen = BTreeSet::new();
    problems
        .into_iter()
        .map(|p| SkippedRow {
            origin: p.origin,
            object: p.object,
            reason: p.reason.to_string(),
        })
        .filter(|r| seen.insert((r.origin.clone(), r.object.clone(), r.reason.clone())))
        .collect()
}

impl Compiled {
    /// Every section as a titled table, in the JSON's order.
    pub fn to_table(&self) -> String {
        let ips: Vec<String> = self.node_ips.iter().map(ToString::to_string).collect();
        let mut out = format!(
            "node {} (NodePort addresses: {})\n",
            self.node,
            if ips.is_empty() {
                "none".to_owned()
            } else {
                ips.join(", ")
            }
        );
        let mut section = |title: &str, table: String| {
            out.push_str(&format!("\n{title}:\n{table}"));
        };
        section("services", to_table(&self.services));
        section("backends", to_table(&self.backends));
        section("reverse NAT", to_table(&self.revnat));
        section("maglev tables", to_table(&self.maglev));
        section("LoadBalancer source ranges", to_table(&self.source_ranges));
        section("health check node ports", to_table(&self.health_checks));
        section("isolated endpoints", to_table(&self.isolated_endpoints));
        section("ipcache", to_table(&self.ipcache));
        section("policy", to_table(&self.policy));
        section("skipped", to_table(&self.skipped));
        out
    }
}
