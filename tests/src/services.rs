//! Services for the lab: a manifest directory an agent watches (`--source dir:`),
//! builders for Services, EndpointSlices and Endpoints exactly as an API server
//! holds them, and waits on what the agent wrote to its maps (through `weirctl`),
//! so tests never sleep blindly.

use std::{
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{Agent, Node, TempDir, apiserver::ApiServer, underlay::Routing};

/// How long a change may take to reach the maps before a test fails.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// The directory an agent reads its Services from.
pub struct ManifestDir {
    dir: TempDir,
}

impl Default for ManifestDir {
    fn default() -> Self {
        Self::new()
    }
}

impl ManifestDir {
    pub fn new() -> Self {
        Self {
            dir: TempDir::new("weir-manifests-"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `objects` as one multi-document YAML file, atomically (a hidden
    /// temporary file renamed into place: the agent never reads half a file).
    pub fn write(&self, file: &str, objects: &[Value]) {
        let text = objects
            .iter()
            .map(|o| serde_saphyr::to_string(o).expect("YAML"))
            .collect::<Vec<_>>()
            .join("---\n");
        self.write_raw(file, &text);
    }

    /// Writes a file's text verbatim (atomically).
    pub fn write_raw(&self, file: &str, text: &str) {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("write manifest");
        std::fs::rename(&tmp, self.dir.join(file)).expect("rename manifest");
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.dir.join(file)).expect("remove manifest");
    }
}

/// Where a lab's agents read the cluster from: a manifest directory
/// (`--source dir:`) or the lab's API server (`--source kube`). Scenarios are
/// written once against it and run with both.
pub enum Cluster {
    Dir(ManifestDir),
    Api(ApiServer),
}

/// Runs each scenario `fn name(kind: SourceKind)` once per source, as the
/// tests `name::root_dir` (`--source dir:`) and `name::root_kube` (`--source
/// kube`, through the lab's API server).
#[macro_export]
macro_rules! with_both_sources {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn root_dir() {
                super::$name($crate::services::SourceKind::Dir)
            }
            #[test]
            fn root_kube() {
                super::$name($crate::services::SourceKind::Kube)
            }
        }
    )+};
}

/// Runs each scenario `fn name(setup: Setup)` as `name::root_dir` and
/// `name::root_kube` (the harness routes pod CIDRs between nodes, as
/// [`with_both_sources!`]), and `name::root_vxlan`: a manifest directory, and
/// an underlay that carries the nodes' own addresses only, the agents
/// reaching other nodes' pods through their overlay (`--routing vxlan`).
/// `xdp: name, ...` adds `name::root_xdp`: as `root_dir`, with the agents'
/// XDP in front of their node devices (`--nodeport-acceleration native`).
#[macro_export]
macro_rules! with_each_setup {
    (@setups $name:ident, $($extra:item)*) => {
        mod $name {
            use $crate::{services::{Setup, SourceKind}, underlay::Routing};
            #[test]
            fn root_dir() {
                super::$name(Setup { source: SourceKind::Dir, routing: None, xdp: false })
            }
            #[test]
            fn root_kube() {
                super::$name(Setup { source: SourceKind::Kube, routing: None, xdp: false })
            }
            #[test]
            fn root_vxlan() {
                super::$name(Setup { source: SourceKind::Dir, routing: Some(Routing::Vxlan), xdp: false })
            }
            $($extra)*
        }
    };
    (xdp: $($name:ident),+ $(,)?) => {$(
        $crate::with_each_setup!(@setups $name,
            #[test]
            fn root_xdp() {
                super::$name(Setup { source: SourceKind::Dir, routing: None, xdp: true })
            }
        );
    )+};
    ($($name:ident),+ $(,)?) => {$(
        $crate::with_each_setup!(@setups $name,);
    )+};
}

/// How a scenario's lab is set up: where the agents read the cluster from,
/// and how nodes reach each other's pods (`None`: by routes the harness
/// installs; otherwise the agents' `--routing`, from Node objects).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    pub source: SourceKind,
    pub routing: Option<Routing>,
    /// The agents run XDP on their node devices (`--nodeport-acceleration
    /// native`; the `xdp:` scenarios of [`with_each_setup`]).
    pub xdp: bool,
}

impl From<SourceKind> for Setup {
    fn from(source: SourceKind) -> Self {
        Self {
            source,
            routing: None,
            xdp: false,
        }
    }
}

impl Setup {
    /// A node of this setup (its pods' MTU as the routing needs).
    pub fn node(self, pod_cidr: &str) -> Node {
        match self.routing {
            Some(routing) => routing.node(pod_cidr),
            None => Node::new(pod_cidr),
        }
    }

    /// The agents' flags.
    pub fn flags(self) -> Vec<String> {
        let mut flags = self.routing.map(Routing::flags).unwrap_or_default();
        if self.xdp {
            flags.extend(["--nodeport-acceleration".into(), "native".into()]);
        }
        flags
    }

    /// Whether the cluster must hold Node objects: the API server's always
    /// (as a cluster's), a directory's when the agents route by them.
    pub fn node_objects(self) -> bool {
        self.source == SourceKind::Kube || self.routing.is_some()
    }
}

/// The two sources, for tests that run a scenario with each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Dir,
    Kube,
}

impl Cluster {
    pub fn new(kind: SourceKind) -> Self {
        match kind {
            SourceKind::Dir => Self::Dir(ManifestDir::new()),
            SourceKind::Kube => Self::Api(ApiServer::new()),
        }
    }

    /// Makes the cluster hold `objects` as "file" `file` (replacing what it held
    /// as that file: objects it no longer holds are deleted).
    pub fn write(&self, file: &str, objects: &[Value]) {
        match self {
            Self::Dir(d) => d.write(file, objects),
            Self::Api(a) => a.write(file, objects),
        }
    }

    pub fn remove(&self, file: &str) {
        match self {
            Self::Dir(d) => d.remove(file),
            Self::Api(a) => a.remove(file),
        }
    }

    /// The manifest directory (panics for the API source: for tests of the
    /// directory source alone).
    pub fn dir(&self) -> &ManifestDir {
        match self {
            Self::Dir(d) => d,
            Self::Api(_) => panic!("this step needs the directory source"),
        }
    }

    pub fn api(&self) -> Option<&ApiServer> {
        match self {
            Self::Api(a) => Some(a),
            Self::Dir(_) => None,
        }
    }
}

/// A Service port: `(name, port, targetPort, protocol)`; a numeric target is given
/// as a number string.
pub fn port(name: &str, port: u16, target: &str, protocol: &str) -> Value {
    let target: Value = target.parse::<u16>().map_or_else(|_| json!(target), |n| json!(n));
    json!({ "name": name, "port": port, "targetPort": target, "protocol": protocol })
}

/// A running Pod as an API server holds it: scheduled on `node`, with its
/// addresses (`status.podIP` the first) and one container's `ports`
/// (`[{name, containerPort, protocol}]`, for named ports).
pub fn pod(namespace: &str, name: &str, labels: Value, node: &str, ips: &[IpAddr], ports: Value) -> Value {
    let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({ "ip": ip.to_string() })).collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "labels": labels },
        "spec": { "nodeName": node, "containers": [{ "name": "c", "image": "lab", "ports": ports }] },
        "status": { "phase": "Running", "podIP": ips.first().map(ToString::to_string), "podIPs": pod_ips },
    })
}

/// A Node as the API server holds it once the controller manager allocated
/// its pod CIDRs (`pod_cidrs`, may be empty) and the kubelet reported its
/// `addresses` (InternalIP).
pub fn node_object(name: &str, pod_cidrs: &[&str], addresses: &[IpAddr]) -> Value {
    let mut spec = json!({});
    if let Some(first) = pod_cidrs.first() {
        spec = json!({ "podCIDR": first, "podCIDRs": pod_cidrs });
    }
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name, "kubernetes.io/os": "linux" } },
        "spec": spec,
        "status": {
            "addresses": addresses.iter().map(|a| json!({ "type": "InternalIP", "address": a.to_string() }))
                .chain([json!({ "type": "Hostname", "address": name })])
                .collect::<Vec<_>>(),
            "conditions": [{ "type": "Ready", "status": "True" }],
        },
    })
}

/// `patch` merged into `target` (objects key by key, anything else replaced), as
/// `kubectl patch --type merge` does.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// A ClusterIP Service as the API server returns it.
pub fn service(name: &str, cluster_ip: &str, ports: &[Value]) -> Value {
    service_with_ips(name, &[cluster_ip], ports)
}

/// A ClusterIP Service with one cluster IP per family (`clusterIPs`, primary
/// first), as the API server returns a dual-stack or single-stack one.
pub fn service_with_ips(name: &str, cluster_ips: &[&str], ports: &[Value]) -> Value {
    let family = |ip: &&str| if ip.contains(':') { "IPv6" } else { "IPv4" };
    let policy = if cluster_ips.len() > 1 {
        "RequireDualStack"
    } else {
        "SingleStack"
    };
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": "default" },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ips[0],
            "clusterIPs": cluster_ips,
            "ipFamilies": cluster_ips.iter().map(family).collect::<Vec<_>>(),
            "ipFamilyPolicy": policy,
            "sessionAffinity": "None",
            "selector": { "app": name },
            "ports": ports,
        }
    })
}

/// An endpoint of a slice: an address with its conditions.
#[derive(Clone, Debug)]
pub struct Ep {
    pub ip: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Ep {
    pub fn ready(ip: IpAddr) -> Self {
        Self {
            ip,
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// Terminating, still serving (graceful shutdown).
    pub fn terminating(ip: IpAddr) -> Self {
        Self {
            ip,
            ready: false,
            serving: true,
            terminating: true,
        }
    }

    /// Running but failing its readiness probe.
    pub fn not_ready(ip: IpAddr) -> Self {
        Self {
            ip,
            ready: false,
            serving: false,
            terminating: false,
        }
    }
}

/// An EndpointSlice of `service` as the EndpointSlice controller writes it (its
/// `addressType` that of the endpoints; one family per slice, as in a cluster).
/// `ports`: `(name, port, protocol)`.
pub fn slice(name: &str, service: &str, node: &str, ports: &[(&str, u16, &str)], endpoints: &[Ep]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": if endpoints.first().is_some_and(|e| e.ip.is_ipv6()) { "IPv6" } else { "IPv4" },
        "endpoints": endpoints.iter().map(|e| json!({
            "addresses": [e.ip.to_string()],
            "conditions": { "ready": e.ready, "serving": e.serving, "terminating": e.terminating },
            "nodeName": node,
        })).collect::<Vec<_>>(),
        "ports": ports.iter().map(|(n, p, proto)| json!({ "name": n, "port": p, "protocol": proto })).collect::<Vec<_>>(),
    })
}

/// `frontend` (`VIP:port/PROTO`) in `weirctl services -o json` output.
pub fn frontend<'a>(services: &'a Value, frontend: &str) -> Option<&'a Value> {
    services
        .as_array()?
        .iter()
        .find(|f| f["frontend"].as_str() == Some(frontend))
}

/// The backend addresses (`ip:port`) in the slots of `frontend`, in slot order;
/// `None` when there is no such frontend.
pub fn slot_addresses(services: &Value, front: &str) -> Option<Vec<String>> {
    Some(
        frontend(services, front)?["backends"]
            .as_array()?
            .iter()
            .filter_map(|b| b["address"].as_str().map(str::to_owned))
            .collect(),
    )
}

impl Agent {
    /// Polls `weirctl services` until `done` holds; panics after [`SYNC_TIMEOUT`]
    /// with the last view and the agent's log.
    pub fn wait_services(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        self.wait_services_within(SYNC_TIMEOUT, what, done)
    }

    /// [`Agent::wait_services`], for up to `within`.
    pub fn wait_services_within(&self, within: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let services = self.weirctl(&["services"]);
            if done(&services) {
                return services;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; weirctl services:\n{services:#}\nagent log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the frontend `front` (`ip:port/PROTO`) of `scope`
    /// (`internal`, `external`) has `count` slots.
    pub fn wait_slots(&self, front: &str, scope: &str, count: usize) -> Value {
        self.wait_services(&format!("{front} with {count} {scope} slots"), |s| {
            s.as_array().is_some_and(|all| {
                all.iter().any(|f| {
                    f["frontend"] == serde_json::json!(front)
                        && f["scope"] == serde_json::json!(scope)
                        && f["count"] == serde_json::json!(count)
                })
            })
        })
    }

    /// Waits until `front` has exactly `backends` (`ip:port`, any order) in its slots.
    pub fn wait_backends(&self, front: &str, backends: &[String]) -> Value {
        self.wait_backends_within(SYNC_TIMEOUT, front, backends)
    }

    /// [`Agent::wait_backends`], for up to `within`.
    pub fn wait_backends_within(&self, within: Duration, front: &str, backends: &[String]) -> Value {
        let mut want: Vec<String> = backends.to_vec();
        want.sort();
        self.wait_services_within(within, &format!("{front} -> {want:?}"), |s| {
            slot_addresses(s, front).is_some_and(|mut got| {
                got.sort();
                got == want
            })
        })
    }

    /// Waits until `front` is absent from the maps.
    pub fn wait_no_frontend(&self, front: &str) -> Value {
        self.wait_services(&format!("{front} to be absent"), |s| frontend(s, front).is_none())
    }
}
