//! Tier 2 (root + namespaces): two lab nodes joined by an underlay with native
//! routing of pod CIDRs, one agent each, both reading the same cluster (a manifest
//! directory, or the lab's API server: as every node of a cluster watches the
//! same API). A ClusterIP whose endpoints live on
//! the other node is translated on the client's node, and the backend's replies,
//! which come back over the underlay, are translated back on the way into the
//! client pod.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use weir_lab::{
    Node,
    services::{Cluster, Ep, SourceKind, port, service, slice},
    underlay,
    whoami::{WhoAmI, ask_tcp, ask_udp},
};

weir_lab::with_both_sources!(clusterip_reaches_endpoints_on_another_node,);

fn clusterip_reaches_endpoints_on_another_node(kind: SourceKind) {
    let cluster = Cluster::new(kind);
    let mut node_a = Node::new("10.93.1.0/24");
    let mut node_b = Node::new("10.93.2.0/24");
    underlay::link(&node_a, &node_b, 93);
    let agent_a = node_a.start_agent_for(&cluster);
    let _agent_b = node_b.start_agent_for(&cluster);

    let remote = node_b.add_pod("remote");
    let local = node_a.add_pod("local");
    let client = node_a.add_pod("client");
    let _servers = [
        WhoAmI::start(&remote.ns, "remote", remote.ipv4(), &[8080]),
        WhoAmI::start(&local.ns, "local", local.ipv4(), &[8080]),
    ];

    // Direct pod-to-pod across the underlay works before any Service exists.
    let direct = ask_tcp(&client.ns, SocketAddr::new(remote.ipv4(), 8080)).expect("pod to remote pod");
    assert_eq!(direct.server, "remote");

    let manifests = |endpoints: &[(&str, IpAddr)]| {
        let mut objects = vec![service(
            "web",
            "10.96.0.20",
            &[port("tcp", 80, "8080", "TCP"), port("udp", 53, "8080", "UDP")],
        )];
        for (node, ip) in endpoints {
            objects.push(slice(
                &format!("web-{node}"),
                "web",
                node,
                &[("tcp", 8080, "TCP"), ("udp", 8080, "UDP")],
                &[Ep::ready(*ip)],
            ));
        }
        objects
    };
    let only_remote = manifests(&[(node_b.name(), remote.ipv4())]);
    cluster.write("web.yaml", &only_remote);
    let backend = format!("{}:8080", remote.ipv4());
    agent_a.wait_backends("10.96.0.20:80/TCP", std::slice::from_ref(&backend));

    let vip = |p| SocketAddr::new("10.96.0.20".parse().expect("VIP"), p);
    for i in 0..10 {
        let a = ask_tcp(&client.ns, vip(80))
            .unwrap_or_else(|e| panic!("TCP {i} via ClusterIP to the other node: {e}"));
        assert_eq!(a.server, "remote");
        assert_eq!(
            a.peer.ip(),
            client.ipv4(),
            "the remote backend must see the client pod's own address"
        );
        let a = ask_udp(&client.ns, vip(53))
            .unwrap_or_else(|e| panic!("UDP {i} via ClusterIP to the other node: {e}"));
        assert_eq!(a.server, "remote");
        assert_eq!(a.peer.ip(), client.ipv4());
    }

    // Endpoints on both nodes: new connections reach both, replies come back right.
    let both = manifests(&[(node_b.name(), remote.ipv4()), (node_a.name(), local.ipv4())]);
    cluster.write("web.yaml", &both);
    agent_a.wait_backends("10.96.0.20:80/TCP", &[backend, format!("{}:8080", local.ipv4())]);
    let servers: BTreeSet<String> = (0..40)
        .map(|i| {
            ask_tcp(&client.ns, vip(80))
                .unwrap_or_else(|e| panic!("TCP {i}: {e}"))
                .server
        })
        .collect();
    assert_eq!(
        servers,
        BTreeSet::from(["local".to_owned(), "remote".to_owned()]),
        "40 connections over a local and a remote endpoint"
    );
}
