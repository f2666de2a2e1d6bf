//! Tier 2 (root + namespaces): `weir-agent --source kube` against the lab's
//! API server (real HTTPS, list and watch): Services from the API, readiness,
//! and the API's failure modes with real packets flowing.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use weir_lab::{
    Node, http_get,
    services::{Cluster, Ep, SourceKind, port, service, slice},
    whoami::{WhoAmI, ask_tcp},
};

const VIP: &str = "10.96.0.10";

/// Polls `127.0.0.1:9879/readyz` in the node until it answers `ok`.
fn wait_ready(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = http_get(&node.ns, "127.0.0.1:9879", "/readyz");
        if body.trim() == "ok" {
            return;
        }
        assert!(Instant::now() < deadline, "never ready:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn root_kube_source_serves_services_from_the_api() {
    let cluster = Cluster::new(SourceKind::Kube);
    let mut node = Node::new("10.92.1.0/24");
    let agent = node.start_agent_for(&cluster);
    let a = node.add_pod("a");
    let client = node.add_pod("client");
    let _server = WhoAmI::start(&a.ns, "a", a.ipv4(), &[8080]);
    cluster.write(
        "web",
        &[
            service("web", VIP, &[port("http", 80, "8080", "TCP")]),
            slice("web-x", "web", node.name(), &[("http", 8080, "TCP")], &[Ep::ready(a.ipv4())]),
        ],
    );
    agent.wait_backends(&format!("{VIP}:80/TCP"), &[format!("{}:8080", a.ipv4())]);
    let answer = ask_tcp(&client.ns, SocketAddr::new(VIP.parse().expect("vip"), 80)).expect("through the ClusterIP");
    assert_eq!(answer.server, "a");
    wait_ready(&node);
}
