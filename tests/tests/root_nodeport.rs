//! Tier 2 (root + namespaces): Service traffic from outside the cluster. Two lab
//! nodes and an external host share a switched underlay; each node runs an agent
//! reading the same cluster (a manifest directory, tests `*::root_dir`, or the
//! lab's API server with a Node object per node, `*::root_kube`), with its
//! underlay device found by default. A backend pod runs on each node. In
//! `*::root_vxlan` the underlay does not route pod CIDRs: the agents carry
//! pods' packets between nodes in their overlay (`--routing vxlan`), source
//! NAT to remote endpoints included.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
};

use serde_json::{Value, json};
use weir_lab::{
    Agent, Node, Pod,
    netns::Netns,
    services::{Cluster, Ep, Setup, merge, node_object, port, service, slice},
    underlay::Underlay,
    whoami::{Answer, WhoAmI, ask_tcp, ask_udp},
};

/// Field order is drop order: servers and pods before agents and nodes.
struct Lab {
    _servers: Vec<WhoAmI>,
    a1: Pod,
    b1: Pod,
    client: Pod,
    agents: Vec<Agent>,
    external: Netns,
    external_ip: IpAddr,
    node_ips: Vec<IpAddr>,
    cluster: Cluster,
    nodes: Vec<Node>,
    /// Where more external hosts plug in.
    underlay: Underlay,
}

impl Lab {
    fn new(setup: Setup, n: u8) -> Self {
        let underlay = Underlay::new(n);
        let mut nodes = vec![
            setup.node(&format!("10.{n}.1.0/24")),
            setup.node(&format!("10.{n}.2.0/24")),
        ];
        let node_ips = underlay.connect(&nodes.iter().collect::<Vec<_>>(), setup.routing);
        let (external, external_ip) = underlay.external();
        if setup.xdp {
            underlay.take_xdp_frames();
        }
        let cluster = Cluster::new(setup.source);
        // In a cluster each node has its Node object: pod CIDR and address.
        let node_objects: Vec<Value> = nodes
            .iter()
            .zip(&node_ips)
            .map(|(node, ip)| node_object(node.name(), &[&node.pod_cidr()], &[*ip]))
            .collect();
        if setup.node_objects() {
            cluster.write("nodes.yaml", &node_objects);
        }
        let agents: Vec<Agent> = nodes
            .iter_mut()
            .map(|node| node.start_agent_for_with(&cluster, setup.flags()))
            .collect();
        let a1 = nodes[0].add_pod("a1");
        let b1 = nodes[1].add_pod("b1");
        let client = nodes[0].add_pod("client");
        let servers = vec![
            WhoAmI::start(&a1.ns, "a1", a1.ipv4(), &[8080]),
            WhoAmI::start(&b1.ns, "b1", b1.ipv4(), &[8080]),
        ];
        Self {
            _servers: servers,
            a1,
            b1,
            client,
            agents,
            external,
            external_ip,
            node_ips,
            cluster,
            nodes,
            underlay,
        }
    }

    /// Every node's agent reads the same cluster, as every node of a cluster
    /// watches the same API.
    fn apply(&self, file: &str, objects: &[Value]) {
        self.cluster.write(file, objects);
    }

    /// Service `name`: a ClusterIP Service (TCP 80 and UDP 53 to 8080) with
    /// `patch` merged over it, and an EndpointSlice per chosen node.
    fn service(&self, name: &str, vip: &str, patch: Value, on_a: bool, on_b: bool) -> Vec<Value> {
        let mut svc = service(
            name,
            vip,
            &[port("tcp", 80, "8080", "TCP"), port("udp", 53, "8080", "UDP")],
        );
        merge(&mut svc, &patch);
        let mut objects = vec![svc];
        for (wanted, node, pod) in [(on_a, &self.nodes[0], &self.a1), (on_b, &self.nodes[1], &self.b1)] {
            if wanted {
                let ports = [("tcp", 8080, "TCP"), ("udp", 8080, "UDP")];
                objects.push(slice(
                    &format!("{name}-{}", node.name()),
                    name,
                    node.name(),
                    &ports,
                    &[Ep::ready(pod.ipv4())],
                ));
            }
        }
        objects
    }

    /// Waits until every agent has `front` (`ip:port/PROTO`) with `count` slots
    /// for traffic from outside (its external scope).
    fn wait(&self, front: &str, count: usize) {
        for i in 0..self.agents.len() {
            self.wait_on(i, front, count);
        }
    }

    /// Waits until node `i`'s own NodePort `port/PROTO` has `count` slots.
    fn wait_node_port(&self, i: usize, port: &str, count: usize) {
        self.wait_on(i, &format!("{}:{port}", self.node_ips[i]), count);
    }

    fn wait_on(&self, i: usize, front: &str, count: usize) {
        self.agents[i].wait_slots(front, "external", count);
    }

    fn node(&self, i: usize, port: u16) -> SocketAddr {
        SocketAddr::new(self.node_ips[i], port)
    }
}

fn node_port(etp: &str, tcp: u16, udp: u16) -> Value {
    json!({ "spec": {
        "type": "NodePort",
        "externalTrafficPolicy": etp,
        "ports": [
            { "name": "tcp", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": tcp },
            { "name": "udp", "port": 53, "targetPort": 8080, "protocol": "UDP", "nodePort": udp },
        ],
    }})
}

/// Connections through node A (`answers`) reached both endpoints: a1 (node
/// A's) saw the `client`, b1 (node B's) node A's address `node`; with XDP
/// (`xdp`, node A's agent), XDP translated b1's packets (at least a
/// handshake, request, answer and close each way per connection).
fn check_local_and_remote(answers: &[Answer], client: IpAddr, node: IpAddr, xdp: Option<&Agent>) {
    assert_eq!(
        servers(answers),
        BTreeSet::from(["a1", "b1"]),
        "both endpoints serve"
    );
    for a in answers {
        let expected = if a.server == "a1" { client } else { node };
        assert_eq!(
            a.peer.ip(),
            expected,
            "{}: a local endpoint sees the client, a remote one the node it came through",
            a.server
        );
    }
    if let Some(agent) = xdp {
        let remote = answers.iter().filter(|a| a.server == "b1").count() as u64;
        let by_xdp = agent.forwarded("xdp");
        assert!(
            by_xdp >= remote * 6,
            "XDP forwarded {by_xdp} packets for {remote} connections to the remote endpoint"
        );
    }
}

fn servers(answers: &[Answer]) -> BTreeSet<&str> {
    answers.iter().map(|a| a.server.as_str()).collect()
}

weir_lab::with_each_setup!(
    xdp:
    nodeport_from_outside_reaches_local_and_remote_endpoints,
    external_traffic_policy_local_keeps_the_client_and_drops_without_a_local_endpoint,
    external_and_load_balancer_ips_and_nodeport_affinity,
    load_balancer_source_ranges_admit_their_sources_alone,
    internal_traffic_policy_local_serves_only_same_node_clients,
    node_processes_reach_services_through_socket_hooks,
    host_port_by_chaining_portmap,
    node_facing_traffic_falls_back_to_terminating_endpoints,
    nodeport_to_a_host_network_endpoint,
);

fn nodeport_from_outside_reaches_local_and_remote_endpoints(setup: Setup) {
    let c = Lab::new(setup, 94);
    c.apply(
        "web.yaml",
        &c.service(
            "web",
            "10.96.0.30",
            node_port("Cluster", 30080, 30053),
            true,
            true,
        ),
    );
    for i in 0..2 {
        c.wait_node_port(i, "30080/TCP", 2);
        c.wait_node_port(i, "30053/UDP", 2);
    }

    let answers: Vec<Answer> = (0..40)
        .map(|i| {
            ask_tcp(&c.external, c.node(0, 30080))
                .unwrap_or_else(|e| panic!("TCP {i} to node A's NodePort: {e}"))
        })
        .collect();
    check_local_and_remote(
        &answers,
        c.external_ip,
        c.node_ips[0],
        setup.xdp.then_some(&c.agents[0]),
    );
    for i in 0..10 {
        ask_udp(&c.external, SocketAddr::new(c.node_ips[1], 30053))
            .unwrap_or_else(|e| panic!("UDP {i} to node B's NodePort: {e}"));
    }
    // From a pod, and through the other node.
    let a = ask_tcp(&c.client.ns, c.node(1, 30080)).expect("pod to node B's NodePort");
    assert!(["a1", "b1"].contains(&a.server.as_str()));
    ask_tcp(&c.external, c.node(1, 30080)).expect("external to node B's NodePort");

    // A NodePort without endpoints: refused at connect, as kube-proxy's
    // REJECT (with XDP in front, XDP answers it itself).
    c.apply(
        "empty.yaml",
        &c.service(
            "empty",
            "10.96.0.31",
            node_port("Cluster", 30090, 30091),
            false,
            false,
        ),
    );
    c.wait_node_port(0, "30090/TCP", 0);
    let err = ask_tcp(&c.external, c.node(0, 30090)).expect_err("no endpoints");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    if setup.xdp {
        let metrics = c.agents[0].weirctl(&["metrics"]);
        let rejected_by_xdp =
            weir_lab::agent::counted(&metrics, "xdp", "service without endpoints (rejected)") > 0;
        assert!(rejected_by_xdp, "XDP answers the rejection itself");
    }
}

/// `--nodeport-acceleration native`: the XDP program is attached by a pinned
/// link, so it serves while the agent is down and a restarted agent takes it
/// over; restarted with acceleration disabled, the agent detaches it and TC
/// alone serves, as before.
#[test]
fn root_xdp_outlives_the_agent_and_is_removed_when_disabled() {
    let mut c = Lab::new(
        Setup {
            source: weir_lab::services::SourceKind::Dir,
            routing: None,
            xdp: true,
        },
        95,
    );
    c.apply(
        "web.yaml",
        &c.service(
            "web",
            "10.96.0.40",
            node_port("Cluster", 30080, 30053),
            false,
            true,
        ),
    );
    c.wait_node_port(0, "30080/TCP", 1);
    let xdp_on_a = |c: &Lab| c.nodes[0].ns.sh("ip -o link show").contains("prog/xdp");
    let served_by_xdp = |c: &Lab, what: &str| {
        let before = c.agents[0].forwarded("xdp");
        for i in 0..5 {
            let a = ask_tcp(&c.external, c.node(0, 30080)).unwrap_or_else(|e| panic!("{what}: TCP {i}: {e}"));
            assert_eq!(a.server, "b1");
            assert_eq!(
                a.peer.ip(),
                c.node_ips[0],
                "{what}: the remote endpoint sees node A's address on the device towards it"
            );
        }
        c.agents[0].forwarded("xdp") - before
    };
    assert!(xdp_on_a(&c), "XDP attached to node A's device");
    assert!(served_by_xdp(&c, "agent up") >= 30);

    c.agents[0].kill();
    assert!(xdp_on_a(&c), "the pinned link keeps XDP attached");
    assert!(served_by_xdp(&c, "agent down") >= 30);

    let node = c.nodes[0].name().to_owned();
    c.agents[0].restart(&node);
    c.agents[0].wait_ready();
    assert!(xdp_on_a(&c), "a restarted agent keeps XDP attached");
    assert!(served_by_xdp(&c, "agent restarted") >= 30);

    c.agents[0].restart_with(&node, vec!["--nodeport-acceleration".into(), "disabled".into()]);
    c.agents[0].wait_ready();
    assert!(!xdp_on_a(&c), "acceleration disabled: XDP detached");
    assert_eq!(served_by_xdp(&c, "acceleration disabled"), 0, "TC alone serves");

    // A device whose driver has no XDP (a bridge): `best-effort` leaves it to
    // TC and accelerates the rest; `native` refuses to start. The bridge's
    // address comes first: source NAT to the remote endpoint still takes the
    // address of the device towards it.
    c.nodes[0].ns.sh(
        "ip link add weirbr0 type bridge && ip addr add 192.0.2.1/24 dev weirbr0 && ip link set weirbr0 up",
    );
    c.agents[0].restart_with(
        &node,
        vec!["--nodeport-acceleration".into(), "best-effort".into()],
    );
    c.agents[0].wait_ready();
    assert!(xdp_on_a(&c), "best-effort: XDP on the device that has it");
    assert!(!c.nodes[0].ns.sh("ip -o link show weirbr0").contains("prog/xdp"));
    assert!(
        c.agents[0].log_text().contains("no XDP on this device"),
        "best-effort warns about the bridge"
    );
    assert!(served_by_xdp(&c, "best-effort") >= 30);

    c.agents[0].kill();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", c.nodes[0].ns.name()))
        .arg(weir_lab::bins::path("weir-agent"))
        .args([
            "run",
            "--node",
            &node,
            "--nodeport-acceleration",
            "native",
            "--bpffs-root",
        ])
        .arg(&c.agents[0].bpffs_root)
        .arg("--cni-socket")
        .arg(c.agents[0].bpffs_root.with_extension("native.sock"))
        .output()
        .expect("run weir-agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("attaching XDP to weirbr0"),
        "native with a device without XDP: {}\n{stderr}",
        out.status
    );
}

/// A NodePort over IPv6 from a host outside the cluster, to a local and a
/// remote endpoint (source-NATed to the node's IPv6 address), TCP and UDP, by
/// TC and, with `--nodeport-acceleration native`, by XDP.
fn ipv6_nodeport_from_outside(xdp: bool, n: u8) {
    let underlay = Underlay::new(n);
    let mut nodes: Vec<Node> = (1..=2)
        .map(|i| {
            Node::with_ranges(json!([[{ "subnet": format!("10.{n}.{i}.0/24") }],
                                     [{ "subnet": format!("fd00:10:{n}:{i}::/64") }]]))
        })
        .collect();
    let ips: Vec<(IpAddr, IpAddr)> = nodes
        .iter()
        .zip(1u8..)
        .map(|(node, host)| underlay.plug_dual(&node.ns, host))
        .collect();
    for (i, j) in [(0, 1), (1, 0)] {
        nodes[i].ns.sh(&format!(
            "ip route add 10.{n}.{k}.0/24 via {v4} && ip -6 route add fd00:10:{n}:{k}::/64 via {v6}",
            k = j + 1,
            v4 = ips[j].0,
            v6 = ips[j].1
        ));
    }
    let external = Netns::new(&weir_lab::unique("wext"));
    let (_, external_v6) = underlay.plug_dual(&external, 100);
    if xdp {
        underlay.take_xdp_frames();
    }
    let dir = weir_lab::services::ManifestDir::new();
    let flags: Vec<String> = if xdp {
        vec!["--nodeport-acceleration".into(), "native".into()]
    } else {
        Vec::new()
    };
    let agents: Vec<Agent> = nodes
        .iter_mut()
        .map(|node| node.start_agent_with_source_and(dir.path(), flags.clone()))
        .collect();
    let a1 = nodes[0].add_pod("a1");
    let b1 = nodes[1].add_pod("b1");
    let _servers = [
        WhoAmI::start(&a1.ns, "a1", a1.ipv6(), &[8080]),
        WhoAmI::start(&b1.ns, "b1", b1.ipv6(), &[8080]),
    ];
    let mut svc = weir_lab::services::service_with_ips(
        "web6",
        &["10.96.0.60", "fd00:96::60"],
        &[port("tcp", 80, "8080", "TCP"), port("udp", 53, "8080", "UDP")],
    );
    merge(&mut svc, &node_port("Cluster", 30080, 30053));
    let slice_ports = [("tcp", 8080, "TCP"), ("udp", 8080, "UDP")];
    dir.write(
        "web6.yaml",
        &[
            svc,
            slice(
                "web6-a",
                "web6",
                nodes[0].name(),
                &slice_ports,
                &[Ep::ready(a1.ipv6())],
            ),
            slice(
                "web6-b",
                "web6",
                nodes[1].name(),
                &slice_ports,
                &[Ep::ready(b1.ipv6())],
            ),
        ],
    );
    let front = format!("[{}]:30080/TCP", ips[0].1);
    agents[0].wait_services(&format!("{front} with 2 slots"), |s| {
        s.as_array().is_some_and(|all| {
            all.iter()
                .any(|f| f["frontend"] == json!(front) && f["count"] == json!(2))
        })
    });

    let to = SocketAddr::new(ips[0].1, 30080);
    let answers: Vec<Answer> = (0..30)
        .map(|i| ask_tcp(&external, to).unwrap_or_else(|e| panic!("TCP {i} to node A's IPv6 NodePort: {e}")))
        .collect();
    check_local_and_remote(&answers, external_v6, ips[0].1, xdp.then_some(&agents[0]));
    for i in 0..10 {
        ask_udp(&external, SocketAddr::new(ips[0].1, 30053))
            .unwrap_or_else(|e| panic!("UDP {i} to node A's IPv6 NodePort: {e}"));
    }
}

#[test]
fn root_ipv6_nodeport_from_outside() {
    ipv6_nodeport_from_outside(false, 93);
}

#[test]
fn root_xdp_ipv6_nodeport_from_outside() {
    ipv6_nodeport_from_outside(true, 92);
}

/// `GET /` on a health check port: (status code, body).
fn health(ns: &Netns, to: SocketAddr) -> (u16, Value) {
    ns.run(move || {
        let mut conn =
            std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(2)).expect("connect");
        conn.write_all(b"GET / HTTP/1.1\r\nHost: lb\r\n\r\n")
            .expect("request");
        let mut response = String::new();
        conn.read_to_string(&mut response).expect("response");
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let body = response.split("\r\n\r\n").nth(1).expect("body");
        (status, serde_json::from_str(body).expect("JSON body"))
    })
}

fn external_traffic_policy_local_keeps_the_client_and_drops_without_a_local_endpoint(setup: Setup) {
    let c = Lab::new(setup, 95);
    let mut lb = node_port("Local", 30081, 30054);
    merge(
        &mut lb,
        &json!({ "spec": { "type": "LoadBalancer", "healthCheckNodePort": 32100 } }),
    );
    c.apply("local.yaml", &c.service("local", "10.96.0.31", lb, false, true));
    c.wait_node_port(1, "30081/TCP", 1);
    c.wait_node_port(0, "30081/TCP", 0);
    for i in 0..5 {
        let a = ask_tcp(&c.external, c.node(1, 30081))
            .unwrap_or_else(|e| panic!("TCP {i} to the node with the endpoint: {e}"));
        assert_eq!(
            (a.server.as_str(), a.peer.ip()),
            ("b1", c.external_ip),
            "the client's own address"
        );
    }
    let refused = ask_tcp(&c.external, c.node(0, 30081));
    assert!(
        refused.is_err(),
        "node A has no local endpoint: dropped, got {refused:?}"
    );
    // Pods are inside the cluster: the cluster-wide endpoints serve them.
    let a = ask_tcp(&c.client.ns, c.node(0, 30081)).expect("a pod through node A's NodePort");
    assert_eq!(a.server, "b1");

    // The health check port says which node to send traffic to, as kube-proxy's.
    let (status, body) = health(&c.external, c.node(1, 32100));
    assert_eq!((status, &body["localEndpoints"]), (200, &json!(1)), "{body}");
    assert_eq!(
        body["service"],
        json!({ "namespace": "default", "name": "local" })
    );
    let (status, body) = health(&c.external, c.node(0, 32100));
    assert_eq!((status, &body["localEndpoints"]), (503, &json!(0)), "{body}");
    // Only a terminating endpoint left: 503, so that the load balancer drains it.
    let mut objects = c.service("local", "10.96.0.31", json!({}), false, false);
    let mut lb = node_port("Local", 30081, 30054);
    merge(
        &mut lb,
        &json!({ "spec": { "type": "LoadBalancer", "healthCheckNodePort": 32100 } }),
    );
    merge(&mut objects[0], &lb);
    objects.push(slice(
        "local-b",
        "local",
        c.nodes[1].name(),
        &[("tcp", 8080, "TCP"), ("udp", 8080, "UDP")],
        &[Ep::terminating(c.b1.ipv4())],
    ));
    c.apply("local.yaml", &objects);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while health(&c.external, c.node(1, 32100)).0 != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "still healthy with only a terminating endpoint"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn external_and_load_balancer_ips_and_nodeport_affinity(setup: Setup) {
    let c = Lab::new(setup, 96);
    let external_ip = "10.200.96.50";
    let lb_ip = "10.200.96.60";
    let mut objects = c.service(
        "ext",
        "10.96.0.32",
        json!({ "spec": { "externalIPs": [external_ip] } }),
        true,
        false,
    );
    objects.extend(c.service(
        "lb",
        "10.96.0.33",
        json!({
            "spec": { "type": "LoadBalancer", "ports": [
                { "name": "tcp", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30090 },
                { "name": "udp", "port": 53, "targetPort": 8080, "protocol": "UDP", "nodePort": 30091 },
            ]},
            "status": { "loadBalancer": { "ingress": [{ "ip": lb_ip }] } },
        }),
        false,
        true,
    ));
    let mut sticky = node_port("Cluster", 30082, 30055);
    merge(&mut sticky, &json!({ "spec": { "sessionAffinity": "ClientIP" } }));
    objects.extend(c.service("sticky", "10.96.0.34", sticky, true, true));
    c.apply("objects.yaml", &objects);
    c.wait(&format!("{external_ip}:80/TCP"), 1);
    c.wait(&format!("{lb_ip}:80/TCP"), 1);
    c.wait_node_port(0, "30082/TCP", 2);

    // The routers of the world send these addresses to a node.
    c.external
        .sh(&format!("ip route add {external_ip}/32 via {}", c.node_ips[0]));
    c.external
        .sh(&format!("ip route add {lb_ip}/32 via {}", c.node_ips[0]));
    let a = ask_tcp(&c.external, SocketAddr::new(external_ip.parse().expect("ip"), 80)).expect("externalIP");
    assert_eq!((a.server.as_str(), a.peer.ip()), ("a1", c.external_ip));
    let a = ask_tcp(&c.external, SocketAddr::new(lb_ip.parse().expect("ip"), 80)).expect("load-balancer IP");
    assert_eq!(a.server, "b1", "the remote endpoint, through node A");
    ask_udp(&c.external, SocketAddr::new(lb_ip.parse().expect("ip"), 53)).expect("load-balancer IP, UDP");

    let answers: Vec<Answer> = (0..20)
        .map(|i| ask_tcp(&c.external, c.node(0, 30082)).unwrap_or_else(|e| panic!("sticky {i}: {e}")))
        .collect();
    assert_eq!(
        servers(&answers).len(),
        1,
        "ClientIP affinity holds for NodePort traffic: {:?}",
        servers(&answers)
    );
}

/// `spec.loadBalancerSourceRanges` (kube-proxy's firewall chain): a new flow
/// to the LoadBalancer IP from outside the ranges is dropped, from an outside
/// host, a pod or the node itself alike (before a Service without endpoints
/// would reject it); the Service's NodePort and ClusterIP stay open; a change
/// of the ranges takes effect, and without ranges every source is admitted
/// again.
fn load_balancer_source_ranges_admit_their_sources_alone(setup: Setup) {
    let c = Lab::new(setup, 102);
    let (outsider, outsider_ip) = c.underlay.external_at(101);
    let lb_ip: IpAddr = "10.200.102.70".parse().expect("ip");
    let closed_ip: IpAddr = "10.200.102.71".parse().expect("ip");
    let lb = |name: &str, vip: &str, ip: IpAddr, ranges: Value, node_ports: [u16; 2], endpoints: bool| {
        c.service(
            name,
            vip,
            json!({
                "spec": { "type": "LoadBalancer", "loadBalancerSourceRanges": ranges, "ports": [
                    { "name": "tcp", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": node_ports[0] },
                    { "name": "udp", "port": 53, "targetPort": 8080, "protocol": "UDP", "nodePort": node_ports[1] },
                ]},
                "status": { "loadBalancer": { "ingress": [{ "ip": ip.to_string() }] } },
            }),
            endpoints,
            endpoints,
        )
    };
    let guarded = |ranges: Value| lb("guarded", "10.96.0.40", lb_ip, ranges, [30092, 30093], true);
    // The ranges are kube-proxy's to read: spaces around them, host bits set.
    c.apply(
        "guarded.yaml",
        &guarded(json!([format!(" {}/32", c.external_ip), "192.0.2.77/24"])),
    );
    // A Service without endpoints.
    let only_external = json!([format!("{}/32", c.external_ip)]);
    c.apply(
        "closed.yaml",
        &lb(
            "closed",
            "10.96.0.41",
            closed_ip,
            only_external,
            [30094, 30095],
            false,
        ),
    );
    c.wait(&format!("{lb_ip}:80/TCP"), 2);
    c.wait(&format!("{closed_ip}:80/TCP"), 0);
    for host in [&c.external, &outsider] {
        for ip in [lb_ip, closed_ip] {
            host.sh(&format!("ip route add {ip}/32 via {}", c.node_ips[0]));
        }
    }
    let tcp = SocketAddr::new(lb_ip, 80);
    let udp = SocketAddr::new(lb_ip, 53);
    let node_a = &c.nodes[0].ns;
    // Node A's drops for the source range, where they were counted.
    let dropped = |direction: &str| {
        let reason = "source outside the Service's loadBalancerSourceRanges (dropped)";
        weir_lab::agent::counted(&c.agents[0].weirctl(&["metrics"]), direction, reason)
    };
    // The agents apply a change of the ranges in their time.
    let eventually = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    // Node A's ranges of the guarded LoadBalancer IP.
    let ranges = || -> BTreeSet<String> {
        let rows = c.agents[0].weirctl(&["source-ranges"]);
        let rows = rows.as_array().expect("rows");
        let ours = rows.iter().filter(|r| r["frontend"] == format!("{lb_ip}:80"));
        ours.map(|r| r["range"].as_str().expect("range").to_owned())
            .collect()
    };
    assert_eq!(
        ranges(),
        BTreeSet::from([format!("{}/32", c.external_ip), "192.0.2.0/24".to_owned()])
    );

    let mut seen = BTreeSet::new();
    for i in 0..20 {
        let a = ask_tcp(&c.external, tcp).unwrap_or_else(|e| panic!("from inside the ranges, {i}: {e}"));
        seen.insert(a.server);
    }
    assert_eq!(seen, BTreeSet::from(["a1".to_owned(), "b1".to_owned()]));
    ask_udp(&c.external, udp).expect("from inside the ranges, UDP");

    let before = dropped(if setup.xdp { "xdp" } else { "from-netdev" });
    let refused = ask_tcp(&outsider, tcp);
    assert!(refused.is_err(), "from outside the ranges: {refused:?}");
    let refused = ask_udp(&outsider, udp);
    assert!(refused.is_err(), "from outside the ranges, UDP: {refused:?}");
    assert!(
        dropped(if setup.xdp { "xdp" } else { "from-netdev" }) >= before + 2,
        "the outsider's TCP and UDP counted as dropped for the source range"
    );
    let before = dropped("from-pod");
    let refused = ask_tcp(&c.client.ns, tcp);
    assert!(refused.is_err(), "a pod outside the ranges: {refused:?}");
    assert!(
        dropped("from-pod") > before,
        "the pod's SYN dropped for the range"
    );
    // The node's own socket: refused at connect, as a drop would time out.
    let before = dropped("socket");
    let refused = ask_tcp(node_a, tcp).map(|a| a.server);
    assert_eq!(
        refused.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::TimedOut),
        "the node outside the ranges"
    );
    assert_eq!(
        dropped("socket"),
        before + 1,
        "the node's connect refused for the range"
    );
    // `weirctl explain` says so, from the maps.
    let client = c.client.ipv4().to_string();
    let explained = |agent: &Agent, ip: IpAddr| {
        let e = agent.weirctl(&["explain", &client, &format!("{ip}:80/tcp")]);
        e["verdict"].as_str().expect("verdict").to_owned()
    };
    let verdict = explained(&c.agents[0], lb_ip);
    assert!(verdict.contains("loadBalancerSourceRanges"), "{verdict}");
    // The firewall is the LoadBalancer IP's alone.
    ask_tcp(&outsider, c.node(0, 30092)).expect("the Service's NodePort stays open");
    ask_tcp(
        &c.client.ns,
        SocketAddr::new("10.96.0.40".parse().expect("ip"), 80),
    )
    .expect("its ClusterIP stays open");
    // Without endpoints: rejected inside the ranges, dropped outside them.
    let closed = SocketAddr::new(closed_ip, 80);
    let inside = ask_tcp(&c.external, closed).map(|a| a.server);
    assert_eq!(
        inside.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused),
        "no endpoints, inside the ranges"
    );
    let outside = ask_tcp(&outsider, closed).map(|a| a.server);
    assert!(
        outside
            .as_ref()
            .is_err_and(|e| e.kind() != std::io::ErrorKind::ConnectionRefused),
        "no endpoints, outside the ranges: dropped, not told: {outside:?}"
    );
    let verdict = explained(&c.agents[0], closed_ip);
    assert!(verdict.contains("loadBalancerSourceRanges"), "{verdict}");

    // The outsider's address and node A's added: both admitted (the node's
    // own sockets from its address); the first host's gone: dropped.
    c.apply(
        "guarded.yaml",
        &guarded(json!([
            format!("{outsider_ip}/32"),
            format!("{}/32", c.node_ips[0])
        ])),
    );
    eventually("the new ranges never admitted", &|| {
        ask_tcp(&outsider, tcp).is_ok() && ask_tcp(node_a, tcp).is_ok()
    });
    // Narrowed in the same step that widened; a range holding the node
    // admits the LoadBalancer IP as a source too (kube-proxy's allowFromNode).
    assert_eq!(
        ranges(),
        BTreeSet::from([
            format!("{outsider_ip}/32"),
            format!("{}/32", c.node_ips[0]),
            format!("{lb_ip}/32"),
        ]),
        "the removed ranges gone from the map"
    );
    let refused = ask_tcp(&c.external, tcp);
    assert!(refused.is_err(), "a removed range: {refused:?}");
    let refused = ask_tcp(&c.client.ns, tcp);
    assert!(refused.is_err(), "a pod outside the ranges: {refused:?}");

    // No ranges: every source.
    c.apply("guarded.yaml", &guarded(json!([])));
    eventually("still guarded without ranges", &|| {
        ask_tcp(&c.external, tcp).is_ok() && ask_tcp(&c.client.ns, tcp).is_ok()
    });
    ask_tcp(&outsider, tcp).expect("every source");
    assert_eq!(explained(&c.agents[0], lb_ip), "admitted");
    eventually("the ranges never left the map", &|| ranges().is_empty());
}

fn internal_traffic_policy_local_serves_only_same_node_clients(setup: Setup) {
    let c = Lab::new(setup, 97);
    c.apply(
        "itp.yaml",
        &c.service(
            "itp",
            "10.96.0.35",
            json!({ "spec": { "internalTrafficPolicy": "Local" } }),
            false,
            true,
        ),
    );
    c.wait_on(0, "10.96.0.35:80/TCP", 0);
    c.wait_on(1, "10.96.0.35:80/TCP", 1);
    let vip = SocketAddr::new("10.96.0.35".parse().expect("ip"), 80);
    let refused = ask_tcp(&c.client.ns, vip);
    assert!(refused.is_err(), "node A has no endpoint of its own: {refused:?}");
    let a = ask_tcp(&c.b1.ns, vip).expect("a pod on node B reaches its node's endpoint");
    assert_eq!(a.server, "b1");
}

fn node_processes_reach_services_through_socket_hooks(setup: Setup) {
    let c = Lab::new(setup, 98);
    let mut objects = c.service(
        "web",
        "10.96.0.36",
        node_port("Cluster", 30086, 30057),
        true,
        true,
    );
    objects.extend(c.service("empty", "10.96.0.37", json!({}), false, false));
    objects.extend(c.service(
        "sticky",
        "10.96.0.38",
        json!({ "spec": { "sessionAffinity": "ClientIP" } }),
        true,
        true,
    ));
    objects.extend(c.service(
        "maglev",
        "10.96.0.39",
        json!({ "metadata": { "annotations": { "weir.dev/lb-algorithm": "maglev" } } }),
        true,
        true,
    ));
    c.apply("web.yaml", &objects);
    c.wait_node_port(0, "30086/TCP", 2);
    c.wait_on(0, "10.96.0.37:80/TCP", 0);
    c.wait_on(0, "10.96.0.38:80/TCP", 2);
    c.wait_on(0, "10.96.0.39:80/TCP", 2);
    let node_a = &c.nodes[0].ns;
    let vip = |p| SocketAddr::new("10.96.0.36".parse().expect("ip"), p);
    let mut seen = BTreeSet::new();
    for i in 0..20 {
        let a = ask_tcp(node_a, vip(80)).unwrap_or_else(|e| panic!("node A to the ClusterIP, TCP {i}: {e}"));
        seen.insert(a.server);
        let a = ask_udp(node_a, vip(53)).unwrap_or_else(|e| panic!("node A to the ClusterIP, UDP {i}: {e}"));
        seen.insert(a.server);
    }
    assert_eq!(
        seen,
        BTreeSet::from(["a1".to_owned(), "b1".to_owned()]),
        "both endpoints serve the node"
    );
    // `sessionAffinity: ClientIP`: the node (one client, its address) stays
    // with one backend per Service port, TCP and UDP alike; Maglev still
    // spreads its sockets.
    let at = |vip: &str, p| SocketAddr::new(vip.parse().expect("ip"), p);
    for (port, ask) in [
        (80, ask_tcp as fn(&Netns, SocketAddr) -> std::io::Result<Answer>),
        (53, ask_udp),
    ] {
        let sticky: BTreeSet<String> = (0..20)
            .map(|i| {
                ask(node_a, at("10.96.0.38", port))
                    .unwrap_or_else(|e| panic!("sticky {port} {i}: {e}"))
                    .server
            })
            .collect();
        assert_eq!(sticky.len(), 1, "affinity from the node, port {port}: {sticky:?}");
    }

    let affinity = c.agents[0].weirctl(&["affinity"]);
    assert!(
        affinity.to_string().contains("10.96.0.38"),
        "the node's affinity entry: {affinity}"
    );
    let spread: BTreeSet<String> = (0..30)
        .map(|i| {
            ask_tcp(node_a, at("10.96.0.39", 80))
                .unwrap_or_else(|e| panic!("maglev TCP {i}: {e}"))
                .server
        })
        .collect();
    assert_eq!(spread.len(), 2, "Maglev spreads the node's sockets: {spread:?}");
    // The socket names the frontend it dialled, not the backend it reached;
    // with tracing on, its translation is an event (`socket`).
    let traced = c.agents[0].monitor(&[
        "--trace",
        "--count",
        "1",
        "--type",
        "translate",
        "--ip",
        "10.96.0.36",
    ]);
    let to = vip(80);
    let peer = node_a
        .run(move || {
            std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(2))?.peer_addr()
        })
        .expect("connect");
    assert_eq!(peer, to, "getpeername");
    let t = &traced.events()[0];
    assert_eq!(
        (&t["direction"], &t["destination"]),
        (&json!("socket"), &json!(to.to_string())),
        "{t:#}"
    );
    assert!(t["service"].as_str().is_some_and(|s| s.contains("/web")), "{t:#}");
    assert!(
        t["backend"].as_str().is_some_and(|b| b.ends_with(":8080")),
        "{t:#}"
    );
    // NodePorts from the node itself, on its address and on localhost.
    ask_tcp(node_a, c.node(0, 30086)).expect("node A to its own NodePort");
    ask_tcp(node_a, SocketAddr::new("127.0.0.1".parse().expect("ip"), 30086)).expect("127.0.0.1:nodePort");
    ask_udp(node_a, SocketAddr::new("127.0.0.1".parse().expect("ip"), 30057))
        .expect("127.0.0.1:nodePort, UDP");
    // Without endpoints: refused at connect, as kube-proxy's REJECT; a drop
    // event naming the Service.
    let refusals = c.agents[0].monitor(&["--count", "1", "--ip", "10.96.0.37"]);
    let err =
        ask_tcp(node_a, SocketAddr::new("10.96.0.37".parse().expect("ip"), 80)).expect_err("no endpoints");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    let d = &refusals.events()[0];
    assert_eq!(
        (&d["type"], &d["direction"], &d["code"]),
        (&json!("drop"), &json!("socket"), &json!("no_backend")),
        "{d:#}"
    );
    assert!(
        d["service"].as_str().is_some_and(|s| s.contains("/empty")),
        "{d:#}"
    );
    // What the hooks did is counted, as the TC programs' packets are.
    let metrics = c.agents[0].weirctl(&["metrics"]);
    let socket = |reason: &str| {
        metrics
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["direction"] == "socket" && r["reason"] == reason)
            .map_or(0, |r| r["packets"].as_u64().expect("packets"))
    };
    // Every socket connected to a backend: 20 TCP, 20 UDP (connected: their
    // datagrams need no hook of their own), 40 sticky and 30 Maglev ones, the
    // getpeername one, 3 NodePorts.
    assert!(socket("forwarded") >= 114, "{metrics:#}");
    assert!(socket("service without endpoints (rejected)") >= 1, "{metrics:#}");
    // Outside the cluster (the external host shares the cgroup the hooks are
    // attached to, not the node's namespace) a ClusterIP is nothing.
    assert!(
        ask_tcp(&c.external, vip(80)).is_err(),
        "a ClusterIP must not answer outside the cluster"
    );
}

fn host_port_by_chaining_portmap(setup: Setup) {
    let c = Lab::new(setup, 99);
    let node = &c.nodes[0];
    let mut weir = node.conf.clone();
    weir.as_object_mut().expect("object").remove("cniVersion");
    let plugins = [
        weir,
        json!({
            "type": "portmap", "capabilities": { "portMappings": true },
            "runtimeConfig": { "portMappings": [{ "hostPort": 18080, "containerPort": 8080, "protocol": "tcp" }] },
        }),
    ];
    let (ns, spec) = weir_lab::PodSpec::with_netns("hostport");
    let result = node.run_chain(&spec, "ADD", &plugins, None);
    let ip = weir_lab::node::result_ips(&result)[0];
    let _server = WhoAmI::start(&ns, "hostport", ip, &[8080]);
    let a = ask_tcp(&c.external, c.node(0, 18080)).expect("node A's hostPort from outside");
    assert_eq!(a.server, "hostport");
    node.run_chain(&spec, "DEL", &plugins, Some(&result));
}

fn node_facing_traffic_falls_back_to_terminating_endpoints(setup: Setup) {
    let c = Lab::new(setup, 100);
    // The only endpoints are terminating (serving, not ready): as for pods, they
    // take new connections rather than none (KEP-1669), here from outside.
    let mut objects = vec![service("drain", "10.96.0.38", &[port("tcp", 80, "8080", "TCP")])];
    merge(&mut objects[0], &node_port("Cluster", 30088, 30058));
    for (node, pod) in [(&c.nodes[0], &c.a1), (&c.nodes[1], &c.b1)] {
        let ports = [("tcp", 8080, "TCP"), ("udp", 8080, "UDP")];
        objects.push(slice(
            &format!("drain-{}", node.name()),
            "drain",
            node.name(),
            &ports,
            &[Ep::terminating(pod.ipv4())],
        ));
    }
    c.apply("drain.yaml", &objects);
    c.wait_node_port(0, "30088/TCP", 2);
    let answers: Vec<Answer> = (0..20)
        .map(|i| ask_tcp(&c.external, c.node(0, 30088)).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    assert_eq!(servers(&answers), BTreeSet::from(["a1", "b1"]));
}

fn nodeport_to_a_host_network_endpoint(setup: Setup) {
    let c = Lab::new(setup, 101);
    // A server in node A's own namespace (a hostNetwork pod's address is its node's).
    let _server = WhoAmI::start(&c.nodes[0].ns, "host-a", c.node_ips[0], &[8090]);
    let mut objects = vec![service(
        "hostnet",
        "10.96.0.39",
        &[port("tcp", 80, "8090", "TCP")],
    )];
    merge(
        &mut objects[0],
        &json!({ "spec": { "type": "NodePort", "externalTrafficPolicy": "Cluster",
            "ports": [{ "name": "tcp", "port": 80, "targetPort": 8090, "protocol": "TCP", "nodePort": 30089 }] } }),
    );
    objects.push(slice(
        "hostnet-a",
        "hostnet",
        c.nodes[0].name(),
        &[("tcp", 8090, "TCP")],
        &[Ep::ready(c.node_ips[0])],
    ));
    c.apply("hostnet.yaml", &objects);
    // Both nodes: node B is asked too, and its agent may read the change later.
    c.wait_node_port(0, "30089/TCP", 1);
    c.wait_node_port(1, "30089/TCP", 1);
    for i in 0..5 {
        let a = ask_tcp(&c.external, c.node(0, 30089)).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(
            (a.server.as_str(), a.peer.ip()),
            ("host-a", c.external_ip),
            "the client's own address"
        );
    }
    // Through node B, the endpoint is remote: source NAT to node B.
    let a = ask_tcp(&c.external, c.node(1, 30089)).expect("through node B");
    assert_eq!((a.server.as_str(), a.peer.ip()), ("host-a", c.node_ips[1]));
}
