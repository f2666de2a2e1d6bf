//! Tier 2 (root + namespaces): `weir-agent --source kube` against the lab's
//! API server (real HTTPS, paged lists and watches): the API's failure modes
//! with real packets flowing, readiness, the node's pod CIDRs and addresses,
//! kube-proxy's health contract.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use weir_lab::{
    Agent, Node, PodSpec, TempDir,
    agent::logged,
    apiserver::ApiServer,
    node::result_ips,
    services::{Cluster, Ep, SourceKind, frontend, node_object, port, service, slice, slot_addresses},
    traffic::ConnectionLoad,
    underlay::Underlay,
    whoami::{WhoAmI, ask_tcp},
};

const VIP: &str = "10.96.0.10";
const FRONT: &str = "10.96.0.10:80/TCP";
/// The kinds the agent watches, as the API server names them.
const KINDS: [&str; 6] = [
    "Service",
    "EndpointSlice",
    "Pod",
    "Namespace",
    "Node",
    "NetworkPolicy",
];

fn web(node: &str, backends: &[IpAddr]) -> Vec<Value> {
    let eps: Vec<Ep> = backends.iter().map(|ip| Ep::ready(*ip)).collect();
    vec![
        service("web", VIP, &[port("http", 80, "8080", "TCP")]),
        slice("web-x", "web", node, &[("http", 8080, "TCP")], &eps),
    ]
}

fn backends(ips: &[IpAddr]) -> Vec<String> {
    ips.iter().map(|ip| format!("{ip}:8080")).collect()
}

fn vip() -> SocketAddr {
    SocketAddr::new(VIP.parse().expect("vip"), 80)
}

/// List requests served so far, per kind.
fn lists(api: &ApiServer) -> Vec<u64> {
    KINDS.iter().map(|k| api.requests(k, "list")).collect()
}

fn watches(api: &ApiServer) -> Vec<u64> {
    KINDS.iter().map(|k| api.requests(k, "watch")).collect()
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every kind's count in `now()` passed `before`.
fn wait_all_past(what: &str, before: &[u64], now: impl Fn() -> Vec<u64>) {
    wait_until(what, || now().iter().zip(before).all(|(n, b)| n > b));
}

/// A node running an agent on the API with a Service `web` of two backends,
/// and a client.
struct Lab {
    _servers: Vec<WhoAmI>,
    agent: Agent,
    a: IpAddr,
    b: IpAddr,
    client: weir_lab::Pod,
    _pods: Vec<weir_lab::Pod>,
    node: Node,
    cluster: Cluster,
}

impl Lab {
    fn new(cidr: &str, prepare: impl FnOnce(&ApiServer)) -> Self {
        Self::with_flags(cidr, prepare, Vec::new())
    }

    fn with_flags(cidr: &str, prepare: impl FnOnce(&ApiServer), flags: Vec<String>) -> Self {
        let cluster = Cluster::new(SourceKind::Kube);
        prepare(cluster.api().expect("the API"));
        let mut node = Node::new(cidr);
        let agent = node.start_agent_for_with(&cluster, flags);
        let (pa, pb, client) = (node.add_pod("a"), node.add_pod("b"), node.add_pod("client"));
        let servers = vec![
            WhoAmI::start(&pa.ns, "a", pa.ipv4(), &[8080]),
            WhoAmI::start(&pb.ns, "b", pb.ipv4(), &[8080]),
        ];
        let (a, b) = (pa.ipv4(), pb.ipv4());
        cluster.write("web", &web(node.name(), &[a, b]));
        agent.wait_backends(FRONT, &backends(&[a, b]));
        Self {
            _servers: servers,
            agent,
            a,
            b,
            client,
            _pods: vec![pa, pb],
            node,
            cluster,
        }
    }

    fn api(&self) -> &ApiServer {
        self.cluster.api().expect("the API")
    }

    fn load(&self) -> ConnectionLoad {
        ConnectionLoad::start(&self.client.ns, |ns| ask_tcp(ns, vip()).map(|_| ()))
    }
}

#[test]
fn root_kube_source_serves_services_from_the_api() {
    let lab = Lab::new("10.92.1.0/24", |_| {});
    let answer = ask_tcp(&lab.client.ns, vip()).expect("through the ClusterIP");
    assert!(["a", "b"].contains(&answer.server.as_str()));
    lab.agent.wait_ready();
    // Paged lists, one watch per kind, and nothing the RBAC does not grant.
    for kind in KINDS {
        assert!(lab.api().requests(kind, "list") >= 1, "{kind} never listed");
        assert!(lab.api().requests(kind, "watch") >= 1, "{kind} never watched");
    }
    assert_eq!(
        lab.api().requests("Endpoints", "list"),
        0,
        "Endpoints are the controllers' business in a cluster"
    );
}

/// A dropped watch resumes from its last resourceVersion; a watch that took a
/// BOOKMARK resumes past a compaction; an expired one lists again, and the
/// relist rewrites nothing that did not change. Connections through the
/// Service never notice.
#[test]
fn root_kube_watch_drops_bookmarks_and_410_relists_under_load() {
    let lab = Lab::new("10.92.2.0/24", |_| {});
    let (api, agent) = (lab.api(), &lab.agent);
    agent.wait_ready();
    let load = lab.load();

    // Dropped: resumed, not relisted; what changes next arrives.
    let (l0, w0) = (lists(api), watches(api));
    api.drop_watches();
    wait_all_past("every watch resumed after the drop", &w0, || watches(api));
    lab.cluster.write("web", &web(lab.node.name(), &[lab.a]));
    agent.wait_backends(FRONT, &backends(&[lab.a]));
    assert_eq!(
        lists(api),
        l0,
        "a dropped watch must resume from its resourceVersion, not list again"
    );

    // Bookmarked: other kinds moved the resourceVersion on; the bookmark
    // tells every watch, so that a compaction does not expire them.
    api.apply(&json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "elsewhere" } }));
    api.bookmark();
    std::thread::sleep(Duration::from_secs(1));
    let w1 = watches(api);
    api.trim_history();
    wait_all_past("every watch resumed after the compaction", &w1, || watches(api));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        lists(api),
        l0,
        "a watch that took the last BOOKMARK must resume after a compaction without a list"
    );

    // Expired: every kind lists again; the relist brings nothing new, so no
    // map is written.
    let mark = agent.log_text().len();
    api.compact();
    wait_all_past("every kind listed again after 410", &l0, || lists(api));
    wait_until("the relist compiled", || {
        agent.log_since(mark).contains("services synced")
    });
    std::thread::sleep(Duration::from_millis(500));
    let log = agent.log_since(mark);
    for (what, message) in [("service", "services synced"), ("policy", "policies synced")] {
        for field in ["writes", "deletes"] {
            let n: Vec<String> = logged(&log, message, field);
            assert!(
                n.iter().all(|n| n == "0"),
                "the relist rewrote {what} maps ({field} {n:?}):\n{log}"
            );
        }
    }
    // The relisted watches carry what changes next.
    lab.cluster.write("web", &web(lab.node.name(), &[lab.a, lab.b]));
    agent.wait_backends(FRONT, &backends(&[lab.a, lab.b]));
    let n = load.stop_and_assert_none_failed("through watch drops, a compaction and a relist");
    println!("{n} connections through the ClusterIP, none failed");
}

/// An object deleted while the agent could not watch, its deletion then lost
/// to a compaction: the relist does not list it, so it is gone from the maps
/// once the relist is whole (what a relist lacks is deleted), and nothing else
/// is.
#[test]
fn root_kube_a_deletion_missed_while_down_is_applied_by_the_relist() {
    let lab = Lab::new("10.92.7.0/24", |_| {});
    lab.agent.wait_ready();
    let api = lab.api();
    const GONE: &str = "10.96.0.20:80/TCP";
    api.apply(&service("gone", "10.96.0.20", &[port("http", 80, "8080", "TCP")]));
    wait_until("the second Service programmed", || {
        frontend(&lab.agent.weirctl(&["services"]), GONE).is_some()
    });

    api.set_down(true);
    api.delete("Service", "default", "gone");
    api.compact();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        frontend(&lab.agent.weirctl(&["services"]), GONE).is_some(),
        "the agent cannot have seen the deletion"
    );
    let lists_before = lists(api);
    api.set_down(false);
    wait_until("the relist dropped the Service deleted unseen", || {
        frontend(&lab.agent.weirctl(&["services"]), GONE).is_none()
    });
    assert!(
        lists(api)[0] > lists_before[0],
        "Services were listed again (a 410 relist), not watched"
    );
    let mut slots = slot_addresses(&lab.agent.weirctl(&["services"]), FRONT).expect("web is still there");
    slots.sort();
    slots.dedup();
    assert_eq!(slots, backends(&[lab.a, lab.b]));
}

/// The API server down mid-run, the agent restarted while it is down, then the
/// API slow when it comes back: the datapath keeps its last state throughout
/// (nothing flushed before every kind is listed whole), readiness says why,
/// and the agent catches up.
#[test]
fn root_kube_api_down_or_slow_keeps_the_datapath() {
    let mut lab = Lab::new("10.92.3.0/24", |_| {});
    lab.agent.wait_ready();
    let load = lab.load();
    let api = lab.api();

    api.set_down(true);
    let (_, why) = lab
        .agent
        .wait_health("/readyz", "unready with the API down", |c, _| c == 503);
    assert_eq!(lab.agent.health("/healthz").0, 200, "the agent is alive: {why}");
    // A change the agent cannot see yet.
    lab.cluster.write("web", &web(lab.node.name(), &[lab.a]));
    std::thread::sleep(Duration::from_secs(1));
    let services = lab.agent.weirctl(&["services"]);
    assert_eq!(
        slot_addresses(&services, FRONT).map(|mut s| {
            s.sort();
            s.dedup();
            s
        }),
        Some(backends(&[lab.a, lab.b]))
    );

    // A restart while the API is down flushes nothing.
    let name = lab.node.name().to_owned();
    lab.agent.restart(&name);
    std::thread::sleep(Duration::from_secs(2));
    let services = lab.agent.weirctl(&["services"]);
    let mut slots = slot_addresses(&services, FRONT).expect("the Service survived the restart");
    slots.sort();
    slots.dedup();
    assert_eq!(
        slots,
        backends(&[lab.a, lab.b]),
        "maps flushed or changed before the first complete list"
    );
    let (code, why) = lab.agent.health("/readyz");
    assert!(
        code == 503 && why.contains("Service not listed yet"),
        "{code} {why}"
    );

    // Back, but slow: every list takes 1.5 s.
    let api = lab.api();
    api.set_latency(Duration::from_millis(1500));
    api.set_down(false);
    lab.agent.wait_backends(FRONT, &backends(&[lab.a]));
    lab.agent.wait_ready();
    api.set_latency(Duration::ZERO);
    let n = load.stop_and_assert_none_failed("with the API down, the agent restarted, and the API slow");
    println!("{n} connections through the ClusterIP, none failed");
}

/// Streaming lists (`--streaming-lists`): every kind's state comes with its
/// watch, no list is made; a server that refuses them (Kubernetes 1.33) is
/// reported and keeps the agent unready.
#[test]
fn root_kube_streaming_lists_and_a_server_that_refuses_them() {
    let lab = Lab::with_flags("10.92.5.0/24", |_| {}, vec!["--streaming-lists".into()]);
    lab.agent.wait_ready();
    for kind in KINDS {
        assert_eq!(
            lab.api().requests(kind, "list"),
            0,
            "{kind} listed despite streaming lists"
        );
        assert!(lab.api().requests(kind, "watch") >= 1, "{kind} never watched");
    }
    assert_eq!(
        ask_tcp(&lab.client.ns, vip()).map(|a| a.server.len()).ok(),
        Some(1)
    );
    // A change arrives through the same watch.
    lab.cluster.write("web", &web(lab.node.name(), &[lab.a]));
    lab.agent.wait_backends(FRONT, &backends(&[lab.a]));

    let cluster = Cluster::new(SourceKind::Kube);
    cluster.api().expect("the API").refuse_streaming_lists(true);
    let mut node = Node::new("10.92.6.0/24");
    let agent = node.start_agent_for_with(&cluster, vec!["--streaming-lists".into()]);
    agent.wait_health("/readyz", "reporting the refusal", |c, b| {
        c == 503 && b.contains("WatchList")
    });
}

/// RBAC that forbids one kind: reported, not ready, everything else works.
#[test]
fn root_kube_a_forbidden_kind_is_reported_and_the_rest_works() {
    let lab = Lab::new("10.92.4.0/24", |api| api.forbid("NetworkPolicy", true));
    ask_tcp(&lab.client.ns, vip()).expect("Services work without NetworkPolicies");
    let (_, why) = lab
        .agent
        .wait_health("/readyz", "reporting the forbidden kind", |c, b| {
            c == 503 && b.contains("NetworkPolicy") && b.contains("forbidden")
        });
    assert!(
        !why.contains("Service not listed"),
        "the other kinds must be listed: {why}"
    );
    assert_eq!(lab.agent.health("/healthz").0, 200);
    assert!(
        lab.agent.log_text().contains("forbidden"),
        "the agent must log the refusal"
    );
    lab.api().forbid("NetworkPolicy", false);
    lab.agent.wait_ready();
}

/// RBAC without Nodes: the first service compile, which waits for the Nodes
/// to be listed (for this node's zone), does not wait for ever: Services
/// work, without topology.
#[test]
fn root_kube_services_work_where_nodes_cannot_be_listed() {
    let lab = Lab::new("10.92.8.0/24", |api| api.forbid("Node", true));
    ask_tcp(&lab.client.ns, vip()).expect("Services work without Nodes");
    let (_, why) = lab
        .agent
        .wait_health("/readyz", "reporting the forbidden kind", |c, b| {
            c == 503 && b.contains("Node") && b.contains("forbidden")
        });
    assert!(!why.contains("Service not listed"), "{why}");
}

/// The Node object: its pod CIDRs become the conflist the agent writes (and
/// readiness waits for them), its addresses are where NodePorts are served,
/// reread when they change; kube-proxy's `/healthz` answers on :10256.
#[test]
fn root_kube_node_pod_cidrs_conflist_and_addresses() {
    let underlay = Underlay::new(94);
    let cluster = Cluster::new(SourceKind::Kube);
    let api = cluster.api().expect("the API");
    let mut node = Node::new("10.94.1.0/24");
    let node_ip = underlay.join(&[&node])[0];
    let second: IpAddr = "10.200.94.51".parse().expect("ip");
    node.ns.sh(&format!(
        "ip addr add {second}/24 dev $(ip -o -4 addr show to {node_ip}/32 | awk '{{print $2}}')"
    ));
    let (external, _) = underlay.external();
    let conf_dir = TempDir::new("weir-cni-conf-");
    let conf_path = conf_dir.join("05-weir.conflist");
    let agent = node.start_agent_for_with(
        &cluster,
        vec![
            format!("--cni-conf-file={}", conf_path.display()),
            "--cni-chain-portmap=never".into(),
        ],
    );
    let name = node.name().to_owned();

    // No Node yet, then one without pod CIDRs: reported, nothing written.
    agent.wait_health("/readyz", "reporting the missing Node", |c, b| {
        c == 503 && b.contains("not found")
    });
    api.apply(&node_object(&name, &[], &[node_ip]));
    let (_, why) = agent.wait_health("/readyz", "reporting the missing pod CIDRs", |c, b| {
        c == 503 && b.contains("no spec.podCIDRs")
    });
    assert!(!conf_path.exists(), "a conflist written without pod CIDRs: {why}");

    // Allocated (dual-stack): the conflist follows, then readiness.
    api.apply(&node_object(
        &name,
        &["10.94.1.0/24", "fd00:94:1::/64"],
        &[node_ip],
    ));
    agent.wait_ready();
    let conflist: Value =
        serde_json::from_slice(&std::fs::read(&conf_path).expect("the conflist")).expect("JSON");
    assert_eq!(conflist["cniVersion"], "1.0.0");
    let plugins = conflist["plugins"].as_array().expect("plugins");
    assert_eq!(plugins.len(), 1, "no portmap when told never: {conflist}");
    assert_eq!(plugins[0]["type"], "weir-cni");
    assert_eq!(
        plugins[0]["ipam"]["ranges"],
        json!([[{ "subnet": "10.94.1.0/24" }], [{ "subnet": "fd00:94:1::/64" }]])
    );
    assert_eq!(plugins[0]["agentSocket"], json!(agent.socket));
    // As a runtime reads it (libcni gives each plugin the list's name and
    // version): a pod gets one address of each pod CIDR.
    let mut plugin = plugins[0].clone();
    plugin["name"] = conflist["name"].clone();
    plugin["cniVersion"] = conflist["cniVersion"].clone();
    let (_pod_ns, spec) = PodSpec::with_netns("conflist-pod");
    let added = node.call_with("ADD", &spec, &plugin).run().ok();
    let ips = result_ips(&added);
    assert!(
        ips.iter().any(|ip| ip.to_string().starts_with("10.94.1."))
            && ips.iter().any(|ip| ip.to_string().starts_with("fd00:94:1:")),
        "{added}"
    );
    node.call_with("DEL", &spec, &plugin).run().ok();

    // kube-proxy's health contract, where load balancers probe it.
    let (code, body) = agent.get("127.0.0.1:10256", "/healthz");
    let health: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(code, 200, "{body}");
    assert!(
        health["lastUpdated"].as_str().is_some_and(|t| t.ends_with('Z')) && health["currentTime"].is_string(),
        "{body}"
    );

    // NodePorts on the Node's addresses, following them when they change.
    let a = node.add_pod("a");
    let _server = WhoAmI::start(&a.ns, "a", a.ipv4(), &[8080]);
    let mut np = service(
        "np",
        "10.96.0.94",
        &[json!({ "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30094 })],
    );
    np["spec"]["type"] = json!("NodePort");
    cluster.write(
        "np",
        &[
            np,
            slice(
                "np-x",
                "np",
                &name,
                &[("http", 8080, "TCP")],
                &[Ep::ready(a.ipv4())],
            ),
        ],
    );
    agent.wait_backends("10.96.0.94:80/TCP", &backends(&[a.ipv4()]));
    let at = |ip: IpAddr| SocketAddr::new(ip, 30094);
    wait_until("the NodePort on the Node's address", || {
        ask_tcp(&external, at(node_ip)).is_ok()
    });
    assert!(
        ask_tcp(&external, at(second)).is_err(),
        "a NodePort on an address the Node does not list"
    );
    api.apply(&node_object(
        &name,
        &["10.94.1.0/24", "fd00:94:1::/64"],
        &[second],
    ));
    wait_until("the NodePort moved to the Node's new address", || {
        ask_tcp(&external, at(second)).is_ok()
    });
    assert_eq!(ask_tcp(&external, at(second)).expect("new address").server, "a");
    assert!(
        ask_tcp(&external, at(node_ip)).is_err(),
        "the NodePort stayed on the Node's old address"
    );
}
