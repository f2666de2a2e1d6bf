//! A Service as the compiler uses it: the fields read, defaulted and checked the way
//! the API server's validation would have, so that the compiler itself never meets
//! an impossible value. A Service this rejects is reported and skipped alone.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use k8s_openapi::api::core::v1::{Service, ServicePort};

use crate::{
    endpoints::{PortSpec, Target},
    net::{Protocol, parse_ip},
    problem::ProblemReason,
};

/// Services carrying this label belong to another proxy (kube-proxy's informer
/// selects `!service.kubernetes.io/service-proxy-name`).
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Services carrying this label are headless, whatever their clusterIP says.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Per-Service choice of backend selection: `maglev` or `random`.
pub const ANNOTATION_LB_ALGORITHM: &str = "weir.dev/lb-algorithm";

/// `sessionAffinityConfig.clientIP.timeoutSeconds` default (3 hours) and maximum
/// (1 day), from the API's validation.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// A Service port, checked. Owned: the model keeps it in place of the API's
/// `ServicePort` (see `ServiceFacts`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ValidPort {
    /// `""` when absent: a single-port Service may leave its port unnamed.
    pub name: Box<str>,
    pub protocol: Protocol,
    pub port: u16,
    target: Target<Box<str>>,
    pub node_port: Option<u16>,
}

impl ValidPort {
    /// The port as endpoint lookup reads it.
    pub fn spec(&self) -> PortSpec<'_> {
        PortSpec {
            name: &self.name,
            protocol: self.protocol,
            port: self.port,
            target: self.target.as_deref(),
        }
    }
}

/// A Service the compiler implements, checked and defaulted. Boxed slices, not
/// vectors: the model keeps one per Service, sized to fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ValidService {
    pub service_type: ServiceType,
    pub cluster_ips: Box<[IpAddr]>,
    pub ports: Box<[ValidPort]>,
    /// `Some(timeout)` for `sessionAffinity: ClientIP`.
    pub affinity_timeout: Option<u32>,
    pub internal_local: bool,
    /// externalTrafficPolicy Local; only meaningful for NodePort and LoadBalancer
    /// Services (kube-proxy's `ExternalPolicyLocal`).
    pub external_local: bool,
    pub external_ips: Box<[IpAddr]>,
    /// What LoadBalancer Services with an ingress IP have (few Services: one
    /// pointer for the rest).
    pub load_balancer: Option<Box<LoadBalancer>>,
    /// `Some(true)`/`Some(false)` when the annotation chooses, `None` for the default.
    pub maglev: Option<bool>,
    pub health_check_node_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LoadBalancer {
    /// `status.loadBalancer.ingress[].ip`, except those with `ipMode: Proxy`
    /// (KEP-1860: the load balancer proxies, the node must not short-circuit
    /// the address).
    pub ips: Box<[IpAddr]>,
    /// `spec.loadBalancerSourceRanges`, as networks (`10.0.0.5/24` is
    /// `10.0.0.0/24`); empty: every source.
    pub source_ranges: Box<[IpNetwork]>,
}

/// `Ok(None)`: a Service this proxy does not implement (ExternalName, headless,
/// another proxy's). `Ok(Some(_))`: one to compile. `Err`: an invalid Service.
/// Non-fatal findings (an unknown annotation value) go to `warnings`.
pub(crate) fn validate(
    service: &Service,
    warnings: &mut Vec<ProblemReason>,
) -> Result<Option<ValidService>, ProblemReason> {
    let labels = service.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME) || l.contains_key(LABEL_HEADLESS)) {
        return Ok(None);
    }
    let Some(spec) = service.spec.as_ref() else {
        return Err(ProblemReason::NoClusterIp);
    };
    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        // DNS-only: no proxying.
        Some("ExternalName") => return Ok(None),
        Some(other) => return Err(ProblemReason::BadServiceType(other.to_owned())),
    };

    // clusterIPs is authoritative (dual-stack); clusterIP is its first element and
    // the only field older manifests set.
    let raw_ips: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec
            .cluster_ip
            .as_deref()
            .into_iter()
            .filter(|ip| !ip.is_empty())
            .collect(),
    };
    if raw_ips.first() == Some(&"None") {
        return Ok(None); // headless: DNS returns the endpoints, nothing to proxy
    }
    if raw_ips.is_empty() {
        return Err(ProblemReason::NoClusterIp);
    }
    let cluster_ips = parse_ips(&raw_ips, "spec.clusterIPs")?;

    let ports = spec
        .ports
        .iter()
        .flatten()
        .map(validate_port)
        .collect::<Result<Box<[_]>, _>>()?;

    let affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Some(DEFAULT_AFFINITY_TIMEOUT),
                Some(t) => match u32::try_from(t) {
                    Ok(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&t) => Some(t),
                    _ => return Err(ProblemReason::BadAffinityTimeout(i64::from(t))),
                },
            }
        }
        Some(other) => return Err(ProblemReason::BadSessionAffinity(other.to_owned())),
    };

    let internal_local = is_local_policy(
        spec.internal_traffic_policy.as_deref(),
        "spec.internalTrafficPolicy",
    )?;
    let external_local = is_local_policy(
        spec.external_traffic_policy.as_deref(),
        "spec.externalTrafficPolicy",
    )? && service_type != ServiceType::ClusterIp;

    let external_ips: Vec<&str> = spec.external_ips.iter().flatten().map(String::as_str).collect();
    let external_ips = parse_ips(&external_ips, "spec.externalIPs")?;

    let mut load_balancer_ips = Vec::new();
    if service_type == ServiceType::LoadBalancer {
        let ingress = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for entry in ingress.into_iter().flatten() {
            if entry.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            if let Some(ip) = entry.ip.as_deref().filter(|ip| !ip.is_empty()) {
                load_balancer_ips.extend(parse_ips(&[ip], "status.loadBalancer.ingress[].ip")?);
            }
        }
    }

    // kube-proxy's reading: each trimmed and parsed as a CIDR, those that do
    // not parse left out (and reported here). The API server rejects them.
    let mut source_ranges = Vec::new();
    if service_type == ServiceType::LoadBalancer {
        for raw in spec.load_balancer_source_ranges.iter().flatten() {
            match parse_cidr(raw.trim()) {
                Some(net) => source_ranges.push(net),
                None => warnings.push(ProblemReason::BadIp {
                    field: "spec.loadBalancerSourceRanges",
                    value: raw.clone(),
                }),
            }
        }
    }

    let annotation = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_LB_ALGORITHM));
    let maglev = match annotation.map(String::as_str) {
        None => None,
        Some("maglev") => Some(true),
        Some("random") => Some(false),
        Some(other) => {
            warnings.push(ProblemReason::BadLbAlgorithm(other.to_owned()));
            None
        }
    };

    // The API server sets it only for LoadBalancers with externalTrafficPolicy
    // Local; served for anything else, a stale one would drain good nodes.
    let health_check_node_port = spec
        .health_check_node_port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0 && external_local && service_type == ServiceType::LoadBalancer);

    Ok(Some(ValidService {
        service_type,
        cluster_ips: cluster_ips.into(),
        ports,
        affinity_timeout,
        internal_local,
        external_local,
        external_ips: external_ips.into(),
        load_balancer: (!load_balancer_ips.is_empty()).then(|| {
            Box::new(LoadBalancer {
                ips: load_balancer_ips.into(),
                source_ranges: source_ranges.into(),
            })
        }),
        maglev,
        health_check_node_port,
    }))
}

fn parse_ips(raw: &[&str], field: &'static str) -> Result<Vec<IpAddr>, ProblemReason> {
    raw.iter()
        .map(|ip| {
            parse_ip(ip).ok_or_else(|| ProblemReason::BadIp {
                field,
                value: (*ip).to_owned(),
            })
        })
        .collect()
}

/// A CIDR as Go's `ParseCIDRSloppy` (kube-proxy's) reads it, as its
/// network: `address/prefix`, the prefix decimal digits, an IPv4 address's
/// parts allowed leading zeros (`010.0.0.0/8` is `10.0.0.0/8`: objects
/// written before the API server refused them hold such).
fn parse_cidr(raw: &str) -> Option<IpNetwork> {
    let (addr, prefix) = raw.split_once('/')?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ip = match addr.parse() {
        Ok(ip) => ip,
        Err(_) => IpAddr::from(sloppy_ipv4(addr)?),
    };
    let net = IpNetwork::new(ip, prefix.parse().ok()?).ok()?;
    IpNetwork::new(net.network(), net.prefix()).ok()
}

/// Four decimal parts of at most 255 each, leading zeros allowed.
fn sloppy_ipv4(addr: &str) -> Option<[u8; 4]> {
    let mut octets = [0u8; 4];
    let mut parts = addr.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then_some(octets)
}

fn is_local_policy(value: Option<&str>, field: &'static str) -> Result<bool, ProblemReason> {
    match value {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => Err(ProblemReason::BadTrafficPolicy {
            field,
            value: other.to_owned(),
        }),
    }
}

fn validate_port(port: &ServicePort) -> Result<ValidPort, ProblemReason> {
    let name = port.name.as_deref().unwrap_or_default();
    let out_of_range = |field: &'static str, value: i64| ProblemReason::PortOutOfRange {
        port_name: name.to_owned(),
        field,
        value,
    };
    let number = u16::try_from(port.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or(out_of_range("port", port.port.into()))?;
    let protocol = Protocol::parse(port.protocol.as_deref()).ok_or_else(|| ProblemReason::BadProtocol {
        port_name: name.to_owned(),
        protocol: port.protocol.clone().unwrap_or_default(),
    })?;
    let target = Target::from_spec(port.target_port.as_ref(), number)
        .map_err(|n| out_of_range("targetPort", n.into()))?;
    let node_port = match port.node_port {
        None | Some(0) => None,
        Some(n) => Some(u16::try_from(n).map_err(|_| out_of_range("nodePort", n.into()))?),
    };
    Ok(ValidPort {
        name: name.into(),
        protocol,
        port: number,
        target: target.map(Box::from),
        node_port,
    })
}
