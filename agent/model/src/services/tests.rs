//! Services compiler tests: each reads as "this cluster state gives these map
//! contents". Most fixtures are built in code (`crate::testing`), with the fields
//! the API server populates set where they matter; a few stay YAML on purpose:
//! `kube-dns` as `kubectl get -o yaml` prints it, and the `Endpoints` objects.

use std::net::{IpAddr, SocketAddr};

use weir_common::{
    BACKEND_ACTIVE, BACKEND_TERMINATING, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_AFFINITY, SVC_F_DROP_EMPTY,
    SVC_F_EXT_LOCAL, SVC_F_INT_LOCAL, SVC_F_MAGLEV, SVC_F_NODEPORT, SVC_F_SOURCE_RANGE, SVC_F_TWO_SCOPES,
    ServiceKey, ServiceValue,
};

use super::*;
use crate::{
    endpoints::EndpointSourceKind,
    ids::IdAllocator,
    model::Model,
    net::Protocol,
    object::Object,
    parse::parse_documents,
    problem::ProblemReason,
    testing::{ServiceBuilder, endpoint, pod, port, service, slice},
};

const NODE: &str = "node-a";

fn node() -> NodeContext {
    NodeContext {
        node_ips: vec![
            "192.168.1.10".parse().expect("ip"),
            "fd00:1::10".parse().expect("ip"),
        ],
        ..NodeContext::new(NODE)
    }
}

/// The objects of a YAML fixture, which must parse without problems.
fn objects(yaml: &str) -> Vec<Object> {
    let (objects, problems) = parse_documents(yaml, "test.yaml");
    assert!(problems.is_empty(), "fixture does not parse: {problems:#?}");
    objects
}

fn compile_with(
    objects: impl IntoIterator<Item = Object>,
    node: &NodeContext,
    ids: &mut IdAllocator,
) -> (DesiredServices, Vec<Problem>) {
    compile_services(&Model::from_objects(objects), node, ids)
}

/// Compiles a fixture that must compile without problems.
fn compile(objects: impl IntoIterator<Item = Object>) -> DesiredServices {
    let (desired, problems) = compile_with(objects, &node(), &mut IdAllocator::new());
    assert!(problems.is_empty(), "unexpected problems: {problems:#?}");
    desired
}

/// One object of a fixture built in code.
fn one(object: impl Into<Object>) -> [Object; 1] {
    [object.into()]
}

/// The slot-0 key of `frontend` ("10.96.0.10:80/TCP") in `scope`.
fn key(frontend: &str, scope: u8) -> ServiceKey {
    let (addr, proto) = frontend.split_once('/').expect("addr/proto");
    let addr: SocketAddr = addr.parse().expect("socket address");
    let proto = match proto {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        other => panic!("protocol {other}"),
    };
    let (bytes, family) = crate::net::to_abi(addr.ip());
    ServiceKey {
        addr: bytes,
        port: addr.port().to_be(),
        slot: 0,
        proto: proto.ipproto(),
        family,
        scope,
        _pad: 0,
    }
}

fn head(d: &DesiredServices, frontend: &str) -> ServiceValue {
    head_in(d, frontend, SCOPE_EXTERNAL)
}

fn head_in(d: &DesiredServices, frontend: &str, scope: u8) -> ServiceValue {
    *d.services
        .get(&key(frontend, scope))
        .unwrap_or_else(|| panic!("no frontend {frontend} scope {scope}"))
}

/// The backends in the slots of a frontend, as "addr:port".
fn slots(d: &DesiredServices, frontend: &str) -> Vec<String> {
    slots_in(d, frontend, SCOPE_EXTERNAL)
}

fn slots_in(d: &DesiredServices, frontend: &str, scope: u8) -> Vec<String> {
    let backends = d
        .slot_backends(&key(frontend, scope))
        .unwrap_or_else(|| panic!("no frontend {frontend}"));
    backends
        .iter()
        .map(|(_, b)| socket_addr(b.addr, b.family, b.port).expect("family").to_string())
        .collect()
}

/// Every backend entry, as "addr:port/proto state".
fn backend_entries(d: &DesiredServices) -> Vec<String> {
    let mut out: Vec<String> = d
        .backends
        .values()
        .map(|b| {
            let addr = socket_addr(b.addr, b.family, b.port).expect("family");
            let proto = Protocol::from_ipproto(b.proto).expect("proto");
            let state = match b.state {
                BACKEND_ACTIVE => "active",
                BACKEND_TERMINATING => "terminating",
                _ => "?",
            };
            format!("{addr}/{proto} {state}")
        })
        .collect();
    out.sort();
    out
}

fn frontend_names(d: &DesiredServices) -> Vec<String> {
    let mut out: Vec<String> = d
        .frontends
        .iter()
        .map(|f| format!("{}/{}", f.address, f.protocol))
        .collect();
    out.sort();
    out
}

/// `kube-dns` as a kubeadm cluster has it: two ports of two protocols, named target
/// ports, one EndpointSlice.
const KUBE_DNS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  annotations:
    prometheus.io/port: "9153"
    prometheus.io/scrape: "true"
  creationTimestamp: "2025-01-10T09:00:00Z"
  labels:
    k8s-app: kube-dns
    kubernetes.io/cluster-service: "true"
    kubernetes.io/name: CoreDNS
  name: kube-dns
  namespace: kube-system
  resourceVersion: "231"
  uid: 0a3f2f0e-6d8a-4c39-9c39-1c0f4c1d2a11
spec:
  clusterIP: 10.96.0.10
  clusterIPs:
  - 10.96.0.10
  internalTrafficPolicy: Cluster
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  ports:
  - name: dns
    port: 53
    protocol: UDP
    targetPort: 53
  - name: dns-tcp
    port: 53
    protocol: TCP
    targetPort: 53
  - name: metrics
    port: 9153
    protocol: TCP
    targetPort: 9153
  selector:
    k8s-app: kube-dns
  sessionAffinity: None
  type: ClusterIP
status:
  loadBalancer: {}
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.0.3
  conditions:
    ready: true
    serving: true
    terminating: false
  nodeName: node-a
  targetRef:
    kind: Pod
    name: coredns-7db6d8ff4d-4xk2p
    namespace: kube-system
    uid: 6f1b8e55-3a9d-4f0e-8a0a-1b2c3d4e5f60
- addresses:
  - 10.244.1.7
  conditions:
    ready: true
    serving: true
    terminating: false
  nodeName: node-b
  targetRef:
    kind: Pod
    name: coredns-7db6d8ff4d-9q8wz
    namespace: kube-system
    uid: 7a2c9f66-4b0e-4a1f-9b1b-2c3d4e5f6071
kind: EndpointSlice
metadata:
  generateName: kube-dns-
  labels:
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
    k8s-app: kube-dns
    kubernetes.io/service-name: kube-dns
  name: kube-dns-7m4sd
  namespace: kube-system
  ownerReferences:
  - apiVersion: v1
    blockOwnerDeletion: true
    controller: true
    kind: Service
    name: kube-dns
    uid: 0a3f2f0e-6d8a-4c39-9c39-1c0f4c1d2a11
  resourceVersion: "412"
ports:
- name: dns-tcp
  port: 53
  protocol: TCP
- name: dns
  port: 53
  protocol: UDP
- name: metrics
  port: 9153
  protocol: TCP
"#;

#[test]
fn cluster_ip_with_tcp_and_udp_ports() {
    let d = compile(objects(KUBE_DNS));
    assert_eq!(
        frontend_names(&d),
        ["10.96.0.10:53/TCP", "10.96.0.10:53/UDP", "10.96.0.10:9153/TCP"]
    );
    for frontend in ["10.96.0.10:53/UDP", "10.96.0.10:53/TCP"] {
        assert_eq!(slots(&d, frontend), ["10.244.0.3:53", "10.244.1.7:53"]);
        let value = head(&d, frontend);
        assert_eq!(
            (value.count, value.flags, value.affinity_timeout, value.backend_id),
            (2, 0, 0, 0)
        );
    }
    assert_eq!(
        slots(&d, "10.96.0.10:9153/TCP"),
        ["10.244.0.3:9153", "10.244.1.7:9153"]
    );
    // One backend per (address, port, protocol): UDP and TCP 53 are distinct.
    assert_eq!(
        backend_entries(&d),
        [
            "10.244.0.3:53/TCP active",
            "10.244.0.3:53/UDP active",
            "10.244.0.3:9153/TCP active",
            "10.244.1.7:53/TCP active",
            "10.244.1.7:53/UDP active",
            "10.244.1.7:9153/TCP active",
        ]
    );
    // Each frontend has its own reverse-NAT entry naming it.
    let udp = head(&d, "10.96.0.10:53/UDP");
    let tcp = head(&d, "10.96.0.10:53/TCP");
    assert_ne!(udp.rev_nat_id, tcp.rev_nat_id);
    let revnat = d.revnat[&udp.rev_nat_id];
    assert_eq!(
        socket_addr(revnat.addr, revnat.family, revnat.port),
        Some("10.96.0.10:53".parse().expect("addr"))
    );
    assert_eq!(d.revnat.len(), 3);
    // Slot entries carry the backend id and the frontend's rev-NAT id.
    let slot1 = d.services[&ServiceKey {
        slot: 1,
        ..key("10.96.0.10:53/UDP", SCOPE_EXTERNAL)
    }];
    assert_eq!(slot1.rev_nat_id, udp.rev_nat_id);
    assert_eq!(d.backends[&slot1.backend_id].port, 53u16.to_be());
    // The view names the service and port.
    let view = d
        .frontends
        .iter()
        .find(|f| f.protocol == Protocol::Udp)
        .expect("udp frontend");
    assert_eq!(
        (view.service.as_str(), view.port_name.as_str()),
        ("kube-system/kube-dns", "dns")
    );
    assert_eq!(view.endpoint_source, EndpointSourceKind::EndpointSlices);
    assert_eq!(
        view.to_string(),
        "kube-system/kube-dns:dns ClusterIP 10.96.0.10:53/UDP External -> 10.244.0.3:53 10.244.1.7:53"
    );
}

/// A web Service whose port differs from the target port and whose endpoints are
/// spread over two slices that overlap (as during a slice rebalancing).
fn web_service() -> ServiceBuilder {
    service("shop", "web")
        .cluster_ips(&["10.96.100.1"])
        .port(port(80).name("http").protocol("TCP").target_name("http-alt"))
        .selector("app", "web")
        .type_("ClusterIP")
}

fn web_slices() -> [Object; 2] {
    let serving = |address: &str, node: &str| {
        endpoint(address)
            .node(node)
            .ready(true)
            .serving(true)
            .terminating(false)
    };
    [
        slice("shop", "web-abcde", "web")
            .endpoint(serving("10.244.2.20", "node-c"))
            .endpoint(serving("10.244.1.10", "node-b"))
            .port("http", 8080, "TCP")
            .into(),
        slice("shop", "web-fghij", "web")
            .endpoint(serving("10.244.1.10", "node-b"))
            .endpoint(endpoint("10.244.0.5").ready(true).node("node-a"))
            .port("http", 8080, "TCP")
            .into(),
    ]
}

fn web() -> Vec<Object> {
    let mut objects = vec![web_service().into()];
    objects.extend(web_slices());
    objects
}

#[test]
fn target_port_differs_and_slices_merge_without_duplicates() {
    let d = compile(web());
    assert_eq!(frontend_names(&d), ["10.96.100.1:80/TCP"]);
    // Sorted by address, 10.244.1.10 once although two slices list it.
    assert_eq!(
        slots(&d, "10.96.100.1:80/TCP"),
        ["10.244.0.5:8080", "10.244.1.10:8080", "10.244.2.20:8080"]
    );
    assert_eq!(d.backends.len(), 3);
}

#[test]
fn slices_of_other_services_ports_and_families_contribute_nothing() {
    let extra: [Object; 4] = [
        slice("shop", "web-other-port", "web")
            .endpoint(endpoint("10.244.9.9"))
            .port("metrics", 9090, "TCP")
            .into(),
        slice("shop", "web-fqdn", "web")
            .address_type("FQDN")
            .endpoint(endpoint("web.example.com"))
            .port("http", 8080, "TCP")
            .into(),
        slice("shop", "web-udp", "web")
            .endpoint(endpoint("10.244.9.10"))
            .port("http", 8080, "UDP")
            .into(),
        slice("other", "web-elsewhere", "web")
            .endpoint(endpoint("10.244.9.11"))
            .port("http", 8080, "TCP")
            .into(),
    ];
    let d = compile(web().into_iter().chain(extra));
    assert_eq!(
        slots(&d, "10.96.100.1:80/TCP"),
        ["10.244.0.5:8080", "10.244.1.10:8080", "10.244.2.20:8080"]
    );
}

#[test]
fn no_endpoints_means_count_zero_not_no_frontend() {
    let d = compile(one(service("default", "lonely")
        .cluster_ip("10.96.5.5")
        .port(port(443).target(8443))
        .selector("app", "nobody")));
    let value = head(&d, "10.96.5.5:443/TCP");
    assert_eq!(value.count, 0);
    assert_ne!(value.rev_nat_id, 0);
    assert!(d.backends.is_empty());
    assert_eq!(
        d.frontends[0].to_string(),
        "default/lonely ClusterIP 10.96.5.5:443/TCP External -> (no endpoints: reject)"
    );
}

#[test]
fn selectorless_service_uses_its_endpoints_object() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: external-db, namespace: default}
spec:
  clusterIP: 10.96.7.7
  clusterIPs: [10.96.7.7]
  ports:
  - name: pg
    port: 5432
    protocol: TCP
    targetPort: 5432
  type: ClusterIP
---
apiVersion: v1
kind: Endpoints
metadata: {name: external-db, namespace: default}
subsets:
- addresses:
  - ip: 192.168.50.2
  - ip: 192.168.50.1
  notReadyAddresses:
  - ip: 192.168.50.3
  ports:
  - name: pg
    port: 5433
    protocol: TCP
- addresses:
  - ip: 192.168.60.1
  ports:
  - name: other
    port: 1234
    protocol: TCP
"#;
    let d = compile(objects(yaml));
    assert_eq!(
        slots(&d, "10.96.7.7:5432/TCP"),
        ["192.168.50.1:5433", "192.168.50.2:5433"]
    );
    assert_eq!(d.frontends[0].endpoint_source, EndpointSourceKind::Endpoints);
    // The not-ready address is kept for established connections, not in the slots.
    assert_eq!(
        backend_entries(&d),
        [
            "192.168.50.1:5433/TCP active",
            "192.168.50.2:5433/TCP active",
            "192.168.50.3:5433/TCP terminating"
        ]
    );
}

#[test]
fn endpoints_object_is_ignored_when_slices_exist_or_mirroring_is_skipped() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec:
  clusterIP: 10.96.7.8
  ports: [{port: 80}]
---
apiVersion: v1
kind: Endpoints
metadata:
  name: ext
  namespace: default
  labels: {endpointslice.kubernetes.io/skip-mirror: "true"}
subsets:
- addresses: [{ip: 192.168.50.1}]
  ports: [{port: 80}]
"#;
    assert_eq!(head(&compile(objects(yaml)), "10.96.7.8:80/TCP").count, 0);
    let with_slice = format!(
        "{yaml}{}",
        r#"
---
apiVersion: v1
kind: Endpoints
metadata: {name: ext, namespace: default}
subsets:
- addresses: [{ip: 192.168.50.1}]
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ext-1
  namespace: default
  labels: {kubernetes.io/service-name: ext}
addressType: IPv4
endpoints: [{addresses: [192.168.70.1]}]
ports: [{name: "", port: 80, protocol: TCP}]
"#
    );
    assert_eq!(
        slots(&compile(objects(&with_slice)), "10.96.7.8:80/TCP"),
        ["192.168.70.1:80"]
    );
}

/// A standalone node: no EndpointSlice controller, so the Service's endpoints are
/// derived from the Pods it selects.
fn api_service() -> ServiceBuilder {
    service("app", "api")
        .cluster_ip("10.96.9.9")
        .port(port(80).name("http").target_name("web"))
        .port(port(9000).name("grpc").protocol("TCP"))
        .selector("app", "api")
}

/// The Pods beside [`api_service`]: in every state a Pod can be in for it.
fn api_pods() -> Vec<Object> {
    let api = |name: &str| pod("app", name).label("app", "api");
    vec![
        api("api-ready")
            .label("pod-template-hash", "5d8f")
            .node("node-a")
            .named_port_of("web", 8080, "TCP")
            .running(true)
            .ips(&["10.244.0.21"])
            .into(),
        api("api-other-port")
            .node("node-b")
            .named_port("web", 8081)
            .running(true)
            .ip("10.244.1.21")
            .into(),
        api("api-not-ready")
            .named_port("web", 8080)
            .running(false)
            .ip("10.244.0.22")
            .into(),
        api("api-terminating")
            .terminating()
            .named_port("web", 8080)
            .running(true)
            .ip("10.244.0.23")
            .into(),
        api("api-done")
            .named_port("web", 8080)
            .phase("Succeeded")
            .ip("10.244.0.24")
            .into(),
        api("api-pending").named_port("web", 8080).phase("Pending").into(),
        api("api-no-named-port").running(true).ip("10.244.0.25").into(),
        pod("elsewhere", "api-other-ns")
            .label("app", "api")
            .named_port("web", 8080)
            .running(true)
            .ip("10.244.0.26")
            .into(),
        pod("app", "not-api")
            .label("app", "db")
            .named_port("web", 8080)
            .running(true)
            .ip("10.244.0.27")
            .into(),
    ]
}

fn with_api_pods(service: ServiceBuilder) -> Vec<Object> {
    let mut objects = vec![service.into()];
    objects.extend(api_pods());
    objects
}

#[test]
fn selector_service_derives_endpoints_from_pods() {
    let d = compile(with_api_pods(api_service()));
    // Named targetPort resolved per pod; only ready pods in the slots.
    assert_eq!(
        slots(&d, "10.96.9.9:80/TCP"),
        ["10.244.0.21:8080", "10.244.1.21:8081"]
    );
    // Absent targetPort = port; a numeric port needs no container port.
    assert_eq!(
        slots(&d, "10.96.9.9:9000/TCP"),
        ["10.244.0.21:9000", "10.244.0.25:9000", "10.244.1.21:9000"]
    );
    // The terminating pod (still Ready) is serving: kept as a terminating backend.
    // The not-ready pod is neither ready nor serving: no backend at all.
    let http: Vec<String> = backend_entries(&d)
        .into_iter()
        .filter(|b| b.contains(":80"))
        .collect();
    assert_eq!(
        http,
        [
            "10.244.0.21:8080/TCP active",
            "10.244.0.23:8080/TCP terminating",
            "10.244.1.21:8081/TCP active"
        ]
    );
    assert_eq!(d.frontends[0].endpoint_source, EndpointSourceKind::Pods);
    let view = &d.frontends[0];
    assert_eq!(view.backends[0].node_name, NodeRef::this_node("node-a"));
}

#[test]
fn terminating_pods_serve_when_nothing_is_ready() {
    let only_terminating = api_pods().into_iter().filter(|pod| {
        let (name, _) = pod.names();
        matches!(name, "api-terminating" | "api-not-ready")
    });
    let d = compile(one(api_service()).into_iter().chain(only_terminating));
    assert_eq!(slots(&d, "10.96.9.9:80/TCP"), ["10.244.0.23:8080"]);
    assert_eq!(d.frontends[0].backends[0].state, BackendState::Terminating);
}

#[test]
fn publish_not_ready_addresses_makes_every_pod_ready() {
    let d = compile(with_api_pods(api_service().publish_not_ready_addresses()));
    assert_eq!(
        slots(&d, "10.96.9.9:80/TCP"),
        [
            "10.244.0.21:8080",
            "10.244.0.22:8080",
            "10.244.0.23:8080",
            "10.244.1.21:8081"
        ]
    );
}

#[test]
fn services_for_other_proxies_headless_and_external_names_compile_to_nothing() {
    let d = compile([
        service("default", "headless")
            .cluster_ips(&["None"])
            .port(port(80))
            .selector("app", "x")
            .into(),
        service("default", "external")
            .external_name("db.example.com")
            .into(),
        service("default", "other-proxy")
            .label("service.kubernetes.io/service-proxy-name", "some-other-proxy")
            .cluster_ip("10.96.1.1")
            .port(port(80))
            .into(),
        service("default", "labelled-headless")
            .label("service.kubernetes.io/headless", "")
            .cluster_ip("10.96.1.2")
            .port(port(80))
            .into(),
    ]);
    assert!(
        d.services.is_empty() && d.revnat.is_empty() && d.frontends.is_empty(),
        "{d:#?}"
    );
}

/// (ready, serving, terminating) in a slice, nil conditions included, and what
/// the slots and backends get (KEP-1669).
#[test]
fn condition_matrix_in_slices() {
    let slice = |endpoints: Vec<crate::testing::EndpointBuilder>| {
        let svc = service("default", "m")
            .cluster_ip("10.96.2.2")
            .port(port(80))
            .selector("app", "m");
        let slice = endpoints
            .into_iter()
            .fold(slice("default", "m-1", "m").port("", 80, "TCP"), |s, e| {
                s.endpoint(e)
            });
        [svc.into(), slice.into()]
    };
    // Nil conditions: ready. A not-ready one is left out of the slots.
    let d = compile(slice(vec![
        endpoint("10.0.0.1"),
        endpoint("10.0.0.2").ready(false).serving(false),
    ]));
    assert_eq!(slots(&d, "10.96.2.2:80/TCP"), ["10.0.0.1:80"]);
    assert_eq!(backend_entries(&d), ["10.0.0.1:80/TCP active"]);

    // Ready beats serving+terminating.
    let d = compile(slice(vec![
        endpoint("10.0.0.1").ready(true),
        endpoint("10.0.0.2").ready(false).serving(true).terminating(true),
    ]));
    assert_eq!(slots(&d, "10.96.2.2:80/TCP"), ["10.0.0.1:80"]);
    assert_eq!(
        backend_entries(&d),
        ["10.0.0.1:80/TCP active", "10.0.0.2:80/TCP terminating"]
    );

    // No ready endpoint: the serving+terminating ones take new connections; the
    // terminating-but-not-serving one does not.
    let d = compile(slice(vec![
        endpoint("10.0.0.2").ready(false).serving(true).terminating(true),
        endpoint("10.0.0.3").ready(false).serving(false).terminating(true),
        endpoint("10.0.0.4").ready(false).terminating(true),
    ]));
    // serving nil = true (EndpointConditions API), so 10.0.0.4 serves too.
    assert_eq!(slots(&d, "10.96.2.2:80/TCP"), ["10.0.0.2:80", "10.0.0.4:80"]);

    // Not ready, serving, not terminating (a failing readiness probe): no slot,
    // even with nothing else, but established connections keep a backend.
    let d = compile(slice(vec![
        endpoint("10.0.0.5").ready(false).serving(true).terminating(false),
    ]));
    assert_eq!(head(&d, "10.96.2.2:80/TCP").count, 0);
    assert_eq!(backend_entries(&d), ["10.0.0.5:80/TCP terminating"]);
}

#[test]
fn session_affinity_client_ip() {
    let sticky = || {
        service("default", "sticky")
            .cluster_ip("10.96.3.3")
            .port(port(80))
    };
    let d = compile(one(sticky().session_affinity("ClientIP")));
    let value = head(&d, "10.96.3.3:80/TCP");
    assert_eq!(
        (value.flags, value.affinity_timeout),
        (SVC_F_AFFINITY, DEFAULT_AFFINITY_TIMEOUT)
    );
    assert_eq!(d.frontends[0].flags, ["affinity"]);

    let d = compile(one(sticky().session_affinity("ClientIP").affinity_timeout(60)));
    assert_eq!(head(&d, "10.96.3.3:80/TCP").affinity_timeout, 60);

    let d = compile(one(sticky().session_affinity("None")));
    assert_eq!(head(&d, "10.96.3.3:80/TCP").flags & SVC_F_AFFINITY, 0);

    for bad in [0, 86_401] {
        let (d, problems) = compile_with(
            one(sticky()
                .session_affinity("ClientIP")
                .affinity_timeout(i32::try_from(bad).expect("seconds"))),
            &node(),
            &mut IdAllocator::new(),
        );
        assert!(d.services.is_empty());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].reason, ProblemReason::BadAffinityTimeout(bad));
        assert_eq!(problems[0].object.as_deref(), Some("Service default/sticky"));
    }
}

#[test]
fn internal_traffic_policy_local_keeps_to_this_node() {
    let local = || {
        one(web_service().internal_traffic_policy("Local"))
            .into_iter()
            .chain(web_slices())
    };
    let d = compile(local());
    let value = head(&d, "10.96.100.1:80/TCP");
    assert_eq!(value.flags, SVC_F_INT_LOCAL);
    assert_eq!(slots(&d, "10.96.100.1:80/TCP"), ["10.244.0.5:8080"]);
    // Remote endpoints still have backend entries (other frontends may use them).
    assert_eq!(d.backends.len(), 3);

    // On a node without local endpoints: reject, never fall back to remote ones.
    let (d, _) = compile_with(local(), &NodeContext::new("node-z"), &mut IdAllocator::new());
    assert_eq!(head(&d, "10.96.100.1:80/TCP").count, 0);
}

#[test]
fn internal_traffic_policy_local_from_pods_uses_spec_node_name() {
    let d = compile(with_api_pods(api_service().internal_traffic_policy("Local")));
    assert_eq!(slots(&d, "10.96.9.9:80/TCP"), ["10.244.0.21:8080"]);
}

/// A dual-stack Service: each family's frontend only gets that family's endpoints.
fn dual_stack() -> [Object; 3] {
    [
        service("default", "dual")
            .cluster_ips(&["10.96.4.4", "fd00:10:96::4"])
            .families(&["IPv4", "IPv6"], "RequireDualStack")
            .port(port(80).name("http").protocol("TCP").target(8080))
            .selector("app", "dual")
            .into(),
        slice("default", "dual-v4", "dual")
            .endpoint(endpoint("10.244.0.40").node("node-a"))
            .port("http", 8080, "TCP")
            .into(),
        slice("default", "dual-v6", "dual")
            .address_type("IPv6")
            .endpoint(endpoint("fd00:244::40").node("node-a"))
            .endpoint(endpoint("10.244.0.99"))
            .port("http", 8080, "TCP")
            .into(),
    ]
}

#[test]
fn dual_stack_frontends_get_their_own_family() {
    let d = compile(dual_stack());
    assert_eq!(slots(&d, "10.96.4.4:80/TCP"), ["10.244.0.40:8080"]);
    assert_eq!(slots(&d, "[fd00:10:96::4]:80/TCP"), ["[fd00:244::40]:8080"]);
    let v6 = d.revnat[&head(&d, "[fd00:10:96::4]:80/TCP").rev_nat_id];
    assert_eq!(v6.family, weir_common::AF_INET6);
    assert_eq!(
        d.backends.len(),
        2,
        "the IPv4 address in the IPv6 slice is ignored"
    );
}

#[test]
fn invalid_services_are_reported_and_the_rest_compile() {
    let svc = |name: &str, ip: &str| service("default", name).cluster_ip(ip);
    let (d, problems) = compile_with(
        [
            svc("bad-ip", "10.96.0.300").port(port(80)).into(),
            svc("bad-port", "10.96.0.21")
                .port(port(80).name("a"))
                .port(port(70000).name("b"))
                .into(),
            svc("bad-proto", "10.96.0.22")
                .port(port(80).protocol("ICMP"))
                .into(),
            svc("bad-target", "10.96.0.23").port(port(80).target(-1)).into(),
            svc("bad-policy", "10.96.0.24")
                .internal_traffic_policy("Nearby")
                .port(port(80))
                .into(),
            service("default", "no-ip").port(port(80)).into(),
            svc("good", "10.96.0.25").port(port(80)).into(),
        ],
        &node(),
        &mut IdAllocator::new(),
    );
    assert_eq!(frontend_names(&d), ["10.96.0.25:80/TCP"]);
    let reasons: Vec<(String, ProblemReason)> = problems
        .into_iter()
        .map(|p| (p.object.unwrap_or_default(), p.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            (
                "Service default/bad-ip".to_owned(),
                ProblemReason::BadIp {
                    field: "spec.clusterIPs",
                    value: "10.96.0.300".into()
                }
            ),
            (
                "Service default/bad-policy".to_owned(),
                ProblemReason::BadTrafficPolicy {
                    field: "spec.internalTrafficPolicy",
                    value: "Nearby".into()
                }
            ),
            (
                "Service default/bad-port".to_owned(),
                ProblemReason::PortOutOfRange {
                    port_name: "b".into(),
                    field: "port",
                    value: 70000
                }
            ),
            (
                "Service default/bad-proto".to_owned(),
                ProblemReason::BadProtocol {
                    port_name: "".into(),
                    protocol: "ICMP".into()
                }
            ),
            (
                "Service default/bad-target".to_owned(),
                ProblemReason::PortOutOfRange {
                    port_name: "".into(),
                    field: "targetPort",
                    value: -1
                }
            ),
            ("Service default/no-ip".to_owned(), ProblemReason::NoClusterIp),
        ]
    );
}

#[test]
fn a_frontend_taken_by_another_service_is_reported() {
    let (d, problems) = compile_with(
        [
            service("default", "a")
                .cluster_ip("10.96.0.30")
                .port(port(80))
                .into(),
            service("default", "b")
                .cluster_ip("10.96.0.30")
                .port(port(80))
                .port(port(81))
                .into(),
        ],
        &node(),
        &mut IdAllocator::new(),
    );
    assert_eq!(frontend_names(&d), ["10.96.0.30:80/TCP", "10.96.0.30:81/TCP"]);
    assert_eq!(problems.len(), 1);
    assert_eq!(
        problems[0].reason,
        ProblemReason::FrontendConflict {
            frontend: "10.96.0.30:80/TCP".into(),
            owner: "Service default/a".into()
        }
    );
}

#[test]
fn a_backend_shared_by_two_services_is_one_entry() {
    let internal: [Object; 2] = [
        service("shop", "web-internal")
            .cluster_ip("10.96.100.2")
            .port(port(8080).name("http"))
            .into(),
        slice("shop", "web-internal-1", "web-internal")
            .endpoint(endpoint("10.244.0.5"))
            .port("http", 8080, "TCP")
            .into(),
    ];
    let d = compile(web().into_iter().chain(internal));
    let a = d
        .slot_backends(&key("10.96.100.1:80/TCP", SCOPE_EXTERNAL))
        .expect("web");
    let b = d
        .slot_backends(&key("10.96.100.2:8080/TCP", SCOPE_EXTERNAL))
        .expect("web-internal");
    assert_eq!(a[0].0, b[0].0);
    assert_eq!(d.backends.len(), 3);
}

#[test]
fn compile_is_deterministic_whatever_the_input_order() {
    let forward: Vec<Object> = objects(KUBE_DNS)
        .into_iter()
        .chain(web())
        .chain(dual_stack())
        .collect();
    let backward: Vec<Object> = forward.iter().rev().cloned().collect();
    let (a, _) = compile_with(forward, &node(), &mut IdAllocator::new());
    let (b, _) = compile_with(backward, &node(), &mut IdAllocator::new());
    assert_eq!(a, b);
}

#[test]
fn ids_stay_stable_across_recompiles_and_released_ones_wait() {
    let mut ids = IdAllocator::new();
    let node = node();
    let (first, _) = compile_with(web(), &node, &mut ids);
    let (again, _) = compile_with(web(), &node, &mut ids);
    assert_eq!(first, again);

    // Adding a Service (sorting before `web`) does not renumber `web`.
    let both = || objects(KUBE_DNS).into_iter().chain(web());
    let (grown, _) = compile_with(both(), &node, &mut ids);
    let web = key("10.96.100.1:80/TCP", SCOPE_EXTERNAL);
    assert_eq!(grown.services[&web].rev_nat_id, first.services[&web].rev_nat_id);
    assert_eq!(grown.slot_backends(&web), first.slot_backends(&web));
    assert_eq!(ids.in_use(), (4, 9));

    // Removing `web` releases its ids; a new entry does not get them back (the
    // datapath may still hold state under them), but a fresh one.
    let (shrunk, _) = compile_with(objects(KUBE_DNS), &node, &mut ids);
    assert_eq!(ids.in_use(), (3, 6));
    let web_rev_nat = first.services[&web].rev_nat_id;
    let lonely = service("z", "new").cluster_ip("10.96.5.5").port(port(1));
    let (reused, _) = compile_with(objects(KUBE_DNS).into_iter().chain(one(lonely)), &node, &mut ids);
    let fresh = reused.services[&key("10.96.5.5:1/TCP", SCOPE_EXTERNAL)].rev_nat_id;
    assert_ne!(fresh, web_rev_nat, "a released id was handed out again at once");
    assert!(
        grown.services.values().all(|v| v.rev_nat_id != fresh),
        "an id in use was handed out"
    );
    // kube-dns kept its ids throughout.
    for (k, v) in shrunk.services.iter().filter(|(k, _)| k.slot == 0) {
        assert_eq!(grown.services[k].rev_nat_id, v.rev_nat_id);
    }
}

#[test]
fn ids_survive_an_agent_restart_through_the_maps() {
    let node = node();
    let mut ids = IdAllocator::new();
    // Allocate ids in an order a fresh allocator would not reproduce.
    compile_with(web(), &node, &mut ids);
    let both = || objects(KUBE_DNS).into_iter().chain(web());
    let (before, _) = compile_with(both(), &node, &mut ids);

    // Restart: the syncer reads the pinned maps back (no view), rebuilds the ids.
    let read_back = DesiredServices {
        frontends: Vec::new(),
        ..before.clone()
    };
    let mut restarted = IdAllocator::from_desired(&read_back);
    let (after, problems) = compile_with(both(), &node, &mut restarted);
    assert!(problems.is_empty());
    assert_eq!(after, before);

    // A fresh allocator would have numbered them differently: the test is meaningful.
    let (fresh, _) = compile_with(both(), &node, &mut IdAllocator::new());
    assert_ne!(fresh.services, before.services);
}

#[test]
fn id_exhaustion_is_a_problem_not_a_panic() {
    let (d, problems) = compile_with(objects(KUBE_DNS), &node(), &mut IdAllocator::with_limits(2, 100));
    assert_eq!(d.revnat.len(), 2);
    assert_eq!(problems.len(), 1);
    assert!(
        matches!(problems[0].reason, ProblemReason::Ids(_)),
        "{problems:?}"
    );
}

#[test]
fn maglev_by_annotation_or_node_default() {
    // The web Service asking for an algorithm by its annotation.
    let annotated = |algorithm: &str| {
        one(web_service().annotation("weir.dev/lb-algorithm", algorithm))
            .into_iter()
            .chain(web_slices())
    };
    let node = NodeContext {
        maglev_table_size: 251,
        ..node()
    };
    let (d, problems) = compile_with(annotated("maglev"), &node, &mut IdAllocator::new());
    assert!(problems.is_empty());
    let value = head(&d, "10.96.100.1:80/TCP");
    assert_eq!(value.flags, SVC_F_MAGLEV);
    let table = &d.maglev[&value.rev_nat_id];
    assert_eq!(table.len(), 251);
    let slot_ids: BTreeSet<u32> = d
        .slot_backends(&key("10.96.100.1:80/TCP", SCOPE_EXTERNAL))
        .expect("web")
        .iter()
        .map(|b| b.0)
        .collect();
    assert_eq!(table.iter().copied().collect::<BTreeSet<u32>>(), slot_ids);

    // Node default Maglev, a Service opting out.
    let maglev_node = NodeContext {
        lb_algorithm: LbAlgorithm::Maglev,
        ..node.clone()
    };
    let (d, _) = compile_with(objects(KUBE_DNS), &maglev_node, &mut IdAllocator::new());
    assert_eq!(d.maglev.len(), 3);
    let (d, _) = compile_with(annotated("random"), &maglev_node, &mut IdAllocator::new());
    assert!(d.maglev.is_empty());
    assert_eq!(head(&d, "10.96.100.1:80/TCP").flags, 0);

    // A bad table size disables Maglev, loudly; an unknown annotation value too.
    let bad = NodeContext {
        maglev_table_size: 250,
        ..node.clone()
    };
    let (d, problems) = compile_with(annotated("maglev"), &bad, &mut IdAllocator::new());
    assert!(d.maglev.is_empty());
    assert_eq!(problems[0].reason, ProblemReason::BadMaglevSize(250));
    let (d, problems) = compile_with(annotated("round-robin"), &node, &mut IdAllocator::new());
    assert_eq!(
        problems[0].reason,
        ProblemReason::BadLbAlgorithm("round-robin".into())
    );
    assert_eq!(
        head(&d, "10.96.100.1:80/TCP").count,
        3,
        "the Service itself still compiles"
    );
}

/// A LoadBalancer Service as a cloud controller leaves it: NodePort, external IP,
/// ingress IP, externalTrafficPolicy Local with a health check node port.
fn lb_service() -> ServiceBuilder {
    service("edge", "ingress")
        .with(|s| {
            if let Some(spec) = s.spec.as_mut() {
                spec.allocate_load_balancer_node_ports = Some(true);
            }
        })
        .cluster_ips(&["10.96.8.8"])
        .external_ips(&["203.0.113.7"])
        .external_traffic_policy("Local")
        .health_check_node_port(32000)
        .internal_traffic_policy("Cluster")
        .port(
            port(443)
                .name("https")
                .node_port(30443)
                .protocol("TCP")
                .target(8443),
        )
        .selector("app", "ingress")
        .type_("LoadBalancer")
        .ingress_ip("198.51.100.9", "VIP")
        .ingress_ip("198.51.100.10", "Proxy")
        .ingress_hostname("lb.example.com")
}

/// The slice of [`lb_service`]: an endpoint on node-a, one on node-b.
fn lb_slice() -> crate::testing::SliceBuilder {
    slice("edge", "ingress-1", "ingress")
        .endpoint(endpoint("10.244.0.80").node("node-a"))
        .endpoint(endpoint("10.244.1.80").node("node-b"))
        .port("https", 8443, "TCP")
}

fn lb(service: ServiceBuilder) -> [Object; 2] {
    [service.into(), lb_slice().into()]
}

/// The source ranges each frontend admits (none: every source), by frontend
/// and scope.
fn ranges_of(d: &DesiredServices, frontend: &str, scope: u8) -> Option<Vec<String>> {
    let head = head_in(d, frontend, scope);
    let ranges = d.source_ranges.get(&head.rev_nat_id);
    assert_eq!(
        head.flags & SVC_F_SOURCE_RANGE != 0,
        ranges.is_some(),
        "{frontend}: flagged exactly when it has ranges"
    );
    ranges.map(|r| r.iter().map(ToString::to_string).collect())
}

#[test]
fn load_balancer_source_ranges_guard_the_load_balancer_ips_alone() {
    // Spaces trimmed, host bits cleared, the other family's range left to
    // that family's frontends (this Service has none).
    // Sorted, each once.
    let service = lb_service().source_ranges(&[
        " 203.0.113.0/24",
        "10.1.2.3/16 ",
        "2001:db8::/32",
        "203.0.113.99/24",
    ]);
    let d = compile(lb(service));
    for scope in [SCOPE_EXTERNAL, SCOPE_INTERNAL] {
        assert_eq!(
            ranges_of(&d, "198.51.100.9:443/TCP", scope),
            Some(vec!["10.1.0.0/16".to_owned(), "203.0.113.0/24".to_owned()]),
            "the LoadBalancer IP, both scopes"
        );
        // kube-proxy's firewall is on the LoadBalancer IPs only.
        for frontend in ["192.168.1.10:30443/TCP", "203.0.113.7:443/TCP"] {
            assert_eq!(ranges_of(&d, frontend, scope), None, "{frontend}");
        }
    }
    assert_eq!(ranges_of(&d, "10.96.8.8:443/TCP", SCOPE_EXTERNAL), None);
    assert_eq!(d.source_ranges.len(), 2);

    // Without ranges (or with the other family's only): every source.
    for ranges in [&[][..], &["2001:db8::/32"][..]] {
        let d = compile(lb(lb_service().source_ranges(ranges)));
        assert_eq!(
            ranges_of(&d, "198.51.100.9:443/TCP", SCOPE_EXTERNAL),
            None,
            "{ranges:?}"
        );
        assert!(d.source_ranges.is_empty());
    }
}

#[test]
fn a_source_range_holding_the_node_admits_the_load_balancer_ip_as_a_source() {
    // kube-proxy's allowFromNode: a node routing the VIP to itself sends from it.
    let d = compile(lb(lb_service().source_ranges(&["192.168.0.0/16"])));
    assert_eq!(
        ranges_of(&d, "198.51.100.9:443/TCP", SCOPE_EXTERNAL),
        Some(vec!["192.168.0.0/16".to_owned(), "198.51.100.9/32".to_owned()])
    );
}

#[test]
fn a_source_range_that_is_no_cidr_is_reported_and_the_rest_apply() {
    let service = lb_service().source_ranges(&[
        "10.0.0.0/33",
        "10.0.0.1",
        "bogus",
        "10.0.0.0 /8",
        "10.0.0.0/+8",
        "010.0001.0.0/16",
        "10.0.0.0/8",
    ]);
    let (d, problems) = compile_with(lb(service), &node(), &mut IdAllocator::new());
    let bad: Vec<&str> = problems
        .iter()
        .filter_map(|p| match &p.reason {
            ProblemReason::BadIp {
                field: "spec.loadBalancerSourceRanges",
                value,
            } => Some(value.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        bad,
        ["10.0.0.0/33", "10.0.0.1", "bogus", "10.0.0.0 /8", "10.0.0.0/+8"],
        "{problems:#?}"
    );
    // Leading zeros, as Go's sloppy parse reads them.
    assert_eq!(
        ranges_of(&d, "198.51.100.9:443/TCP", SCOPE_EXTERNAL),
        Some(vec!["10.0.0.0/8".to_owned(), "10.1.0.0/16".to_owned()])
    );
}

#[test]
fn load_balancer_frontends_with_external_traffic_policy_local() {
    let d = compile(lb(lb_service()));
    assert_eq!(
        frontend_names(&d),
        [
            // external and internal scope of each external frontend
            "10.96.8.8:443/TCP",
            "192.168.1.10:30443/TCP",
            "192.168.1.10:30443/TCP",
            "198.51.100.9:443/TCP",
            "198.51.100.9:443/TCP",
            "203.0.113.7:443/TCP",
            "203.0.113.7:443/TCP",
        ]
    );
    // ClusterIP: internalTrafficPolicy Cluster, all endpoints.
    assert_eq!(
        slots(&d, "10.96.8.8:443/TCP"),
        ["10.244.0.80:8443", "10.244.1.80:8443"]
    );
    assert_eq!(head(&d, "10.96.8.8:443/TCP").flags, 0);
    for frontend in [
        "192.168.1.10:30443/TCP",
        "198.51.100.9:443/TCP",
        "203.0.113.7:443/TCP",
    ] {
        // From outside: this node's endpoints only.
        assert_eq!(slots(&d, frontend), ["10.244.0.80:8443"], "{frontend}");
        // From inside the cluster: every endpoint.
        assert_eq!(
            slots_in(&d, frontend, SCOPE_INTERNAL),
            ["10.244.0.80:8443", "10.244.1.80:8443"]
        );
        let ext = head(&d, frontend);
        let int = head_in(&d, frontend, SCOPE_INTERNAL);
        assert_eq!(
            ext.flags & (SVC_F_EXT_LOCAL | SVC_F_TWO_SCOPES),
            SVC_F_EXT_LOCAL | SVC_F_TWO_SCOPES
        );
        assert_eq!(int.flags & (SVC_F_EXT_LOCAL | SVC_F_TWO_SCOPES), 0);
        assert_ne!(ext.rev_nat_id, int.rev_nat_id);
    }
    assert_eq!(
        head(&d, "192.168.1.10:30443/TCP").flags & SVC_F_NODEPORT,
        SVC_F_NODEPORT
    );
    assert_eq!(head(&d, "198.51.100.9:443/TCP").flags & SVC_F_NODEPORT, 0);
    // The NodePort frontend's reverse NAT names the node address and node port.
    let revnat = d.revnat[&head(&d, "192.168.1.10:30443/TCP").rev_nat_id];
    assert_eq!(
        socket_addr(revnat.addr, revnat.family, revnat.port),
        Some("192.168.1.10:30443".parse().expect("addr"))
    );
    assert!(
        d.frontends
            .iter()
            .all(|f| f.health_check_node_port == Some(32000))
    );
    assert!(
        d.frontends
            .iter()
            .any(|f| f.kind == FrontendKind::LoadBalancer && f.scope == Scope::Internal)
    );

    // A node without local endpoints rejects external traffic, serves internal.
    let (d, _) = compile_with(
        lb(lb_service()),
        &NodeContext {
            node_ips: node().node_ips,
            ..NodeContext::new("node-z")
        },
        &mut IdAllocator::new(),
    );
    assert_eq!(head(&d, "192.168.1.10:30443/TCP").count, 0);
    assert_eq!(head_in(&d, "192.168.1.10:30443/TCP", SCOPE_INTERNAL).count, 2);
}

#[test]
fn node_port_with_external_traffic_policy_cluster_is_one_entry() {
    let node_port = lb_service()
        .external_traffic_policy("Cluster")
        .type_("NodePort")
        .with(|s| {
            if let Some(spec) = s.spec.as_mut() {
                spec.health_check_node_port = None;
            }
        });
    let d = compile(lb(node_port));
    // NodePort Services have no load-balancer frontends, even with a stale status.
    assert_eq!(
        frontend_names(&d),
        [
            "10.96.8.8:443/TCP",
            "192.168.1.10:30443/TCP",
            "203.0.113.7:443/TCP"
        ]
    );
    assert_eq!(
        slots(&d, "192.168.1.10:30443/TCP"),
        ["10.244.0.80:8443", "10.244.1.80:8443"]
    );
    assert_eq!(head(&d, "192.168.1.10:30443/TCP").flags, SVC_F_NODEPORT);
    assert!(!d.services.keys().any(|k| k.scope == SCOPE_INTERNAL));
}

#[test]
fn external_addresses_of_a_family_without_cluster_ip_are_ignored() {
    let d = compile(lb(lb_service().external_ips(&["2001:db8::7"])));
    // IPv4-only Service: no IPv6 NodePort on fd00:1::10, no IPv6 external IP.
    assert!(
        frontend_names(&d).iter().all(|f| !f.contains("::")),
        "{:?}",
        frontend_names(&d)
    );
}

#[test]
fn external_ips_on_a_cluster_ip_service_use_cluster_policy() {
    let d = compile([
        service("default", "ext")
            .cluster_ip("10.96.6.6")
            .external_ips(&["203.0.113.8"])
            .port(port(80).node_port(30080))
            .into(),
        slice("default", "ext-1", "ext")
            .endpoint(endpoint("10.244.1.1").node("node-b"))
            .port("", 80, "TCP")
            .into(),
    ]);
    // type ClusterIP: no NodePort frontend even if nodePort is (invalidly) set.
    assert_eq!(frontend_names(&d), ["10.96.6.6:80/TCP", "203.0.113.8:80/TCP"]);
    assert_eq!(slots(&d, "203.0.113.8:80/TCP"), ["10.244.1.1:80"]);
    assert_eq!(d.frontends[1].kind, FrontendKind::ExternalIP);
}

#[test]
fn sctp_is_compiled() {
    let d = compile([
        service("default", "sig")
            .cluster_ip("10.96.6.7")
            .port(port(3868).name("s").protocol("SCTP"))
            .into(),
        slice("default", "sig-1", "sig")
            .endpoint(endpoint("10.244.1.2"))
            .port("s", 3868, "SCTP")
            .into(),
    ]);
    assert_eq!(slots(&d, "10.96.6.7:3868/SCTP"), ["10.244.1.2:3868"]);
}

#[test]
fn view_serializes_for_weirctl() {
    let d = compile(objects(KUBE_DNS));
    let json = serde_json::to_value(&d.frontends[0]).expect("serializable");
    assert_eq!(json["service"], "kube-system/kube-dns");
    assert_eq!(json["protocol"], "UDP");
    assert_eq!(json["scope"], "external");
    assert_eq!(json["backends"][0]["state"], "active");
    assert_eq!(json["backends"][0]["slot"], 1);
    let _: IpAddr = json["backends"][0]["address"]
        .as_str()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map(|a| a.ip())
        .expect("address");
}

#[test]
fn local_policies_drop_where_endpoints_are_elsewhere_and_reject_without_any() {
    // externalTrafficPolicy Local on a node without endpoints of its own.
    let node_z = NodeContext {
        node_ips: node().node_ips,
        ..NodeContext::new("node-z")
    };
    let (d, _) = compile_with(lb(lb_service()), &node_z, &mut IdAllocator::new());
    let np = head(&d, "192.168.1.10:30443/TCP");
    assert_eq!(
        (np.count, np.flags & SVC_F_DROP_EMPTY),
        (0, SVC_F_DROP_EMPTY),
        "dropped, as kube-proxy"
    );
    assert_eq!(
        head_in(&d, "192.168.1.10:30443/TCP", SCOPE_INTERNAL).flags & SVC_F_DROP_EMPTY,
        0
    );
    // No endpoint anywhere: rejected, whatever the policy.
    let none = [
        lb_service().into(),
        slice("edge", "ingress-1", "ingress")
            .port("https", 8443, "TCP")
            .into(),
    ];
    let (d, _) = compile_with(none, &node(), &mut IdAllocator::new());
    assert_eq!(head(&d, "192.168.1.10:30443/TCP").flags & SVC_F_DROP_EMPTY, 0);
    // internalTrafficPolicy Local: the ClusterIP of a node without local endpoints.
    let itp = lb(lb_service().internal_traffic_policy("Local"));
    let (d, _) = compile_with(itp, &node_z, &mut IdAllocator::new());
    let cluster_ip = head(&d, "10.96.8.8:443/TCP");
    assert_eq!(
        (cluster_ip.count, cluster_ip.flags & SVC_F_DROP_EMPTY),
        (0, SVC_F_DROP_EMPTY)
    );
}

/// Topology-aware routing as the EndpointSlice controller writes it
/// (`trafficDistribution: PreferClose`: zone hints; `PreferSameNode`: node
/// hints too): the Cluster-policy frontends of a node in a zone use the
/// endpoints hinted for it, the Local-policy ones this node's endpoints,
/// hints or not.
#[test]
fn topology_hints_choose_the_slots_of_cluster_policy_frontends() {
    let fixture = |for_nodes: bool| {
        let node_hints = |node: &str| {
            if for_nodes {
                format!("\n    forNodes:\n    - name: {node}")
            } else {
                String::new()
            }
        };
        objects(&format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: near, namespace: default}}
spec:
  type: NodePort
  clusterIP: 10.96.7.7
  externalTrafficPolicy: Local
  trafficDistribution: PreferClose
  selector: {{app: near}}
  ports: [{{port: 80, nodePort: 30080, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: near-abc
  namespace: default
  labels: {{kubernetes.io/service-name: near}}
addressType: IPv4
ports: [{{name: "", port: 8080, protocol: TCP}}]
endpoints:
- addresses: [10.244.0.5]
  nodeName: node-a
  zone: zone-a
  hints:
    forZones: [{{name: zone-a}}]{a}
- addresses: [10.244.1.5]
  nodeName: node-b
  zone: zone-a
  hints:
    forZones:
    - name: zone-a{b}
- addresses: ["10.244.2.5"]
  nodeName: node-c
  zone: zone-b
  conditions: {{ready: true}}
  hints: {{"forZones": [{{"name": "zone-b"}}]{c}}}
"#,
            a = node_hints("node-a"),
            b = node_hints("node-b"),
            c = if for_nodes {
                r#", "forNodes": [{"name": "node-c"}]"#
            } else {
                ""
            },
        ))
    };
    let in_zone = |zone: &str, objects: Vec<Object>| {
        let node = NodeContext {
            zone: zone.to_owned(),
            ..node()
        };
        let (d, problems) = compile_with(objects, &node, &mut IdAllocator::new());
        assert!(problems.is_empty(), "{problems:#?}");
        d
    };
    let d = in_zone("zone-a", fixture(false));
    assert_eq!(
        slots(&d, "10.96.7.7:80/TCP"),
        ["10.244.0.5:8080", "10.244.1.5:8080"]
    );
    // From inside the cluster the NodePort goes to the Cluster set, hinted;
    // from outside to this node's endpoint (Local), whatever its hints.
    assert_eq!(
        slots_in(&d, "192.168.1.10:30080/TCP", SCOPE_INTERNAL),
        ["10.244.0.5:8080", "10.244.1.5:8080"]
    );
    assert_eq!(
        slots_in(&d, "192.168.1.10:30080/TCP", SCOPE_EXTERNAL),
        ["10.244.0.5:8080"]
    );
    let view = |d: &DesiredServices, scope: Scope| {
        let f = d
            .frontends
            .iter()
            .find(|f| f.kind == FrontendKind::NodePort && f.address.is_ipv4() && f.scope == scope)
            .expect("frontend");
        f.topology
    };
    assert_eq!(view(&d, Scope::Internal), Some(TopologyMode::PreferSameZone));
    assert_eq!(view(&d, Scope::External), None);
    assert!(
        d.frontends[0].to_string().ends_with("(PreferSameZone)"),
        "{}",
        d.frontends[0]
    );
    // The endpoint left out keeps its backend (connections through another
    // node may still reach it).
    assert_eq!(d.backends.len(), 3);

    let d = in_zone("zone-b", fixture(false));
    assert_eq!(slots(&d, "10.96.7.7:80/TCP"), ["10.244.2.5:8080"]);
    // No zone, or a zone no endpoint is hinted for: every ready endpoint.
    for zone in ["", "zone-c"] {
        let d = in_zone(zone, fixture(false));
        assert_eq!(slots(&d, "10.96.7.7:80/TCP").len(), 3, "zone {zone:?}");
        assert_eq!(d.frontends[0].topology, None);
    }
    // Node hints first: node-a's clients use node-a's endpoint.
    let d = in_zone("zone-a", fixture(true));
    assert_eq!(slots(&d, "10.96.7.7:80/TCP"), ["10.244.0.5:8080"]);
    assert_eq!(d.frontends[0].topology, Some(TopologyMode::PreferSameNode));
}

/// A standalone node stands in for the EndpointSlice controller's hints too:
/// with `trafficDistribution`, each ready Pod is hinted for its Node's zone
/// (and its node, for `PreferSameNode`); with the topology-mode annotation
/// `Auto` the controller's proportional hints cannot be stood in for: none.
#[test]
fn pods_are_hinted_as_the_controller_would_hint_them() {
    let text = |distribution: &str, annotation: &str| {
        format!(
            r#"
apiVersion: v1
kind: Service
metadata:
  name: near
  namespace: default
  annotations: {{{annotation}}}
spec:
  clusterIP: 10.96.7.8
  trafficDistribution: {distribution}
  selector: {{app: near}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Node
metadata: {{name: node-a, labels: {{topology.kubernetes.io/zone: zone-a}}}}
---
apiVersion: v1
kind: Node
metadata: {{name: node-b, labels: {{topology.kubernetes.io/zone: zone-a}}}}
---
apiVersion: v1
kind: Node
metadata: {{name: node-c, labels: {{topology.kubernetes.io/zone: zone-b}}}}
---
apiVersion: v1
kind: List
items:
- {{apiVersion: v1, kind: Pod, metadata: {{name: a, namespace: default, labels: {{app: near}}}},
   spec: {{nodeName: node-a, containers: [{{name: c}}]}},
   status: {{phase: Running, podIP: 10.244.0.5, conditions: [{{type: Ready, status: "True"}}]}}}}
- {{apiVersion: v1, kind: Pod, metadata: {{name: b, namespace: default, labels: {{app: near}}}},
   spec: {{nodeName: node-b, containers: [{{name: c}}]}},
   status: {{phase: Running, podIP: 10.244.1.5, conditions: [{{type: Ready, status: "True"}}]}}}}
- {{apiVersion: v1, kind: Pod, metadata: {{name: c, namespace: default, labels: {{app: near}}}},
   spec: {{nodeName: node-c, containers: [{{name: c}}]}},
   status: {{phase: Running, podIP: 10.244.2.5, conditions: [{{type: Ready, status: "True"}}]}}}}
"#
        )
    };
    let fixture = |distribution: &str, annotation: &str| objects(&text(distribution, annotation));
    let compiled = |objects: Vec<Object>, zone: &str| {
        let node = NodeContext {
            zone: zone.to_owned(),
            ..node()
        };
        let (d, problems) = compile_with(objects, &node, &mut IdAllocator::new());
        assert!(problems.is_empty(), "{problems:#?}");
        (slots(&d, "10.96.7.8:80/TCP"), d.frontends[0].topology)
    };
    let zone_a = vec!["10.244.0.5:8080".to_owned(), "10.244.1.5:8080".to_owned()];
    let every = vec![
        "10.244.0.5:8080".to_owned(),
        "10.244.1.5:8080".to_owned(),
        "10.244.2.5:8080".to_owned(),
    ];
    for close in ["PreferClose", "PreferSameZone"] {
        assert_eq!(
            compiled(fixture(close, ""), "zone-a"),
            (zone_a.clone(), Some(TopologyMode::PreferSameZone)),
            "{close}"
        );
    }
    assert_eq!(
        compiled(fixture("PreferSameNode", ""), "zone-a"),
        (
            vec!["10.244.0.5:8080".to_owned()],
            Some(TopologyMode::PreferSameNode)
        )
    );
    let auto = r#"service.kubernetes.io/topology-mode: Auto"#;
    assert_eq!(
        compiled(fixture("PreferClose", auto), "zone-a"),
        (every.clone(), None)
    );
    assert_eq!(compiled(fixture("Unknown", ""), "zone-a"), (every.clone(), None));
    // One ready Pod on a Node without a zone: no zone hint for it, so the
    // hints are ignored.
    let unzoned = text("PreferClose", "").replace("{topology.kubernetes.io/zone: zone-b}", "{}");
    assert_eq!(compiled(objects(&unzoned), "zone-a"), (every, None));
}

/// An address listed twice is one endpoint: the copy in the later slice (by
/// name) unless it is terminating (kube-proxy's rule: the running Pod over a
/// terminating one that had its address); in an Endpoints object, the later
/// list's (the mirroring controller's).
#[test]
fn an_address_listed_twice_is_its_later_non_terminating_copy() {
    let svc = || {
        service("default", "dup")
            .cluster_ip("10.96.3.3")
            .port(port(80))
            .selector("app", "dup")
    };
    let two =
        |first: crate::testing::EndpointBuilder, second: crate::testing::EndpointBuilder| -> Vec<Object> {
            vec![
                svc().into(),
                slice("default", "dup-a", "dup")
                    .port("", 80, "TCP")
                    .endpoint(first)
                    .into(),
                slice("default", "dup-b", "dup")
                    .port("", 80, "TCP")
                    .endpoint(second)
                    .into(),
            ]
        };
    let ip = "10.0.0.1";
    // Later and not ready: the address leaves the slots.
    let d = compile(two(endpoint(ip), endpoint(ip).ready(false).serving(false)));
    assert_eq!(head(&d, "10.96.3.3:80/TCP").count, 0);
    // Later and terminating: the earlier, ready copy stays.
    let d = compile(two(endpoint(ip), endpoint(ip).ready(false).terminating(true)));
    assert_eq!(slots(&d, "10.96.3.3:80/TCP"), ["10.0.0.1:80"]);
    // A terminating copy first, a ready one after: ready.
    let d = compile(two(endpoint(ip).ready(false).terminating(true), endpoint(ip)));
    assert_eq!(slots(&d, "10.96.3.3:80/TCP"), ["10.0.0.1:80"]);
    assert_eq!(backend_entries(&d), ["10.0.0.1:80/TCP active"]);

    let endpoints = r#"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec: {clusterIP: 10.96.7.9, ports: [{port: 5432}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: db, namespace: default}
subsets:
- addresses: [{ip: 192.168.50.1}, {ip: 192.168.50.2}]
  notReadyAddresses: [{ip: 192.168.50.2}]
  ports: [{port: 5432}]
"#;
    let d = compile(objects(endpoints));
    assert_eq!(slots(&d, "10.96.7.9:5432/TCP"), ["192.168.50.1:5432"]);
}
