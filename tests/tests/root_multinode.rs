//! Tier 2 (root + namespaces): lab nodes joined by an underlay, pod CIDRs
//! routed by the harness or by the agents (`--routing native` or `vxlan`),
//! one agent each, both reading the same cluster (a manifest
//! directory, or the lab's API server: as every node of a cluster watches the
//! same API). A ClusterIP whose endpoints live on
//! the other node is translated on the client's node, and the backend's replies,
//! which come back over the underlay, are translated back on the way into the
//! client pod.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use std::time::{Duration, Instant};

use serde_json::Value;
use weir_lab::{
    Agent, Node, Pod,
    netns::Netns,
    services::{Cluster, Ep, ManifestDir, Setup, node_object, port, service, slice},
    traffic::ConnectionLoad,
    traffic::{EchoServer, tcp_roundtrip, udp_roundtrip},
    underlay::{self, Routing, Underlay},
    whoami::{WhoAmI, ask_tcp, ask_udp},
};

weir_lab::with_each_setup!(clusterip_reaches_endpoints_on_another_node,);

fn clusterip_reaches_endpoints_on_another_node(setup: Setup) {
    let cluster = Cluster::new(setup.source);
    let mut node_a = setup.node("10.93.1.0/24");
    let mut node_b = setup.node("10.93.2.0/24");
    two_nodes(setup, &cluster, &node_a, &node_b, 93);
    let agent_a = node_a.start_agent_for_with(&cluster, setup.flags());
    let _agent_b = node_b.start_agent_for_with(&cluster, setup.flags());

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

weir_lab::with_each_setup!(a_zones_clients_use_the_endpoints_hinted_for_their_zone,);

/// Topology-aware routing (`trafficDistribution: PreferClose`, the zone
/// hints the EndpointSlice controller writes): a pod's connections to a
/// ClusterIP stay with the endpoints hinted for its node's zone, and follow
/// the zone label when the Node is relabelled.
fn a_zones_clients_use_the_endpoints_hinted_for_their_zone(setup: Setup) {
    let cluster = Cluster::new(setup.source);
    let mut node_a = setup.node("10.86.1.0/24");
    let mut node_b = setup.node("10.86.2.0/24");
    // The Node objects carry the zones: written whatever the routing (the
    // harness's routes, or the agents' from these objects).
    let ips = if setup.routing.is_some() {
        let (a, b) = underlay::link_plain(&node_a, &node_b, 92);
        [vec![a], vec![b]]
    } else {
        underlay::link(&node_a, &node_b, 92);
        [vec![], vec![]]
    };
    let named = [&node_a, &node_b].map(|n| (n.name().to_owned(), n.pod_cidr()));
    let nodes = |zone_a: &str| {
        [(&named[0], zone_a, &ips[0]), (&named[1], "zone-b", &ips[1])].map(|((name, cidr), zone, ips)| {
            let mut object = node_object(name, &[cidr], ips);
            object["metadata"]["labels"]["topology.kubernetes.io/zone"] = zone.into();
            object
        })
    };
    cluster.write("nodes.yaml", &nodes("zone-a"));
    let agent_a = node_a.start_agent_for_with(&cluster, setup.flags());
    let _agent_b = node_b.start_agent_for_with(&cluster, setup.flags());

    let near = node_a.add_pod("near");
    let far = node_b.add_pod("far");
    let client = node_a.add_pod("client");
    let _servers = [
        WhoAmI::start(&near.ns, "near", near.ipv4(), &[8080]),
        WhoAmI::start(&far.ns, "far", far.ipv4(), &[8080]),
    ];
    let mut svc = service("near", "10.96.0.31", &[port("tcp", 80, "8080", "TCP")]);
    svc["spec"]["trafficDistribution"] = "PreferClose".into();
    let hinted = |name: &str, node: &Node, pod: &Pod, zone: &str| {
        let mut s = slice(
            name,
            "near",
            node.name(),
            &[("tcp", 8080, "TCP")],
            &[Ep::ready(pod.ipv4())],
        );
        s["endpoints"][0]["zone"] = zone.into();
        s["endpoints"][0]["hints"] = serde_json::json!({ "forZones": [{ "name": zone }] });
        s
    };
    cluster.write(
        "near.yaml",
        &[
            svc,
            hinted("near-a", &node_a, &near, "zone-a"),
            hinted("near-b", &node_b, &far, "zone-b"),
        ],
    );
    let front = "10.96.0.31:80/TCP";
    let (at_near, at_far) = (format!("{}:8080", near.ipv4()), format!("{}:8080", far.ipv4()));
    let vip = SocketAddr::new("10.96.0.31".parse().expect("VIP"), 80);
    let servers = |n: usize| -> BTreeSet<String> {
        (0..n)
            .map(|i| {
                ask_tcp(&client.ns, vip)
                    .unwrap_or_else(|e| panic!("TCP {i} to the ClusterIP: {e}"))
                    .server
            })
            .collect()
    };
    let only = |server: &str| BTreeSet::from([server.to_owned()]);

    agent_a.wait_backends(front, std::slice::from_ref(&at_near));
    assert_eq!(servers(20), only("near"), "zone-a's clients, zone-a's endpoint");

    // The node moves to zone-b: its clients go to zone-b's endpoint, across
    // the underlay.
    cluster.write("nodes.yaml", &nodes("zone-b"));
    agent_a.wait_backends(front, std::slice::from_ref(&at_far));
    assert_eq!(servers(20), only("far"), "zone-b's clients, zone-b's endpoint");
    // `weirctl status` says which zone the agent compiles for.
    let pins = weir_agent::datapath::PinLayout::new(agent_a.bpffs_root.clone());
    let status = Netns::attach(&agent_a.netns).run(move || {
        weir_agent::ctl::status(&pins, "127.0.0.1:9879".parse().expect("addr")).expect("status")
    });
    let report = status.agent.report.expect("the agent answers");
    assert_eq!(report["zone"], "zone-b", "{report:#}");

    // A zone no endpoint is hinted for: every endpoint.
    cluster.write("nodes.yaml", &nodes("zone-c"));
    agent_a.wait_backends(front, &[at_near, at_far]);
    assert_eq!(
        servers(40),
        BTreeSet::from(["near".to_owned(), "far".to_owned()]),
        "40 connections with no endpoint hinted for this zone"
    );
}

/// Joins two nodes on a veth: routes between their pods by the harness, or,
/// for the agents to route, Node objects in the cluster.
fn two_nodes(setup: Setup, cluster: &Cluster, a: &Node, b: &Node, n: u8) {
    if setup.routing.is_none() {
        return underlay::link(a, b, n);
    }
    let (ip_a, ip_b) = underlay::link_plain(a, b, n);
    cluster.write(
        "nodes.yaml",
        &[
            node_object(a.name(), &[&a.pod_cidr()], &[ip_a]),
            node_object(b.name(), &[&b.pod_cidr()], &[ip_b]),
        ],
    );
}

/// Waits until `agent`'s tunnel map (`weirctl tunnels`) leads exactly `want`'s
/// pod CIDRs to their nodes' addresses.
fn wait_tunnels(agent: &Agent, want: &[(String, String)]) {
    let mut want = want.to_vec();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = agent.weirctl(&["tunnels"]);
        let got: Vec<(String, String)> = rows
            .as_array()
            .expect("tunnel rows")
            .iter()
            .map(|r| {
                (
                    r["pod_cidr"].as_str().unwrap_or_default().to_owned(),
                    r["node"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "tunnels {got:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `--routing vxlan`: traffic between `client` (on `agent`'s node) and
/// `server` (on another) goes through the overlay's programs (GSO packets
/// count once), and packets of
/// every size arrive whole: the pods' MTU leaves room for the tunnel, so a
/// full-size TCP segment and a 1,400-byte datagram cross it, and what does
/// not fit is refused at the sender (DF), never lost on the way.
fn through_the_overlay(agent: &Agent, client: &Pod, server: &Pod) {
    let (sent, received) = (agent.forwarded("to-overlay"), agent.forwarded("from-overlay"));
    let echo = EchoServer::start(&server.ns, SocketAddr::new(server.ipv4(), 0));
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let back = tcp_roundtrip(&client.ns, echo.addr, &big).expect("1 MiB over TCP through the overlay");
    assert!(back == big, "1 MiB over TCP came back changed");
    let datagram = vec![7u8; 1400];
    let back = udp_roundtrip(&client.ns, echo.addr, &datagram).expect("a 1,400-byte datagram");
    assert_eq!(back, datagram);
    assert_eq!(
        client.ns.sh("cat /sys/class/net/eth0/mtu").trim(),
        "1450",
        "the pod's MTU"
    );
    // 1,450 bytes of IPv4 (20 + 8 of ICMP + 1,422) fit, unfragmented; one more does not.
    let ping = |size: u32| {
        let (size, to) = (size.to_string(), server.ipv4().to_string());
        client.ns.exec(&["ping", "-c1", "-W2", "-Mdo", "-s", &size, &to])
    };
    let fits = ping(1422);
    assert!(
        fits.status.success(),
        "a full-size packet with DF: {}",
        String::from_utf8_lossy(&fits.stdout)
    );
    let too_big = ping(1423);
    assert!(
        !too_big.status.success(),
        "a packet above the pod's MTU with DF left the pod"
    );
    let metrics = agent.weirctl(&["metrics"]);
    let dropped: Vec<&Value> = metrics
        .as_array()
        .expect("metrics rows")
        .iter()
        .filter(|r| {
            r["direction"].as_str().is_some_and(|d| d.ends_with("overlay")) && r["reason"] != "forwarded"
        })
        .collect();
    assert!(dropped.is_empty(), "the overlay dropped packets: {dropped:?}");
    let more_sent = agent.forwarded("to-overlay") - sent;
    let more_received = agent.forwarded("from-overlay") - received;
    assert!(
        more_sent > 10 && more_received > 10,
        "packets through the overlay's programs: {more_sent} sent, {more_received} received"
    );
}

/// Weir's routes on a node (`ip route show proto 87`): destination -> next
/// hop (`via` address, or the device for the overlay's).
fn weir_routes(node: &Node) -> Vec<(String, String)> {
    node.ns
        .sh("ip route show proto 87")
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let hop = words
                .iter()
                .position(|w| *w == "via")
                .or_else(|| words.iter().position(|w| *w == "dev"))?;
            Some((words[0].to_owned(), words.get(hop + 1)?.to_string()))
        })
        .collect()
}

/// Waits until `node`'s Weir routes are exactly `want` (destination, next hop).
fn wait_routes(node: &Node, want: &[(String, String)]) {
    let mut want = want.to_vec();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut got = weir_routes(node);
        got.sort();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: Weir's routes {got:?}, want {want:?}\n{}",
            node.name(),
            node.ns.sh("ip route")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Three nodes on one L2 segment and not one route installed by the harness:
/// the underlay carries the nodes' own addresses only. Each agent routes the
/// other Nodes' pod CIDRs, from the Node objects (here a manifest
/// directory's): `--routing native` (the default) via their InternalIPs,
/// `--routing vxlan` into the overlay, whose tunnels lead to the same
/// addresses. Routes follow as a Node joins and another leaves, while a pod
/// keeps connecting to a pod of another node; a route that is not Weir's is
/// never touched.
#[test]
fn root_native_routing_follows_the_node_objects() {
    routing_follows_the_node_objects(Routing::Native);
}

#[test]
fn root_vxlan_routing_follows_the_node_objects() {
    routing_follows_the_node_objects(Routing::Vxlan);
}

fn routing_follows_the_node_objects(routing: Routing) {
    let dir = ManifestDir::new();
    let underlay = Underlay::new(if routing == Routing::Vxlan { 96 } else { 95 });
    let mut nodes: Vec<Node> = (1..=4)
        .map(|i| routing.node(&format!("10.{}.{i}.0/24", underlay.n())))
        .collect();
    let ips = underlay.plug_nodes(&nodes.iter().take(3).collect::<Vec<_>>());
    // Somebody else's route: Weir leaves it alone.
    nodes[0]
        .ns
        .sh(&format!("ip route add 10.123.0.0/16 via {} proto static", ips[1]));
    let names: Vec<String> = nodes.iter().map(|n| n.name().to_owned()).collect();
    let cidrs: Vec<String> = nodes.iter().map(Node::pod_cidr).collect();
    let objects = |members: &[usize], ips: &[std::net::IpAddr]| {
        members
            .iter()
            .map(|&i| node_object(&names[i], &[&cidrs[i]], &[ips[i]]))
            .collect::<Vec<_>>()
    };
    dir.write("nodes.yaml", &objects(&[0, 1, 2], &ips));
    let mut agents: Vec<_> = nodes
        .iter_mut()
        .take(3)
        .map(|n| n.start_agent_with_source_and(dir.path(), routing.flags()))
        .collect();
    let pods: Vec<_> = nodes
        .iter()
        .take(3)
        .enumerate()
        .map(|(i, n)| n.add_pod(&format!("p{i}")))
        .collect();
    let _servers: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| WhoAmI::start(&p.ns, &format!("p{i}"), p.ipv4(), &[8080]))
        .collect();
    let route = |i: usize, ips: &[std::net::IpAddr]| (cidrs[i].clone(), routing.hop(ips[i]));
    wait_routes(&nodes[0], &[route(1, &ips), route(2, &ips)]);
    let tunnel = |i: usize, ips: &[std::net::IpAddr]| (cidrs[i].clone(), ips[i].to_string());
    if routing == Routing::Vxlan {
        wait_tunnels(&agents[0], &[tunnel(1, &ips), tunnel(2, &ips)]);
    }
    wait_routes(&nodes[2], &[route(0, &ips), route(1, &ips)]);
    let at = |i: usize| SocketAddr::new(pods[i].ipv4(), 8080);
    for (from, to) in [(0, 1), (0, 2), (2, 0), (1, 2)] {
        let a = ask_tcp(&pods[from].ns, at(to)).unwrap_or_else(|e| panic!("p{from} -> p{to}: {e}"));
        assert_eq!(a.server, format!("p{to}"));
        assert_eq!(
            a.peer.ip(),
            pods[from].ipv4(),
            "no address translation between nodes"
        );
    }

    if routing == Routing::Vxlan {
        through_the_overlay(&agents[0], &pods[0], &pods[1]);
    }

    // Traffic between two nodes' pods while Nodes come and go.
    let to_p1 = at(1);
    let load = ConnectionLoad::start(&pods[0].ns, move |ns| ask_tcp(ns, to_p1).map(|_| ()));

    // A fourth node joins the segment and the cluster.
    let mut ips = ips;
    ips.push(underlay.plug(&nodes[3].ns, 4));
    dir.write("nodes.yaml", &objects(&[0, 1, 2, 3], &ips));
    agents.push(nodes[3].start_agent_with_source_and(dir.path(), routing.flags()));
    let p3 = nodes[3].add_pod("p3");
    let _s3 = WhoAmI::start(&p3.ns, "p3", p3.ipv4(), &[8080]);
    wait_routes(&nodes[0], &[route(1, &ips), route(2, &ips), route(3, &ips)]);
    wait_routes(&nodes[3], &[route(0, &ips), route(1, &ips), route(2, &ips)]);
    let a = ask_tcp(&pods[0].ns, SocketAddr::new(p3.ipv4(), 8080)).expect("p0 -> the new node's pod");
    assert_eq!(a.server, "p3");
    let a = ask_tcp(&p3.ns, at(0)).expect("the new node's pod -> p0");
    assert_eq!(a.server, "p0");

    // The third node leaves: its Node object is deleted.
    dir.write("nodes.yaml", &objects(&[0, 1, 3], &ips));
    wait_routes(&nodes[0], &[route(1, &ips), route(3, &ips)]);
    wait_routes(&nodes[1], &[route(0, &ips), route(3, &ips)]);
    if routing == Routing::Vxlan {
        wait_tunnels(&agents[0], &[tunnel(1, &ips), tunnel(3, &ips)]);
    }
    assert!(
        ask_tcp(&pods[0].ns, at(2)).is_err(),
        "no route is left to a node that left the cluster"
    );
    assert!(
        nodes[0]
            .ns
            .sh("ip route show 10.123.0.0/16")
            .contains("proto static"),
        "somebody else's route was touched: {}",
        nodes[0].ns.sh("ip route")
    );
    let n = load.stop_and_assert_none_failed("while a node joined and another left");
    assert!(n > 20, "only {n} connections");

    // A restarted agent finds its routes again and leaves them as they are.
    let mark = agents[0].log_text().len();
    agents[0].restart(&names[0]);
    wait_routes(&nodes[0], &[route(1, &ips), route(3, &ips)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agents[0]
        .log_since(mark)
        .contains("routes to other nodes' pods synced")
    {
        assert!(Instant::now() < deadline, "{}", agents[0].log_since(mark));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        agents[0]
            .log_since(mark)
            .contains("added=0 changed=0 removed=0 failed=0"),
        "{}",
        agents[0].log_since(mark)
    );
}

/// `--routing vxlan` with dual-stack pods on nodes that have IPv4 addresses
/// only: the overlay carries the pods' IPv6 packets between the nodes' IPv4
/// addresses (a native route could not: no IPv6 next hop), TCP and UDP, with
/// the pods' own addresses.
#[test]
fn root_vxlan_carries_ipv6_pods_between_ipv4_nodes() {
    let dir = ManifestDir::new();
    let underlay = Underlay::new(98);
    let cidrs = [
        ["10.98.1.0/24", "fd00:10:98:1::/64"],
        ["10.98.2.0/24", "fd00:10:98:2::/64"],
    ];
    let mut nodes: Vec<Node> = cidrs
        .iter()
        .map(|[v4, v6]| {
            let mut node = Node::with_ranges(serde_json::json!([[{ "subnet": v4 }], [{ "subnet": v6 }]]));
            node.conf["mtu"] = serde_json::json!(1450);
            node
        })
        .collect();
    let ips = underlay.plug_nodes(&nodes.iter().collect::<Vec<_>>());
    let objects: Vec<_> = nodes
        .iter()
        .zip(&cidrs)
        .zip(&ips)
        .map(|((n, c), ip)| node_object(n.name(), c, &[*ip]))
        .collect();
    dir.write("nodes.yaml", &objects);
    let agents: Vec<_> = nodes
        .iter_mut()
        .map(|n| n.start_agent_with_source_and(dir.path(), Routing::Vxlan.flags()))
        .collect();
    let pods = [nodes[0].add_pod("p0"), nodes[1].add_pod("p1")];
    let _servers: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| WhoAmI::start(&p.ns, &format!("p{i}"), p.ipv6(), &[8080]))
        .collect();
    wait_tunnels(
        &agents[0],
        &[
            (cidrs[1][0].to_owned(), ips[1].to_string()),
            (cidrs[1][1].to_owned(), ips[1].to_string()),
        ],
    );
    for (from, to) in [(0, 1), (1, 0)] {
        let at = SocketAddr::new(pods[to].ipv6(), 8080);
        let a = ask_tcp(&pods[from].ns, at).unwrap_or_else(|e| panic!("p{from} -> p{to} over IPv6: {e}"));
        assert_eq!(
            (a.server.as_str(), a.peer.ip()),
            (format!("p{to}").as_str(), pods[from].ipv6())
        );
        let a = ask_udp(&pods[from].ns, at).unwrap_or_else(|e| panic!("p{from} -> p{to} over UDPv6: {e}"));
        assert_eq!(
            (a.server.as_str(), a.peer.ip()),
            (format!("p{to}").as_str(), pods[from].ipv6())
        );
    }
}

/// `--routing vxlan` between Nodes whose only InternalIPs are IPv6: IPv4 pods'
/// packets travel in VXLAN over IPv6 (70 bytes of overhead: the pods' MTU is
/// set to 1,430 here), full-size TCP segments and a 1,400-byte datagram
/// included.
#[test]
fn root_vxlan_over_an_ipv6_underlay() {
    let dir = ManifestDir::new();
    let underlay = Underlay::new(99);
    let mut nodes: Vec<Node> = (1..=2)
        .map(|i| {
            let mut node = Node::new(&format!("10.99.{i}.0/24"));
            node.conf["mtu"] = serde_json::json!(1430);
            node
        })
        .collect();
    let ips: Vec<std::net::IpAddr> = nodes
        .iter()
        .zip(1u8..)
        .map(|(n, host)| underlay.plug_dual(&n.ns, host).1)
        .collect();
    let objects: Vec<_> = nodes
        .iter()
        .zip(&ips)
        .map(|(n, ip)| node_object(n.name(), &[&n.pod_cidr()], &[*ip]))
        .collect();
    dir.write("nodes.yaml", &objects);
    let agents: Vec<_> = nodes
        .iter_mut()
        .map(|n| n.start_agent_with_source_and(dir.path(), Routing::Vxlan.flags()))
        .collect();
    let pods = [nodes[0].add_pod("p0"), nodes[1].add_pod("p1")];
    wait_tunnels(&agents[0], &[(nodes[1].pod_cidr(), ips[1].to_string())]);
    wait_tunnels(&agents[1], &[(nodes[0].pod_cidr(), ips[0].to_string())]);
    let echo = EchoServer::start(&pods[1].ns, SocketAddr::new(pods[1].ipv4(), 0));
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
    let back = tcp_roundtrip(&pods[0].ns, echo.addr, &big).expect("1 MiB over TCP, VXLAN over IPv6");
    assert!(back == big, "1 MiB over TCP came back changed");
    let datagram = vec![9u8; 1400];
    let back = udp_roundtrip(&pods[0].ns, echo.addr, &datagram).expect("a 1,400-byte datagram");
    assert_eq!(back, datagram);
    // The tunnels lead to the nodes' IPv6 addresses (above), the only ones
    // their Node objects give: the outer packets were IPv6.
    assert!(agents[0].forwarded("to-overlay") > 10);
}

weir_lab::with_each_setup!(fragmented_datagrams_reach_pods_while_the_host_tracks_connections,);

/// A UDP datagram larger than the pods' MTU leaves its sender in fragments,
/// and only the first carries the ports. Every fragment must go the same way:
/// once anything in the host's namespace uses netfilter's conntrack (the
/// portmap plugin's rules, a firewall), the host's stack reassembles what it
/// is given, and would hold the rest of a datagram whose first fragment went
/// around it (straight into the pod) until they expire.
fn fragmented_datagrams_reach_pods_while_the_host_tracks_connections(setup: Setup) {
    let cluster = Cluster::new(setup.source);
    let mut node_a = setup.node("10.94.1.0/24");
    let mut node_b = setup.node("10.94.2.0/24");
    two_nodes(setup, &cluster, &node_a, &node_b, 94);
    let _agent_a = node_a.start_agent_for_with(&cluster, setup.flags());
    let _agent_b = node_b.start_agent_for_with(&cluster, setup.flags());
    let client = node_a.add_pod("client");
    let near = node_a.add_pod("near");
    let far = node_b.add_pod("far");
    for node in [&node_a, &node_b] {
        // A rule that uses conntrack: the host's defragmentation is now on.
        node.ns
            .sh("iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP");
    }
    for (from, to, what) in [
        (&client, &near, "to a pod of the same node"),
        (&client, &far, "to a pod of another node"),
        (&far, &client, "back from the other node"),
    ] {
        let to_addr = SocketAddr::new(to.ipv4(), 9999);
        wait_for_datagram(&from.ns, &to.ns, to_addr);
        for len in [4000, 20000] {
            assert_eq!(
                datagram_arrives(&from.ns, &to.ns, to_addr, len),
                Some(len),
                "a {len}-byte datagram {what}"
            );
        }
    }
}

/// The same with IPv6, whose fragments are marked by an extension header,
/// between two pods of a node.
#[test]
fn root_ipv6_fragmented_datagrams_reach_a_pod_while_the_host_tracks_connections() {
    let mut node = Node::with_ranges(serde_json::json!([
        [{ "subnet": "10.95.1.0/24" }],
        [{ "subnet": "fd00:95:1::/64" }]
    ]));
    let _agent = node.start_agent();
    let client = node.add_pod("client");
    let server = node.add_pod("server");
    node.ns
        .sh("ip6tables -A FORWARD -m conntrack --ctstate INVALID -j DROP");
    let to = SocketAddr::new(server.ipv6(), 9999);
    wait_for_datagram(&client.ns, &server.ns, to);
    for len in [4000, 20000] {
        assert_eq!(
            datagram_arrives(&client.ns, &server.ns, to, len),
            Some(len),
            "a {len}-byte IPv6 datagram to a pod of the same node"
        );
    }
}

/// Waits until a datagram that needs no fragments arrives from `from` at
/// `to`: the path is up (the overlay's tunnels, a new address, take a moment).
fn wait_for_datagram(from: &Netns, to_ns: &Netns, to: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while datagram_arrives(from, to_ns, to, 100) != Some(100) {
        assert!(Instant::now() < deadline, "no datagram reaches {to}");
    }
}

/// Sends one `len`-byte UDP datagram from `from` to `to`, bound in `to_ns`:
/// the length of what arrived, if anything did.
fn datagram_arrives(from: &Netns, to_ns: &Netns, to: SocketAddr, len: usize) -> Option<usize> {
    let socket = to_ns.run(move || std::net::UdpSocket::bind(to).expect("bind the receiver"));
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    from.run(move || {
        let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .expect("address");
        let sender = std::net::UdpSocket::bind(any).expect("bind the sender");
        sender.send_to(&vec![7u8; len], to).expect("send");
    });
    let mut buf = vec![0u8; 65536];
    socket.recv_from(&mut buf).ok().map(|(n, _)| n)
}
