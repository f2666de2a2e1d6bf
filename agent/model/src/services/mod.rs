//! The services compiler: Services and their endpoints in, the desired contents of
//! the service, backend, reverse-NAT and Maglev maps out. kube-proxy is the
//! reference for every rule; each function names the one it implements.

mod incremental;

pub(crate) use self::incremental::packed;
pub(crate) mod validate;
mod view;

#[cfg(test)]
mod incremental_tests;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use ipnetwork::IpNetwork;

use weir_common::{
    BACKEND_ACTIVE, BACKEND_TERMINATING, Backend, RevNat, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_AFFINITY,
    SVC_F_DROP_EMPTY, SVC_F_EXT_LOCAL, SVC_F_INT_LOCAL, SVC_F_MAGLEV, SVC_F_NODEPORT, SVC_F_SOURCE_RANGE,
    SVC_F_TWO_SCOPES, ServiceKey, ServiceValue,
};

use self::validate::{ServiceType, ValidPort, ValidService};
pub use self::{
    incremental::{Changed, HealthCheck, ServiceCompiler, Touched},
    validate::{
        ANNOTATION_LB_ALGORITHM, DEFAULT_AFFINITY_TIMEOUT, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME,
        MAX_AFFINITY_TIMEOUT,
    },
    view::{BackendState, BackendView, FrontendKind, FrontendView, Scope},
};
use crate::{
    endpoints::{Endpoint, EndpointSource},
    ids::IdAllocator,
    maglev::{self, maglev_table},
    model::Model,
    net::{Family, from_abi, to_abi},
    object::ObjectKey,
    problem::{Problem, ProblemReason},
    service::ServiceFacts,
    slice::NodeRef,
    topology::{Topology, TopologyMode, cluster_endpoints, is_usable, local_endpoints},
};

/// How new connections pick a backend among the slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LbAlgorithm {
    /// A random slot (the datapath's default; kube-proxy's behaviour).
    #[default]
    Random,
    /// Maglev consistent hashing on the flow: the same flow picks the same backend
    /// on every node, and backend changes move few flows.
    Maglev,
}

/// What the compile needs to know about the node it compiles for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeContext {
    /// The Node's name, compared with endpoints' `nodeName` for the Local
    /// policies and with their node hints.
    pub node_name: String,
    /// The Node's zone (its `topology.kubernetes.io/zone` label; `""`
    /// without one), compared with endpoints' zone hints.
    pub zone: String,
    /// Addresses NodePorts are served on (kube-proxy's default: all node addresses).
    pub node_ips: Vec<IpAddr>,
    /// Default for Services without the `weir.dev/lb-algorithm` annotation.
    pub lb_algorithm: LbAlgorithm,
    /// Maglev table size M, a prime (default [`maglev::DEFAULT_TABLE_SIZE`]).
    pub maglev_table_size: usize,
}

impl NodeContext {
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            zone: String::new(),
            node_ips: Vec::new(),
            lb_algorithm: LbAlgorithm::Random,
            maglev_table_size: maglev::DEFAULT_TABLE_SIZE,
        }
    }
}

/// The full desired content of the service maps, plus the human view of it.
///
/// `services`: slot 0 of each frontend holds the backend count, rev-NAT id, flags
/// and affinity timeout; slots `1..=count` hold `backend_id` (and the same
/// `rev_nat_id`), in backend (address, port) order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredServices {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, Backend>,
    /// Keyed by rev-NAT id widened to u32 (the map's key type).
    pub revnat: BTreeMap<u32, RevNat>,
    /// Maglev lookup tables by rev-NAT id, for frontends with [`SVC_F_MAGLEV`] and at
    /// least one backend in their slots.
    pub maglev: BTreeMap<u32, Vec<u32>>,
    /// The sources each frontend flagged [`SVC_F_SOURCE_RANGE`] admits, by
    /// rev-NAT id.
    pub source_ranges: BTreeMap<u32, Box<[IpNetwork]>>,
    /// One entry per frontend, in compile order (Services by namespace/name).
    pub frontends: Vec<FrontendView>,
}

impl DesiredServices {
    /// The backends in the slots of a frontend (any slot of `key` names it), in slot
    /// order; `None` if there is no such frontend.
    pub fn slot_backends(&self, key: &ServiceKey) -> Option<Vec<(u32, Backend)>> {
        let head = ServiceKey { slot: 0, ..*key };
        let count = self.services.get(&head)?.count;
        Some(
            (1..=count)
                .filter_map(|slot| self.services.get(&ServiceKey { slot, ..head }))
                .filter_map(|v| self.backends.get(&v.backend_id).map(|b| (v.backend_id, *b)))
                .collect(),
        )
    }
}

/// Compiles every Service of the model for `node`, from scratch. Ids come from
/// `ids`, which keeps them stable across compiles; ids no longer used are
/// released. Invalid Services are reported and skipped; all others compile.
/// (The agent keeps a [`ServiceCompiler`] instead, which recompiles only what a
/// change touches.)
pub fn compile_services(
    model: &Model,
    node: &NodeContext,
    ids: &mut IdAllocator,
) -> (DesiredServices, Vec<Problem>) {
    let mut compiler = ServiceCompiler::with_views(node.clone(), std::mem::take(ids));
    let problems = compiler.compile_all(model);
    let mut desired = compiler.desired().clone();
    desired.frontends = compiler.frontends().cloned().collect();
    *ids = compiler.into_ids();
    (desired, problems)
}

/// What one Service compiles to: its share of every map (`frontends` included),
/// and what it reported.
#[derive(Clone, Debug, Default)]
pub(crate) struct Fragment {
    pub desired: DesiredServices,
    pub problems: Vec<Problem>,
    /// Its endpoints come from the Pods its selector matches.
    pub from_pods: bool,
    /// It lost a frontend to another Service.
    pub conflict: bool,
}

/// Compiles one Service. `owners` holds the frontends other Services took
/// (those compiled before it, in a full compile); this one's are added.
#[expect(
    clippy::too_many_arguments,
    reason = "the compiler's state is borrowed piecewise: the incremental and full compiles own it differently"
)]
pub(crate) fn compile_service(
    node: &NodeContext,
    ids: &mut IdAllocator,
    owners: &mut BTreeMap<ServiceKey, String>,
    maglev_size_reported: &mut bool,
    model: &Model,
    key: &ObjectKey,
    service: &ServiceFacts,
    origin: &str,
    views: bool,
) -> Fragment {
    let mut compiler = Compiler {
        node,
        ids,
        owners,
        maglev_size_reported,
        views,
        desired: DesiredServices::default(),
        problems: Vec::new(),
        from_pods: false,
    };
    compiler.service(model, key, service, origin);
    let conflict = compiler
        .problems
        .iter()
        .any(|p| matches!(p.reason, ProblemReason::FrontendConflict { .. }));
    Fragment {
        desired: compiler.desired,
        problems: compiler.problems,
        from_pods: compiler.from_pods,
        conflict,
    }
}

struct Compiler<'c> {
    node: &'c NodeContext,
    ids: &'c mut IdAllocator,
    /// Which Service owns each frontend (slot-0 key), to report collisions.
    owners: &'c mut BTreeMap<ServiceKey, String>,
    maglev_size_reported: &'c mut bool,
    /// Whether the frontends' views are wanted (the agent keeps none: a
    /// Service's health check, which reads them, makes its own).
    views: bool,
    desired: DesiredServices,
    problems: Vec<Problem>,
    from_pods: bool,
}

/// One (service port, family) being compiled: its endpoints and their backend ids.
struct PortScope<'a> {
    service: &'a str,
    port_name: &'a str,
    usable: Vec<&'a Endpoint>,
    backend_ids: BTreeMap<(IpAddr, u16), u32>,
    common_flags: u32,
    affinity_timeout: Option<u32>,
    health_check_node_port: Option<u16>,
    source: crate::endpoints::EndpointSourceKind,
    /// The sources its LoadBalancer IPs admit (empty: every source).
    source_ranges: Box<[IpNetwork]>,
}

/// One frontend entry to write.
struct Frontend {
    kind: FrontendKind,
    ip: IpAddr,
    port: u16,
    scope: u8,
    flags: u32,
    /// How its slots were chosen among the ready endpoints (a Local policy's
    /// never are by hints).
    topology: Option<TopologyMode>,
}

impl Compiler<'_> {
    fn problem(&mut self, origin: &str, key: &ObjectKey, reason: ProblemReason) {
        let origin = if origin.is_empty() { "model" } else { origin };
        self.problems.push(Problem {
            origin: origin.to_owned(),
            object: Some(key.to_string()),
            reason,
        });
    }

    fn service(&mut self, model: &Model, key: &ObjectKey, service: &ServiceFacts, origin: &str) {
        for warning in &service.warnings {
            self.problem(origin, key, warning.clone());
        }
        let valid = match &service.checked {
            Ok(Some(valid)) => valid,
            Ok(None) => return,
            Err(reason) => return self.problem(origin, key, reason.clone()),
        };
        let source = EndpointSource::for_service(model, &key.namespace, &key.name, service);
        self.from_pods = source.kind() == crate::endpoints::EndpointSourceKind::Pods;

        let mut common_flags = 0;
        if valid.affinity_timeout.is_some() {
            common_flags |= SVC_F_AFFINITY;
        }
        if valid
            .maglev
            .unwrap_or(self.node.lb_algorithm == LbAlgorithm::Maglev)
        {
            if maglev::is_prime(self.node.maglev_table_size) {
                common_flags |= SVC_F_MAGLEV;
            } else if !*self.maglev_size_reported {
                *self.maglev_size_reported = true;
                self.problem(
                    origin,
                    key,
                    ProblemReason::BadMaglevSize(self.node.maglev_table_size),
                );
            }
        }

        let name = format!("{}/{}", key.namespace, key.name);
        let families: BTreeSet<Family> = valid.cluster_ips.iter().map(|ip| Family::of(*ip)).collect();
        let node = NodeRef::this_node(&self.node.node_name);
        for port in &valid.ports {
            for &family in &families {
                let endpoints = source.endpoints(&port.spec(), family);
                let mut scope = PortScope {
                    service: &name,
                    port_name: &port.name,
                    usable: endpoints.iter().filter(|e| is_usable(e)).collect(),
                    backend_ids: BTreeMap::new(),
                    common_flags,
                    affinity_timeout: valid.affinity_timeout,
                    health_check_node_port: valid.health_check_node_port,
                    source: source.kind(),
                    source_ranges: source_ranges(valid, family, self.node),
                };
                self.backends(origin, key, port, &mut scope);
                let topology = Topology::of(&endpoints, node, &self.node.zone);
                let cluster = cluster_endpoints(&endpoints, topology);
                let local = local_endpoints(&endpoints, node);
                let guarded = !scope.source_ranges.is_empty();
                for mut frontend in frontends(valid, port, family, self.node, guarded) {
                    let (slots, local_policy) = match (frontend.kind, frontend.scope) {
                        (FrontendKind::ClusterIP, _) if valid.internal_local => (&local, true),
                        (FrontendKind::ClusterIP, _) | (_, SCOPE_INTERNAL) => (&cluster, false),
                        _ if valid.external_local => (&local, true),
                        _ => (&cluster, false),
                    };
                    // kube-proxy drops what a Local policy cannot serve on this
                    // node while the Service has endpoints elsewhere; a Service
                    // without any endpoint is rejected.
                    if local_policy && slots.is_empty() && !cluster.is_empty() {
                        frontend.flags |= SVC_F_DROP_EMPTY;
                    }
                    if !local_policy {
                        frontend.topology = topology.mode();
                    }
                    self.frontend(origin, key, port, &scope, &frontend, slots);
                }
            }
        }
    }

    /// One backend entry per usable endpoint. A backend shared by several Services
    /// (same address, port and protocol) is one entry; it is active if any of them
    /// sees it ready.
    fn backends(&mut self, origin: &str, key: &ObjectKey, port: &ValidPort, scope: &mut PortScope<'_>) {
        for endpoint in &scope.usable {
            let (addr, family) = to_abi(endpoint.addr);
            let state = if endpoint.ready {
                BACKEND_ACTIVE
            } else {
                BACKEND_TERMINATING
            };
            let backend = Backend {
                addr,
                port: endpoint.port.to_be(),
                proto: port.protocol.ipproto(),
                family,
                state,
                _pad: [0; 3],
            };
            let id = match self.ids.backend_id(&backend) {
                Ok(id) => id,
                Err(e) => {
                    self.problem(origin, key, e.into());
                    continue;
                }
            };
            let entry = self.desired.backends.entry(id).or_insert(backend);
            if state == BACKEND_ACTIVE {
                entry.state = BACKEND_ACTIVE;
            }
            scope.backend_ids.insert((endpoint.addr, endpoint.port), id);
        }
    }

    fn frontend(
        &mut self,
        origin: &str,
        key: &ObjectKey,
        port: &ValidPort,
        scope: &PortScope<'_>,
        frontend: &Frontend,
        slots: &[&Endpoint],
    ) {
        let protocol = port.protocol;
        let flags = frontend.flags | scope.common_flags;
        let (addr, family) = to_abi(frontend.ip);
        let head = ServiceKey {
            addr,
            port: frontend.port.to_be(),
            slot: 0,
            proto: protocol.ipproto(),
            family,
            scope: frontend.scope,
            _pad: 0,
        };
        let address = SocketAddr::new(frontend.ip, frontend.port);
        if let Some(owner) = self.owners.get(&head) {
            let reason = ProblemReason::FrontendConflict {
                frontend: format!("{address}/{protocol}"),
                owner: owner.clone(),
            };
            return self.problem(origin, key, reason);
        }
        let rev_nat_id = match self.ids.rev_nat_id(&head) {
            Ok(id) => id,
            Err(e) => return self.problem(origin, key, e.into()),
        };
        self.owners.insert(head, key.to_string());

        // Slot order is (address, port): endpoints come sorted that way.
        let slot_ids: Vec<(u32, &Endpoint)> = slots
            .iter()
            .filter_map(|e| scope.backend_ids.get(&(e.addr, e.port)).map(|id| (*id, *e)))
            .take(usize::from(u16::MAX))
            .collect();
        let count = u16::try_from(slot_ids.len()).unwrap_or(u16::MAX);
        self.desired.services.insert(
            head,
            ServiceValue {
                backend_id: 0,
                count,
                rev_nat_id,
                flags,
                affinity_timeout: scope.affinity_timeout.unwrap_or(0),
                _pad: 0,
            },
        );
        for (slot, (backend_id, _)) in (1..=count).zip(&slot_ids) {
            self.desired.services.insert(
                ServiceKey { slot, ..head },
                ServiceValue {
                    backend_id: *backend_id,
                    rev_nat_id,
                    ..Default::default()
                },
            );
        }
        if flags & SVC_F_SOURCE_RANGE != 0 {
            self.desired
                .source_ranges
                .insert(rev_nat_id, scope.source_ranges.clone());
        }
        self.desired.revnat.insert(
            rev_nat_id,
            RevNat {
                addr,
                port: frontend.port.to_be(),
                family,
                _pad: 0,
            },
        );

        if flags & SVC_F_MAGLEV != 0 && !slot_ids.is_empty() {
            // Keyed by the backend's address, not its node-local id, so that every
            // node with the same slots (topology hints may give nodes others)
            // computes the same table.
            let keyed: Vec<(u32, String)> = slot_ids
                .iter()
                .map(|(id, e)| (*id, format!("{}/{protocol}", SocketAddr::new(e.addr, e.port))))
                .collect();
            match maglev_table(&keyed, self.node.maglev_table_size) {
                Ok(table) => {
                    self.desired.maglev.insert(rev_nat_id, table);
                }
                Err(_) => self.problem(
                    origin,
                    key,
                    ProblemReason::BadMaglevSize(self.node.maglev_table_size),
                ),
            }
        }

        if !self.views && scope.health_check_node_port.is_none() {
            return;
        }
        let mut backends: Vec<BackendView> = slot_ids
            .iter()
            .zip(1u16..)
            .map(|((id, e), slot)| backend_view(*id, e, Some(slot)))
            .collect();
        let in_slots: BTreeSet<u32> = slot_ids.iter().map(|(id, _)| *id).collect();
        backends.extend(scope.usable.iter().filter_map(|e| {
            let id = *scope.backend_ids.get(&(e.addr, e.port))?;
            (!in_slots.contains(&id)).then(|| backend_view(id, e, None))
        }));
        self.desired.frontends.push(FrontendView {
            service: scope.service.to_owned(),
            port_name: scope.port_name.to_owned(),
            kind: frontend.kind,
            address,
            protocol,
            scope: if frontend.scope == SCOPE_INTERNAL {
                Scope::Internal
            } else {
                Scope::External
            },
            rev_nat_id,
            flags: flag_names(flags),
            affinity_timeout: scope.affinity_timeout,
            health_check_node_port: scope.health_check_node_port,
            endpoint_source: scope.source,
            topology: frontend.topology,
            backends,
        });
    }
}

/// The frontends of one service port in one family:
/// - each cluster IP of the family, on `port`;
/// - NodePort/LoadBalancer Services: each node address of the family, on `nodePort`;
/// - each external IP and (LoadBalancer) ingress IP of the family, on `port`.
///
/// External frontends follow externalTrafficPolicy. With `Local`, traffic from
/// outside may only reach this node's endpoints, but traffic from inside the cluster
/// (pods, the node itself) to the same address goes to all endpoints, as kube-proxy
/// short-circuits it to the cluster-wide chain; the datapath tells the two apart with
/// a second, scope-internal entry (Cilium's two-scope scheme), flagged
/// [`SVC_F_TWO_SCOPES`] on the external one. Addresses of a family the Service has
/// no cluster IP in are ignored, as kube-proxy's per-family proxiers do.
/// `guarded`: the ingress IPs admit their source ranges only
/// ([`SVC_F_SOURCE_RANGE`]).
fn frontends(
    valid: &ValidService,
    port: &ValidPort,
    family: Family,
    node: &NodeContext,
    guarded: bool,
) -> Vec<Frontend> {
    let common = |kind, ip, port, scope, flags| Frontend {
        kind,
        ip,
        port,
        scope,
        flags,
        topology: None,
    };
    let in_family = |ip: &&IpAddr| Family::of(**ip) == family;
    let mut out = Vec::new();
    let cluster_flags = if valid.internal_local { SVC_F_INT_LOCAL } else { 0 };
    for ip in valid.cluster_ips.iter().filter(in_family) {
        out.push(common(
            FrontendKind::ClusterIP,
            *ip,
            port.port,
            SCOPE_EXTERNAL,
            cluster_flags,
        ));
    }
    let mut external = Vec::new();
    // Only NodePort and LoadBalancer Services open node ports.
    if valid.service_type != ServiceType::ClusterIp
        && let Some(node_port) = port.node_port
    {
        for ip in node.node_ips.iter().filter(in_family) {
            external.push((FrontendKind::NodePort, *ip, node_port, SVC_F_NODEPORT));
        }
    }
    for ip in valid.external_ips.iter().filter(in_family) {
        external.push((FrontendKind::ExternalIP, *ip, port.port, 0));
    }
    let lb_flags = if guarded { SVC_F_SOURCE_RANGE } else { 0 };
    let lb_ips = valid.load_balancer.iter().flat_map(|lb| &lb.ips);
    for ip in lb_ips.filter(in_family) {
        external.push((FrontendKind::LoadBalancer, *ip, port.port, lb_flags));
    }
    for (kind, ip, port, flags) in external {
        if valid.external_local {
            out.push(common(
                kind,
                ip,
                port,
                SCOPE_EXTERNAL,
                flags | SVC_F_EXT_LOCAL | SVC_F_TWO_SCOPES,
            ));
            out.push(common(kind, ip, port, SCOPE_INTERNAL, flags));
        } else {
            out.push(common(kind, ip, port, SCOPE_EXTERNAL, flags));
        }
    }
    out
}

/// The sources a Service's LoadBalancer IPs of `family` admit (kube-proxy's
/// firewall chain): its `loadBalancerSourceRanges` of the family, and, when
/// one of them holds an address of the node (any of its NodePort addresses,
/// where kube-proxy looks at its one node IP), the LoadBalancer IPs themselves
/// (a node that routes a VIP to itself sends from it). Sorted, each once.
/// Empty, as when the Service has ranges of the other family only: every
/// source.
fn source_ranges(valid: &ValidService, family: Family, node: &NodeContext) -> Box<[IpNetwork]> {
    let Some(lb) = &valid.load_balancer else {
        return Box::default();
    };
    let mut ranges: Vec<IpNetwork> = lb
        .source_ranges
        .iter()
        .filter(|net| Family::of(net.ip()) == family)
        .copied()
        .collect();
    if ranges
        .iter()
        .any(|net| node.node_ips.iter().any(|ip| net.contains(*ip)))
    {
        let vips = lb.ips.iter().filter(|ip| Family::of(**ip) == family);
        ranges.extend(vips.map(|ip| IpNetwork::from(*ip)));
    }
    ranges.sort_by_key(|net| (net.ip(), net.prefix()));
    ranges.dedup();
    ranges.into()
}

fn backend_view(id: u32, endpoint: &Endpoint, slot: Option<u16>) -> BackendView {
    BackendView {
        id,
        address: SocketAddr::new(endpoint.addr, endpoint.port),
        node_name: endpoint.node_name,
        state: if endpoint.ready {
            BackendState::Active
        } else {
            BackendState::Terminating
        },
        slot,
    }
}

fn flag_names(flags: u32) -> Vec<&'static str> {
    weir_common::SVC_FLAG_NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// The address of a service key or backend, for views and tests.
pub fn socket_addr(addr: [u8; 16], family: u8, port_be: u16) -> Option<SocketAddr> {
    from_abi(addr, family).map(|ip| SocketAddr::new(ip, u16::from_be(port_be)))
}
