//! Test fixtures built in code: Services, EndpointSlices, Pods and Namespaces
//! as the compilers read them, without a YAML layout to get right around the
//! one field a test is about. Each builder sets only what it is told, as a
//! manifest that omits a field leaves it unset (the compilers apply the API
//! server's defaults themselves). Tests whose point is a YAML layout (a
//! `kubectl get -o yaml` dump, a parsed quirk) keep their YAML.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{
            ClientIPConfig, Container, ContainerPort, LoadBalancerIngress, LoadBalancerStatus, Namespace,
            Pod, PodCondition, PodIP, PodSpec, PodStatus, Service, ServicePort, ServiceSpec, ServiceStatus,
            SessionAffinityConfig,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use crate::{endpoints::LABEL_SERVICE_NAME, object::Object};

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()).filter(|ns| !ns.is_empty()),
        ..ObjectMeta::default()
    }
}

fn insert(map: &mut Option<BTreeMap<String, String>>, key: &str, value: &str) {
    map.get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), value.to_owned());
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// A Service `namespace/name` with an empty spec.
pub(crate) fn service(namespace: &str, name: &str) -> ServiceBuilder {
    ServiceBuilder(Service {
        metadata: meta(namespace, name),
        spec: Some(ServiceSpec::default()),
        status: None,
    })
}

pub(crate) struct ServiceBuilder(Service);

impl ServiceBuilder {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.get_or_insert_with(ServiceSpec::default)
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        insert(&mut self.0.metadata.labels, key, value);
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        insert(&mut self.0.metadata.annotations, key, value);
        self
    }

    /// `spec.clusterIP` alone, as a hand-written manifest may have it.
    pub fn cluster_ip(mut self, ip: &str) -> Self {
        self.spec().cluster_ip = Some(ip.to_owned());
        self
    }

    /// `spec.clusterIP` and `spec.clusterIPs`, as the API server fills them.
    pub fn cluster_ips(mut self, ips: &[&str]) -> Self {
        let spec = self.spec();
        spec.cluster_ip = ips.first().map(|ip| (*ip).to_owned());
        spec.cluster_ips = Some(strings(ips));
        self
    }

    pub fn type_(mut self, type_: &str) -> Self {
        self.spec().type_ = Some(type_.to_owned());
        self
    }

    pub fn port(mut self, port: PortBuilder) -> Self {
        self.spec().ports.get_or_insert_with(Vec::new).push(port.0);
        self
    }

    pub fn selector(mut self, key: &str, value: &str) -> Self {
        insert(&mut self.spec().selector, key, value);
        self
    }

    pub fn external_ips(mut self, ips: &[&str]) -> Self {
        self.spec().external_ips = Some(strings(ips));
        self
    }

    pub fn source_ranges(mut self, ranges: &[&str]) -> Self {
        self.spec().load_balancer_source_ranges = Some(strings(ranges));
        self
    }

    pub fn internal_traffic_policy(mut self, policy: &str) -> Self {
        self.spec().internal_traffic_policy = Some(policy.to_owned());
        self
    }

    pub fn external_traffic_policy(mut self, policy: &str) -> Self {
        self.spec().external_traffic_policy = Some(policy.to_owned());
        self
    }

    pub fn health_check_node_port(mut self, port: i32) -> Self {
        self.spec().health_check_node_port = Some(port);
        self
    }

    pub fn publish_not_ready_addresses(mut self) -> Self {
        self.spec().publish_not_ready_addresses = Some(true);
        self
    }

    pub fn session_affinity(mut self, affinity: &str) -> Self {
        self.spec().session_affinity = Some(affinity.to_owned());
        self
    }

    /// `sessionAffinityConfig.clientIP.timeoutSeconds`.
    pub fn affinity_timeout(mut self, seconds: i32) -> Self {
        self.spec().session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(seconds),
            }),
        });
        self
    }

    /// `spec.externalName`, with `type: ExternalName`.
    pub fn external_name(self, name: &str) -> Self {
        let mut out = self.type_("ExternalName");
        out.spec().external_name = Some(name.to_owned());
        out
    }

    /// `spec.ipFamilies` and `spec.ipFamilyPolicy`.
    pub fn families(mut self, families: &[&str], policy: &str) -> Self {
        let spec = self.spec();
        spec.ip_families = Some(strings(families));
        spec.ip_family_policy = Some(policy.to_owned());
        self
    }

    /// A `status.loadBalancer.ingress` entry with an address (and its `ipMode`).
    pub fn ingress_ip(mut self, ip: &str, mode: &str) -> Self {
        self.ingress(LoadBalancerIngress {
            ip: Some(ip.to_owned()),
            ip_mode: Some(mode.to_owned()),
            ..LoadBalancerIngress::default()
        });
        self
    }

    /// A `status.loadBalancer.ingress` entry with a hostname only.
    pub fn ingress_hostname(mut self, hostname: &str) -> Self {
        self.ingress(LoadBalancerIngress {
            hostname: Some(hostname.to_owned()),
            ..LoadBalancerIngress::default()
        });
        self
    }

    fn ingress(&mut self, ingress: LoadBalancerIngress) {
        let status = self.0.status.get_or_insert_with(ServiceStatus::default);
        status
            .load_balancer
            .get_or_insert_with(LoadBalancerStatus::default)
            .ingress
            .get_or_insert_with(Vec::new)
            .push(ingress);
    }

    /// Changes what the other methods do not cover.
    pub fn with(mut self, change: impl FnOnce(&mut Service)) -> Self {
        change(&mut self.0);
        self
    }
}

impl From<ServiceBuilder> for Object {
    fn from(b: ServiceBuilder) -> Self {
        b.0.into()
    }
}

/// A Service port (`port` only: unnamed, protocol and targetPort unset).
pub(crate) fn port(port: i32) -> PortBuilder {
    PortBuilder(ServicePort {
        port,
        ..ServicePort::default()
    })
}

pub(crate) struct PortBuilder(ServicePort);

impl PortBuilder {
    pub fn name(mut self, name: &str) -> Self {
        self.0.name = Some(name.to_owned());
        self
    }

    pub fn protocol(mut self, protocol: &str) -> Self {
        self.0.protocol = Some(protocol.to_owned());
        self
    }

    pub fn target(mut self, port: i32) -> Self {
        self.0.target_port = Some(IntOrString::Int(port));
        self
    }

    pub fn target_name(mut self, name: &str) -> Self {
        self.0.target_port = Some(IntOrString::String(name.to_owned()));
        self
    }

    pub fn node_port(mut self, port: i32) -> Self {
        self.0.node_port = Some(port);
        self
    }
}

/// An IPv4 EndpointSlice `namespace/name` of Service `service` (by its
/// `kubernetes.io/service-name` label), without ports or endpoints.
pub(crate) fn slice(namespace: &str, name: &str, service: &str) -> SliceBuilder {
    let mut metadata = meta(namespace, name);
    insert(&mut metadata.labels, LABEL_SERVICE_NAME, service);
    SliceBuilder(EndpointSlice {
        metadata,
        address_type: "IPv4".to_owned(),
        endpoints: Vec::new(),
        ports: None,
    })
}

pub(crate) struct SliceBuilder(EndpointSlice);

impl SliceBuilder {
    pub fn address_type(mut self, address_type: &str) -> Self {
        self.0.address_type = address_type.to_owned();
        self
    }

    /// A port named `name` (`""` as the controllers write an unnamed one).
    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> Self {
        self.0.ports.get_or_insert_with(Vec::new).push(EndpointPort {
            name: Some(name.to_owned()),
            port: Some(port),
            protocol: Some(protocol.to_owned()),
            ..EndpointPort::default()
        });
        self
    }

    pub fn endpoint(mut self, endpoint: EndpointBuilder) -> Self {
        self.0.endpoints.push(endpoint.0);
        self
    }
}

impl From<SliceBuilder> for Object {
    fn from(b: SliceBuilder) -> Self {
        b.0.into()
    }
}

/// An endpoint of one address, with no node and no conditions (nil: the
/// readers' defaults apply).
pub(crate) fn endpoint(address: &str) -> EndpointBuilder {
    EndpointBuilder(Endpoint {
        addresses: vec![address.to_owned()],
        ..Endpoint::default()
    })
}

pub(crate) struct EndpointBuilder(Endpoint);

impl EndpointBuilder {
    pub fn node(mut self, node: &str) -> Self {
        self.0.node_name = Some(node.to_owned());
        self
    }

    fn conditions(&mut self) -> &mut EndpointConditions {
        self.0.conditions.get_or_insert_with(EndpointConditions::default)
    }

    pub fn ready(mut self, ready: bool) -> Self {
        self.conditions().ready = Some(ready);
        self
    }

    pub fn serving(mut self, serving: bool) -> Self {
        self.conditions().serving = Some(serving);
        self
    }

    pub fn terminating(mut self, terminating: bool) -> Self {
        self.conditions().terminating = Some(terminating);
        self
    }
}

/// A Pod `namespace/name` with one container `c` and no ports, no status.
pub(crate) fn pod(namespace: &str, name: &str) -> PodBuilder {
    PodBuilder(Pod {
        metadata: meta(namespace, name),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".to_owned(),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    })
}

pub(crate) struct PodBuilder(Pod);

impl PodBuilder {
    fn spec(&mut self) -> &mut PodSpec {
        self.0.spec.get_or_insert_with(PodSpec::default)
    }

    fn status(&mut self) -> &mut PodStatus {
        self.0.status.get_or_insert_with(PodStatus::default)
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        insert(&mut self.0.metadata.labels, key, value);
        self
    }

    /// `spec.nodeName`.
    pub fn node(mut self, node: &str) -> Self {
        self.spec().node_name = Some(node.to_owned());
        self
    }

    /// A named port of the first container (protocol unset: TCP).
    pub fn named_port(self, name: &str, port: i32) -> Self {
        self.container_port(name, port, None)
    }

    /// A named port of the first container, of `protocol`.
    pub fn named_port_of(self, name: &str, port: i32, protocol: &str) -> Self {
        self.container_port(name, port, Some(protocol))
    }

    fn container_port(mut self, name: &str, port: i32, protocol: Option<&str>) -> Self {
        let spec = self.spec();
        if spec.containers.is_empty() {
            spec.containers.push(Container::default());
        }
        spec.containers[0]
            .ports
            .get_or_insert_with(Vec::new)
            .push(ContainerPort {
                name: Some(name.to_owned()),
                container_port: port,
                protocol: protocol.map(str::to_owned),
                ..ContainerPort::default()
            });
        self
    }

    pub fn phase(mut self, phase: &str) -> Self {
        self.status().phase = Some(phase.to_owned());
        self
    }

    /// `status.podIP` alone, as a hand-written manifest may have it.
    pub fn ip(mut self, ip: &str) -> Self {
        self.status().pod_ip = Some(ip.to_owned());
        self
    }

    /// `status.podIP` and `status.podIPs`, as the kubelet fills them.
    pub fn ips(mut self, ips: &[&str]) -> Self {
        let status = self.status();
        status.pod_ip = ips.first().map(|ip| (*ip).to_owned());
        status.pod_ips = Some(ips.iter().map(|ip| PodIP { ip: (*ip).to_owned() }).collect());
        self
    }

    /// `phase: Running` and a `Ready` condition of `ready`.
    pub fn running(mut self, ready: bool) -> Self {
        let status = self.status();
        status.phase = Some("Running".to_owned());
        status.conditions = Some(vec![PodCondition {
            type_: "Ready".to_owned(),
            status: if ready { "True" } else { "False" }.to_owned(),
            ..PodCondition::default()
        }]);
        self
    }

    /// Being deleted: a `metadata.deletionTimestamp`.
    pub fn terminating(mut self) -> Self {
        self.0.metadata.deletion_timestamp =
            Some(serde_json::from_value(serde_json::json!("2025-01-10T10:00:00Z")).expect("a timestamp"));
        self
    }
}

impl From<PodBuilder> for Object {
    fn from(b: PodBuilder) -> Self {
        b.0.into()
    }
}

/// A Namespace `name`.
pub(crate) fn namespace(name: &str) -> NamespaceBuilder {
    NamespaceBuilder(Namespace {
        metadata: meta("", name),
        ..Namespace::default()
    })
}

pub(crate) struct NamespaceBuilder(Namespace);

impl NamespaceBuilder {
    pub fn label(mut self, key: &str, value: &str) -> Self {
        insert(&mut self.0.metadata.labels, key, value);
        self
    }
}

impl From<NamespaceBuilder> for Object {
    fn from(b: NamespaceBuilder) -> Self {
        b.0.into()
    }
}

/// A tiny deterministic generator (xorshift64), so that failures of the
/// randomised tests replay.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}
