//! Tier 2 (root + namespaces): a packet from a pod to another pod of its node
//! goes straight into the destination's namespace (`bpf_redirect_peer`),
//! skipping the destination's host veth and its `to-pod` program, whose work
//! (ingress NetworkPolicy, reverse translation, counting) the sending pod's
//! program does instead; and nothing of what that program enforced is lost.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use weir_lab::{
    Agent, Node, Pod,
    reachability::{self, Probe},
    services::{Ep, ManifestDir, pod, port, service, slice},
    traffic::{EchoServer, tcp_roundtrip, udp_roundtrip},
    whoami::{TcpSession, WhoAmI, ask_tcp},
};

/// Packets counted in `direction` under `reason` (its text in `weirctl metrics`).
fn counted(agent: &Agent, direction: &str, reason: &str) -> u64 {
    weir_lab::agent::counted(&agent.weirctl(&["metrics"]), direction, reason)
}

const PEER: &str = "delivered into the pod by redirect_peer (host veth skipped)";
const DENIED: &str = "denied by NetworkPolicy (ingress)";

/// The pod's host veth (the first interface of its CNI result).
fn host_veth(pod: &Pod) -> String {
    pod.result["interfaces"][0]["name"]
        .as_str()
        .expect("host interface")
        .to_owned()
}

/// Packets the node sent on the pod's host veth: what reached the pod through
/// it rather than straight into its namespace.
fn veth_tx(node: &Node, pod: &Pod) -> u64 {
    node.ns
        .sh(&format!(
            "cat /sys/class/net/{}/statistics/tx_packets",
            host_veth(pod)
        ))
        .trim()
        .parse()
        .expect("tx_packets")
}

#[test]
fn root_peer_same_node_pods_skip_the_host_veth() {
    let mut node = Node::new("10.93.1.0/24");
    let agent = node.start_agent();
    let server = node.add_pod("server");
    let client = node.add_pod("client");

    // The endpoints carry the MACs of both ends of each pod's veth.
    let endpoints = agent.weirctl(&["endpoints"]);
    for p in [&server, &client] {
        let row = endpoints
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["ip"] == p.ipv4().to_string())
            .unwrap_or_else(|| panic!("{} missing from endpoints: {endpoints}", p.ipv4()));
        let pod_mac = p.ns.sh("cat /sys/class/net/eth0/address");
        let host_mac = node
            .ns
            .sh(&format!("cat /sys/class/net/{}/address", host_veth(p)));
        assert_eq!(row["mac"].as_str(), Some(pod_mac.trim()), "{endpoints}");
        assert_eq!(row["host_mac"].as_str(), Some(host_mac.trim()), "{endpoints}");
    }

    let (peer, tx) = (counted(&agent, "to-pod", PEER), veth_tx(&node, &server));
    let forwarded = counted(&agent, "to-pod", "forwarded");
    let echo = EchoServer::start(&server.ns, SocketAddr::new(server.ipv4(), 0));
    for i in 0..20 {
        let msg = format!("hello {i}");
        assert_eq!(
            tcp_roundtrip(&client.ns, echo.addr, msg.as_bytes()).expect("TCP"),
            msg.as_bytes()
        );
        assert_eq!(
            udp_roundtrip(&client.ns, echo.addr, msg.as_bytes()).expect("UDP"),
            msg.as_bytes()
        );
    }
    // 20 connections (>= 4 packets each way) and 20 datagrams each way, every
    // one handed straight into its pod, and still counted as delivered.
    let more_peer = counted(&agent, "to-pod", PEER) - peer;
    let more_forwarded = counted(&agent, "to-pod", "forwarded") - forwarded;
    assert!(
        more_peer >= 2 * (20 * 4 + 20),
        "only {more_peer} by redirect_peer"
    );
    assert!(
        more_forwarded >= more_peer,
        "{more_forwarded} forwarded, {more_peer} by redirect_peer"
    );
    // None of it went out of the server's host veth (IPv6 neighbour and
    // router traffic of the node may).
    let more_tx = veth_tx(&node, &server) - tx;
    assert!(
        more_tx < 10,
        "{more_tx} packets still sent on the server's host veth"
    );
}

/// Waits until the agent's `weirctl policy` shows `ip` isolated.
fn wait_isolated(agent: &Agent, ip: IpAddr) {
    let start = Instant::now();
    // A row of its own: a peer's address shows in other pods' rows.
    let isolated = || {
        agent.weirctl(&["policy"]).as_array().is_some_and(|rows| {
            rows.iter()
                .any(|r| r["endpoint"].as_str() == Some(ip.to_string().as_str()))
        })
    };
    while !isolated() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{ip} never isolated:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn root_peer_ingress_policy_holds_on_the_direct_path() {
    let mut node = Node::new("10.93.2.0/24");
    let dir = ManifestDir::new();
    let agent = node.start_agent_with_source(dir.path());
    let server = node.add_pod("server");
    let client = node.add_pod("client");
    let front = node.add_pod("front");
    let _whoami = WhoAmI::start(&server.ns, "server", server.ipv4(), &[80]);
    let _on_client = WhoAmI::start(&client.ns, "client", client.ipv4(), &[80]);

    let objects = |front_role: &str| -> Vec<Value> {
        let n = node.name();
        vec![
            pod(
                "default",
                "server",
                json!({"app": "server"}),
                n,
                &[server.ipv4()],
                json!([]),
            ),
            pod(
                "default",
                "client",
                json!({"role": "client"}),
                n,
                &[client.ipv4()],
                json!([]),
            ),
            pod(
                "default",
                "front",
                json!({"role": front_role}),
                n,
                &[front.ipv4()],
                json!([]),
            ),
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "front-only", "namespace": "default"},
                "spec": {
                    "podSelector": {"matchLabels": {"app": "server"}},
                    "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}]}],
                },
            }),
        ]
    };
    dir.write("cluster.yaml", &objects("frontend"));
    wait_isolated(&agent, server.ipv4());

    let to_server = SocketAddr::new(server.ipv4(), 80);
    let (peer, denied) = (counted(&agent, "to-pod", PEER), counted(&agent, "to-pod", DENIED));

    // Denied by the server's ingress policy, as the server's veth denied it.
    let r = reachability::run(
        &[Probe {
            from: &client.ns,
            to: to_server,
            proto: "TCP",
        }],
        Duration::from_millis(700),
    );
    assert_eq!(r, [false], "the client must be denied");
    assert!(
        counted(&agent, "to-pod", DENIED) > denied,
        "the drop is counted under to-pod: {:#}",
        agent.weirctl(&["metrics"])
    );
    let drops = agent.weirctl(&["drops"]);
    assert!(
        drops
            .as_array()
            .expect("rows")
            .iter()
            .any(|d| d["reason"] == DENIED
                && d["endpoint"] == server.ipv4().to_string()
                && d["source"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&client.ipv4().to_string()))),
        "{drops:#}"
    );

    // Admitted: the frontend, and its replies come back.
    let answer = ask_tcp(&front.ns, to_server).expect("the frontend is admitted");
    assert_eq!(answer.server, "server");
    // The isolated server's own connection out: its replies pass its ingress
    // policy (policy is stateful), on the same path.
    let answer = ask_tcp(&server.ns, SocketAddr::new(client.ipv4(), 80)).expect("the server's own flow");
    assert_eq!(answer.server, "client");
    assert!(
        counted(&agent, "to-pod", PEER) > peer,
        "nothing went by redirect_peer: {:#}",
        agent.weirctl(&["metrics"])
    );

    // An established connection outlives the change that denies new ones.
    let mut session = TcpSession::connect(&front.ns, to_server).expect("connect");
    session.ask().expect("first question");
    dir.write("cluster.yaml", &objects("client"));
    let start = Instant::now();
    while ask_tcp(&front.ns, to_server).is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the relabelled frontend is still admitted for new connections"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..5 {
        let answer = session.ask().expect("the established connection keeps going");
        assert_eq!(answer.server, "server");
    }
}

/// A connection to a ClusterIP whose backend is a pod of the same node goes
/// straight into that pod once translated: its ingress policy judges the flow
/// as it arrives (the backend's address and target port, not the frontend's),
/// and the replies come back from the frontend.
#[test]
fn root_peer_translated_flows_are_judged_as_they_arrive() {
    const VIP: &str = "10.96.93.3";
    let mut node = Node::new("10.93.3.0/24");
    let dir = ManifestDir::new();
    let agent = node.start_agent_with_source(dir.path());
    let server = node.add_pod("server");
    let client = node.add_pod("client");
    let front = node.add_pod("front");
    // Port 81 is open on the server, but only port 80 is admitted.
    let _whoami = WhoAmI::start(&server.ns, "server", server.ipv4(), &[80, 81]);
    let n = node.name();
    let mut objects: Vec<Value> = [
        ("server", json!({"app": "server"}), server.ipv4()),
        ("client", json!({"role": "client"}), client.ipv4()),
        ("front", json!({"role": "frontend"}), front.ipv4()),
    ]
    .into_iter()
    .map(|(name, labels, ip)| pod("default", name, labels, n, &[ip], json!([])))
    .collect();
    objects.extend([
        // The frontend admits nothing: the replies pass its ingress policy
        // as the replies of its own flows, which policy must recognise.
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "front-isolated", "namespace": "default"},
            "spec": {
                "podSelector": {"matchLabels": {"role": "frontend"}},
                "policyTypes": ["Ingress"],
            },
        }),
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "front-on-80", "namespace": "default"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "server"}},
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}],
                    "ports": [{"protocol": "TCP", "port": 80}],
                }],
            },
        }),
        service(
            "server",
            VIP,
            &[port("web", 8080, "80", "TCP"), port("other", 8081, "81", "TCP")],
        ),
        slice(
            "server",
            "server",
            n,
            &[("web", 80, "TCP"), ("other", 81, "TCP")],
            &[Ep::ready(server.ipv4())],
        ),
    ]);
    dir.write("cluster.yaml", &objects);
    wait_isolated(&agent, server.ipv4());
    wait_isolated(&agent, front.ipv4());

    let vip: IpAddr = VIP.parse().expect("vip");
    let (peer, denied) = (counted(&agent, "to-pod", PEER), counted(&agent, "to-pod", DENIED));
    // Admitted on the target port the policy names; the answer comes back
    // from the frontend (the connection is to it).
    agent.wait_backends(&format!("{VIP}:8080/TCP"), &[format!("{}:80", server.ipv4())]);
    let answer = ask_tcp(&front.ns, SocketAddr::new(vip, 8080)).expect("the frontend is admitted");
    assert_eq!(answer.server, "server");
    // Both ways straight into the pods: none of ten more connections went out
    // of the server's or the frontend's host veth (the node's IPv6 neighbour
    // and router traffic may).
    let tx = [veth_tx(&node, &server), veth_tx(&node, &front)];
    for _ in 0..10 {
        let answer = ask_tcp(&front.ns, SocketAddr::new(vip, 8080)).expect("the frontend");
        assert_eq!(answer.server, "server");
    }
    for (pod, before) in [(&server, tx[0]), (&front, tx[1])] {
        let more_tx = veth_tx(&node, pod) - before;
        assert!(
            more_tx < 10,
            "{more_tx} packets still sent on {}'s host veth",
            host_veth(pod)
        );
    }
    assert!(
        counted(&agent, "to-pod", PEER) > peer + 10 * 4,
        "not by redirect_peer: {:#}",
        agent.weirctl(&["metrics"])
    );

    // Denied: another pod, and the frontend on the port the policy leaves out.
    let r = reachability::run(
        &[
            Probe {
                from: &client.ns,
                to: SocketAddr::new(vip, 8080),
                proto: "TCP",
            },
            Probe {
                from: &front.ns,
                to: SocketAddr::new(vip, 8081),
                proto: "TCP",
            },
        ],
        Duration::from_millis(700),
    );
    assert_eq!(
        r,
        [false, false],
        "the client, and the frontend on port 81, must be denied"
    );
    assert!(
        counted(&agent, "to-pod", DENIED) > denied,
        "the drops are counted under to-pod: {:#}",
        agent.weirctl(&["metrics"])
    );
    // Still admitted after the denials: nothing else changed.
    let answer = ask_tcp(&front.ns, SocketAddr::new(vip, 8080)).expect("the frontend again");
    assert_eq!(answer.server, "server");
}
