//! Tier 2 (root + namespaces): pods' traffic leaving the cluster. Two lab nodes
//! on a switched underlay with their Node objects (`--routing native` routes
//! pods between them); a router on the underlay leads to an "internet" host
//! ([`weir_lab::internet`]), which learns of pods only through the addresses
//! it sees. A who-am-I server there reports the peer address of every flow.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use weir_lab::{
    Agent, Node, Pod, icmp,
    internet::{self, Internet},
    netns::Netns,
    services::{Ep, ManifestDir, merge, node_object, port, service, slice},
    traffic::ConnectionLoad,
    underlay::{Routing, Underlay},
    whoami::{Answer, WhoAmI, ask_tcp, ask_udp},
};

const INTERNET: &str = internet::HOST;
/// Linux's default `ip_local_port_range`: the node's own connections' ports,
/// which masquerade keeps out of.
const EPHEMERAL: std::ops::RangeInclusive<u16> = 32_768..=60_999;

/// Field order is drop order: servers and pods before agents and nodes.
struct Lab {
    _servers: Vec<WhoAmI>,
    a: Pod,
    b: Pod,
    agents: Vec<Agent>,
    internet: Internet,
    node_ips: Vec<IpAddr>,
    dir: ManifestDir,
    nodes: Vec<Node>,
    _underlay: Underlay,
}

impl Lab {
    /// Nodes `10.n.1.0/24` and `10.n.2.0/24`, their agents started with
    /// `flags[i]`, pod `a` on the first and `b` on the second (who-am-I
    /// servers on 8080).
    fn new(n: u8, flags: [&[&str]; 2]) -> Self {
        Self::with_nodes(n, flags, |_| {})
    }

    /// As [`Lab::new`], with `prepare` run on each node before its agent starts.
    fn with_nodes(n: u8, flags: [&[&str]; 2], prepare: impl Fn(&Node)) -> Self {
        Self::routed(n, Routing::Native, flags, prepare)
    }

    /// As [`Lab::with_nodes`], the agents routing pods between the nodes by
    /// `routing`.
    fn routed(n: u8, routing: Routing, flags: [&[&str]; 2], prepare: impl Fn(&Node)) -> Self {
        let underlay = Underlay::new(n);
        let mut nodes = vec![
            routing.node(&format!("10.{n}.1.0/24")),
            routing.node(&format!("10.{n}.2.0/24")),
        ];
        nodes.iter().for_each(&prepare);
        let node_ips = underlay.plug_nodes(&nodes.iter().collect::<Vec<_>>());
        let internet = Internet::new(&underlay, &nodes.iter().collect::<Vec<_>>());
        let dir = ManifestDir::new();
        let objects: Vec<Value> = nodes
            .iter()
            .zip(&node_ips)
            .map(|(node, ip)| node_object(node.name(), &[&node.pod_cidr()], &[*ip]))
            .collect();
        dir.write("nodes.yaml", &objects);
        let agents: Vec<Agent> = nodes
            .iter_mut()
            .zip(flags)
            .map(|(node, flags)| {
                let flags = flags.iter().map(|f| (*f).to_owned()).chain(routing.flags());
                node.start_agent_with_source_and(dir.path(), flags.collect())
            })
            .collect();
        for agent in &agents {
            wait_for(Duration::from_secs(20), "the masquerade exceptions", || {
                agent.log_text().contains("masquerade exceptions written")
            });
        }
        let a = nodes[0].add_pod("a");
        let b = nodes[1].add_pod("b");
        let servers = vec![
            WhoAmI::start(
                &internet.host,
                "internet",
                INTERNET.parse().expect("address"),
                &[80],
            ),
            WhoAmI::start(&a.ns, "a", a.ipv4(), &[8080]),
            WhoAmI::start(&b.ns, "b", b.ipv4(), &[8080]),
        ];
        let lab = Self {
            _servers: servers,
            a,
            b,
            agents,
            internet,
            node_ips,
            dir,
            nodes,
            _underlay: underlay,
        };
        // The agents route pods between the nodes once they read the Nodes.
        let to_b = SocketAddr::new(lab.b.ipv4(), 8080);
        wait_for(Duration::from_secs(20), "a route between the nodes' pods", || {
            ask_tcp(&lab.a.ns, to_b).is_ok()
        });
        lab
    }

    /// The router learns the pods' routes (a network that routes pod
    /// addresses): needed for replies to flows that keep the pod's address.
    fn route_pods(&self) {
        self.internet
            .route_pods(&self.nodes.iter().collect::<Vec<_>>(), &self.node_ips);
    }

    fn masquerade_entries(&self, i: usize, proto: &str) -> Vec<Value> {
        self.agents[i]
            .weirctl(&["conntrack"])
            .as_array()
            .expect("conntrack rows")
            .iter()
            .filter(|r| {
                r["protocol"] == json!(proto)
                    && r["flags"]
                        .as_array()
                        .is_some_and(|f| f.contains(&json!("masquerade")))
            })
            .cloned()
            .collect()
    }
}

fn internet(port: u16) -> SocketAddr {
    SocketAddr::new(INTERNET.parse().expect("address"), port)
}

/// Three pings from `pod` to `to`, all answered (`ping` fails the test
/// otherwise); the source addresses `host` saw them come from.
fn ping(pod: &Pod, to: &str, host: &Netns) -> Vec<IpAddr> {
    icmp::echo_request_sources(host, to.contains(':'), || {
        pod.ns.sh(&format!(
            "ping -n -q -c 3 -i 0.2 -W 2 {to} | grep -q ' 0% packet loss'"
        ));
    })
}

/// A datagram from `ns` to `to` on a connected socket, and what the socket
/// reads next (within 3 s): a refusal, if the ICMP error came back.
fn refused_datagram(ns: &Netns, to: SocketAddr) -> Result<usize, std::io::ErrorKind> {
    ns.run(move || {
        let any: SocketAddr = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
            .parse()
            .expect("address");
        let socket = std::net::UdpSocket::bind(any).expect("bind");
        socket.connect(to).expect("connect");
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        socket.send(b"anyone?").expect("send");
        socket.recv(&mut [0; 16]).map_err(|e| e.kind())
    })
}

/// How many datagrams `ns` has answered with "port unreachable" (UDP's
/// `NoPorts`, IPv4 and IPv6): a refusal a client saw came from there.
fn udp_no_ports(ns: &Netns) -> u64 {
    let n = ns.sh(
        "awk '$1 == \"Udp:\" && $2 ~ /^[0-9]+$/ {n += $3} $1 == \"Udp6NoPorts\" {n += $2} END {print n + 0}' /proc/net/snmp /proc/net/snmp6",
    );
    n.trim().parse().unwrap_or_else(|e| panic!("NoPorts {n:?}: {e}"))
}

fn wait_for(within: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The internet host saw the flow come from `node`, on a port outside the
/// node's ephemeral range.
fn assert_from_node(answer: &Answer, node: IpAddr, what: &str) {
    assert_eq!(
        answer.peer.ip(),
        node,
        "{what}: the internet host must see the node's address, not the pod's"
    );
    assert!(
        answer.peer.port() >= 1024 && !EPHEMERAL.contains(&answer.peer.port()),
        "{what}: port {} is in the node's ephemeral range or privileged",
        answer.peer.port()
    );
}

#[test]
fn root_pods_reach_the_internet_from_their_node_address() {
    let lab = Lab::new(71, [&["--masquerade=true"], &["--masquerade=true"]]);
    for (pod, node, name) in [(&lab.a, lab.node_ips[0], "a"), (&lab.b, lab.node_ips[1], "b")] {
        let tcp = ask_tcp(&pod.ns, internet(80)).unwrap_or_else(|e| panic!("TCP {name} -> internet: {e}"));
        assert_from_node(&tcp, node, &format!("TCP from {name}"));
        let udp = ask_udp(&pod.ns, internet(80)).unwrap_or_else(|e| panic!("UDP {name} -> internet: {e}"));
        assert_from_node(&udp, node, &format!("UDP from {name}"));
        // A ping too: the router knows no pod, so its replies come back only
        // to the node's address, translated back to the pod.
        let seen = ping(pod, INTERNET, &lab.internet.host);
        assert_eq!(
            seen,
            vec![node; 3],
            "ping from {name}: the internet host must see the node's address, not the pod's"
        );
    }
    // Inside the cluster nothing is translated: pods of both nodes see each
    // other's own addresses.
    for (from, to) in [(&lab.a, &lab.b), (&lab.b, &lab.a)] {
        let at = SocketAddr::new(to.ipv4(), 8080);
        let t = ask_tcp(&from.ns, at).expect("TCP between the nodes' pods");
        assert_eq!(
            t.peer.ip(),
            from.ipv4(),
            "pod to pod across nodes is never masqueraded"
        );
        let u = ask_udp(&from.ns, at).expect("UDP between the nodes' pods");
        assert_eq!(
            u.peer.ip(),
            from.ipv4(),
            "pod to pod across nodes is never masqueraded"
        );
    }
    for proto in ["TCP", "UDP", "ICMP"] {
        assert!(
            !lab.masquerade_entries(0, proto).is_empty(),
            "weirctl conntrack shows the masqueraded {proto} flow"
        );
    }

    // Many pod flows and the node's own to the same server port at once: the
    // node's sockets (ephemeral ports) and masquerade's never collide.
    let node_a = lab.node_ips[0];
    let pod_load = |ns: &Netns| {
        ConnectionLoad::start(ns, move |ns| {
            let a = ask_tcp(ns, internet(80))?;
            if a.peer.ip() != node_a || EPHEMERAL.contains(&a.peer.port()) {
                return Err(std::io::Error::other(format!("pod flow seen as {}", a.peer)));
            }
            let u = ask_udp(ns, internet(80))?;
            if u.peer.ip() != node_a || EPHEMERAL.contains(&u.peer.port()) {
                return Err(std::io::Error::other(format!("pod datagram seen as {}", u.peer)));
            }
            Ok(())
        })
    };
    let second = lab.nodes[0].add_pod("a2");
    let pods = [pod_load(&lab.a.ns), pod_load(&lab.a.ns), pod_load(&second.ns)];
    let host = ConnectionLoad::start(&lab.nodes[0].ns, move |ns| {
        let a = ask_tcp(ns, internet(80))?;
        if a.peer.ip() != node_a || !EPHEMERAL.contains(&a.peer.port()) {
            return Err(std::io::Error::other(format!("node flow seen as {}", a.peer)));
        }
        Ok(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let mut total = 0;
    for load in pods {
        total += load.stop_and_assert_none_failed("from pods to the internet");
    }
    total += host.stop_and_assert_none_failed("from the node to the internet");
    assert!(total > 200, "too few flows to prove anything: {total}");

    // Closed TCP flows' pairs (both entries) go once their closing lifetime
    // is over (60 s once both sides sent a FIN: the server's TIME_WAIT), and
    // UDP and ping flows' once 60 s have passed without a packet, when the GC
    // (every 5 s) comes by.
    assert!(!lab.masquerade_entries(0, "TCP").is_empty());
    assert!(!lab.masquerade_entries(0, "UDP").is_empty());
    wait_for(
        Duration::from_secs(90),
        "the masquerade conntrack of closed and idle flows to be collected",
        || {
            ["TCP", "UDP", "ICMP"]
                .iter()
                .all(|p| lab.masquerade_entries(0, p).is_empty())
        },
    );
    // And traffic still flows afterwards.
    let again = ask_tcp(&lab.a.ns, internet(80)).expect("TCP after the GC");
    assert_from_node(&again, lab.node_ips[0], "TCP after the GC");
    let _ = &lab.dir;
}

/// Two pods open more connections to one internet server than the node has
/// masquerade ports (4,096: the node's ephemeral range is set to leave only
/// those), the server closing first and so keeping each (node address, port)
/// in TIME_WAIT for 60 s: ports must be reused across pods. Linux gives every
/// connection a TCP timestamp offset of its own, and the server refuses a SYN
/// on a TIME_WAIT tuple whose timestamp is older than the last it saw there
/// (PAWS): the client waits a second for its retransmission. Masquerade gives
/// a new connection a port whose previous client's timestamp was older, so
/// the server takes every SYN at once.
#[test]
fn root_masquerade_reuses_ports_the_server_holds_in_time_wait_without_paws_refusals() {
    let lab = Lab::with_nodes(76, [&["--masquerade=true"], &["--masquerade=true"]], |node| {
        node.ns.sh("sysctl -qw net.ipv4.ip_local_port_range='1024 61439'");
    });
    let server = weir_lab::connrate::Server::start(&lab.internet.host, internet(8080), 0);
    let second = lab.nodes[0].add_pod("a2");
    let pods = [&lab.a.ns, &second.ns];
    let counters = || {
        (
            lab.internet.host.nstat("TcpExtPAWSTimewait"),
            pods.iter().map(|ns| ns.nstat("TcpExtTCPSynRetrans")).sum::<u64>(),
        )
    };
    let (paws0, retrans0) = counters();
    const PER_POD: usize = 3_000;
    let clients: Vec<_> = pods
        .iter()
        .map(|ns| {
            ns.spawn(|| {
                let to = internet(8080);
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut done = 0;
                while done < PER_POD && Instant::now() < deadline {
                    // An ordinary client: a kernel-chosen port, a request, the
                    // answer, close (after the server's own close).
                    let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
                        .expect("connect through masquerade");
                    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
                    std::io::Write::write_all(&mut s, b"hi\n").expect("request");
                    let mut b = [0u8; 1];
                    std::io::Read::read_exact(&mut s, &mut b).expect("answer");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let done: usize = clients.into_iter().map(|c| c.join().expect("client")).sum();
    let (paws1, retrans1) = counters();
    let (paws, retrans) = (paws1 - paws0, retrans1 - retrans0);
    let ports = lab
        .masquerade_entries(0, "TCP")
        .iter()
        .filter(|r| r["dir"] == json!("out"))
        .count();
    drop(server);
    assert_eq!(done, 2 * PER_POD, "every connection completes within the minute");
    assert!(
        ports <= 4_096,
        "masquerade keeps to the 4,096 ports outside the ephemeral range: {ports} flows"
    );
    // When every one of a connection's 8 candidate ports is held with a newer
    // timestamp, one is taken anyway: rare, but not never.
    assert!(
        paws * 100 <= done as u64,
        "{paws} of {done} SYNs refused by the server's PAWS check ({retrans} SYNs retransmitted)"
    );
}

/// A node with a second uplink: what leaves by it is masqueraded to that
/// device's own address (replies come back by the same device), as Cilium
/// and iptables `MASQUERADE` do, while what leaves by the first keeps the
/// first's. The second uplink leads through another router ("isp2",
/// 198.51.100.0/24) to a second address of the internet host (203.0.113.10).
#[test]
fn root_masquerade_uses_the_address_of_the_device_a_flow_leaves_by() {
    const SECOND: &str = "198.51.100.2";
    const FAR: &str = "203.0.113.10";
    let isp = Netns::new(&weir_lab::unique("wisp"));
    let first_cidr = "10.77.1.0/24";
    let lab = Lab::with_nodes(77, [&[], &[]], |node| {
        if node.pod_cidr() == first_cidr {
            let (dev, peer) = (weir_lab::unique("wup"), weir_lab::unique("wis"));
            node.ns.sh(&format!(
                "ip link add {dev} type veth peer name {peer} netns {isp} && ip addr add {SECOND}/24 dev {dev} && ip link set {dev} up && ip route add {FAR}/32 via 198.51.100.1",
                isp = isp.name()
            ));
            isp.sh(&format!(
                "ip link set lo up && sysctl -qw net.ipv4.ip_forward=1 && ip addr add 198.51.100.1/24 dev {peer} && ip link set {peer} up"
            ));
        }
    });
    let (to_isp, to_host) = (weir_lab::unique("wis"), weir_lab::unique("wfar"));
    isp.sh(&format!(
        "ip link add {to_isp} type veth peer name {to_host} netns {host} && ip addr add 203.0.113.1/24 dev {to_isp} && ip link set {to_isp} up",
        host = lab.internet.host.name()
    ));
    lab.internet.host.sh(&format!(
        "ip addr add {FAR}/24 dev {to_host} && ip link set {to_host} up && ip route add 198.51.100.0/24 via 203.0.113.1"
    ));
    let _far_server = WhoAmI::start(&lab.internet.host, "far", FAR.parse().expect("address"), &[80]);
    let far = SocketAddr::new(FAR.parse().expect("address"), 80);
    let second: IpAddr = SECOND.parse().expect("address");

    let tcp = ask_tcp(&lab.a.ns, far).expect("TCP by the second uplink");
    assert_from_node(&tcp, second, "TCP by the second uplink");
    let udp = ask_udp(&lab.a.ns, far).expect("UDP by the second uplink");
    assert_from_node(&udp, second, "UDP by the second uplink");
    assert_eq!(
        ping(&lab.a, FAR, &lab.internet.host),
        vec![second; 3],
        "a ping by the second uplink"
    );
    // By the first uplink, the first device's address as before.
    let tcp = ask_tcp(&lab.a.ns, internet(80)).expect("TCP by the first uplink");
    assert_from_node(&tcp, lab.node_ips[0], "TCP by the first uplink");
}

#[test]
fn root_masquerade_off_or_excepted_keeps_the_pod_address() {
    let lab = Lab::new(
        72,
        [
            &["--masquerade=false"],
            &[
                "--masquerade=true",
                "--non-masquerade-cidrs=198.51.100.0/24,192.0.2.0/24",
            ],
        ],
    );
    lab.route_pods();
    for (pod, name) in [
        (&lab.a, "a (--masquerade=false)"),
        (&lab.b, "b (--non-masquerade-cidrs)"),
    ] {
        let tcp = ask_tcp(&pod.ns, internet(80)).unwrap_or_else(|e| panic!("TCP {name}: {e}"));
        assert_eq!(
            tcp.peer.ip(),
            pod.ipv4(),
            "TCP from {name} keeps the pod's address"
        );
        let udp = ask_udp(&pod.ns, internet(80)).unwrap_or_else(|e| panic!("UDP {name}: {e}"));
        assert_eq!(
            udp.peer.ip(),
            pod.ipv4(),
            "UDP from {name} keeps the pod's address"
        );
        assert_eq!(
            ping(pod, INTERNET, &lab.internet.host),
            vec![pod.ipv4(); 3],
            "ping from {name} keeps the pod's address"
        );
    }
    for i in 0..2 {
        assert!(
            ["TCP", "UDP", "ICMP"]
                .iter()
                .all(|p| lab.masquerade_entries(i, p).is_empty())
        );
    }
}

/// ICMP errors about a masqueraded flow are translated both ways, as with
/// netfilter's masquerade. Those to the node's address are turned back and
/// reach the pod: a host with no listener answers a pod's datagram with "port
/// unreachable" (the pod's connected socket sees the refusal), and a router
/// whose next link is narrower than the pod's packets says "fragmentation
/// needed" (the pod's TCP sends smaller segments: without the error, the
/// transfer stalls). The pod's own, about a reply its closed socket no longer
/// takes, leaves from the node's address and port (the host's socket sees
/// the refusal).
#[test]
fn root_icmp_errors_about_masqueraded_flows_are_translated_both_ways() {
    let lab = Lab::new(76, [&["--masquerade=true"], &["--masquerade=true"]]);
    let udp = ask_udp(&lab.a.ns, internet(80)).expect("UDP to the internet");
    assert_from_node(&udp, lab.node_ips[0], "UDP from a");

    assert_eq!(
        refused_datagram(&lab.a.ns, internet(9)),
        Err(std::io::ErrorKind::ConnectionRefused),
        "the host's port unreachable reaches the pod's socket"
    );

    let host = lab
        .internet
        .host
        .run(|| std::net::UdpSocket::bind(internet(5353)).expect("bind"));
    lab.a.ns.run(|| {
        let pod = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        pod.send_to(b"hello", internet(5353)).expect("send");
        // Closed here: the host's answer finds no socket.
    });
    host.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let (_, node) = host.recv_from(&mut [0; 16]).expect("the pod's datagram");
    assert_eq!(node.ip(), lab.node_ips[0], "masqueraded");
    host.connect(node).expect("connect");
    let answered = udp_no_ports(&lab.a.ns);
    host.send(b"anyone?").expect("send");
    assert_eq!(
        host.recv(&mut [0; 16]).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused),
        "the pod's port unreachable reaches the host's socket, from the node's address and port"
    );
    assert!(udp_no_ports(&lab.a.ns) > answered, "the pod itself refused it");

    lab.internet.narrow_link(1280);
    transfer_mib(
        &lab.internet.host,
        internet(5001),
        &lab.a.ns,
        internet(5001),
        Sender::Client,
        "1 MiB from a through a 1,280-byte link: the pod must learn the path MTU",
    );
    let mtu = lab.a.ns.sh(&format!("ip route get {INTERNET}"));
    assert!(mtu.contains("mtu 1280"), "the pod caches the path MTU: {mtu}");
}

/// ICMP errors about Service flows are translated back and reach the flow's
/// own end, naming the frontend it dialled, as netfilter's NAT does. Errors
/// about a NodePort flow come to the node (to the NodePort that answered, or
/// to the node's address the request was source-NATed to). A router whose
/// link to the client is narrower than an endpoint's replies says
/// "fragmentation needed": the endpoint, on this node or behind its source
/// NAT on another, must learn the path MTU, or its large replies never
/// arrive. An endpoint's "port unreachable", local or remote, reaches the
/// client's socket, an outside client's or a pod's (through the ClusterIP).
#[test]
fn root_icmp_errors_about_service_flows_reach_their_ends() {
    icmp_errors_about_service_flows_reach_their_ends(78, Routing::Native);
}

/// The same over the overlay: the errors for a remote endpoint (or about
/// its reply) go through the tunnel.
#[test]
fn root_vxlan_icmp_errors_about_service_flows_reach_their_ends() {
    icmp_errors_about_service_flows_reach_their_ends(80, Routing::Vxlan);
}

fn icmp_errors_about_service_flows_reach_their_ends(n: u8, routing: Routing) {
    let flags: &[&str] = &["--masquerade=true"];
    let lab = Lab::routed(n, routing, [flags, flags], |_| {});
    // "near" has its endpoint on node A (a), "far" on node B (b); both are
    // reached at node A. Their UDP port has no listener behind it.
    let cluster_ip = |i: usize| format!("10.96.{n}.{}", 10 + i);
    let mut objects = Vec::new();
    for (i, (name, pod, node_port)) in [("near", &lab.a, 30090), ("far", &lab.b, 30091)]
        .into_iter()
        .enumerate()
    {
        objects.extend(download_service(
            name,
            &cluster_ip(i),
            node_port,
            lab.nodes[i].name(),
            pod.ipv4(),
        ));
    }
    lab.dir.write("big.yaml", &objects);
    let node_a = |p| SocketAddr::new(lab.node_ips[0], p);
    for i in 0..2 {
        let agent = &lab.agents[0];
        agent.wait_slots(&format!("{}/TCP", node_a(30090 + i)), "external", 1);
        agent.wait_slots(&format!("{}/UDP", node_a(30190 + i)), "external", 1);
        agent.wait_slots(&format!("{}:53/UDP", cluster_ip(usize::from(i))), "external", 1);
    }

    let client = lab.nodes[0].add_pod("client");
    for (i, (name, pod)) in [("near", &lab.a), ("far", &lab.b)].into_iter().enumerate() {
        let answered = udp_no_ports(&pod.ns);
        assert_eq!(
            refused_datagram(&lab.internet.host, node_a(30190 + i as u16)),
            Err(std::io::ErrorKind::ConnectionRefused),
            "{name}: the endpoint's port unreachable reaches the outside client's socket"
        );
        let front = SocketAddr::new(cluster_ip(i).parse().expect("address"), 53);
        assert_eq!(
            refused_datagram(&client.ns, front),
            Err(std::io::ErrorKind::ConnectionRefused),
            "{name}: the endpoint's port unreachable reaches the client pod's socket"
        );
        assert!(
            udp_no_ports(&pod.ns) >= answered + 2,
            "{name}: the endpoint itself refused both datagrams"
        );
    }

    lab.internet.narrow_link(1280);
    for (name, pod, node_port, peer) in [
        ("near", &lab.a, 30090, INTERNET.parse().expect("address")),
        ("far", &lab.b, 30091, lab.node_ips[0]),
    ] {
        fetch_through_narrow_link(name, pod, &lab.internet.host, node_a(node_port), peer);
    }
}

/// A NodePort Service `name` of one endpoint (`ip`, on `node`): TCP 80 to
/// 9000 on `node_port`, UDP 53 to 9 (where nothing listens) on `node_port` +
/// 100; and its EndpointSlice.
fn download_service(name: &str, cluster_ip: &str, node_port: u16, node: &str, ip: IpAddr) -> [Value; 2] {
    let mut svc = service(
        name,
        cluster_ip,
        &[port("tcp", 80, "9000", "TCP"), port("udp", 53, "9", "UDP")],
    );
    merge(
        &mut svc,
        &json!({ "spec": {
            "type": "NodePort",
            "ports": [
                { "name": "tcp", "port": 80, "targetPort": 9000, "protocol": "TCP", "nodePort": node_port },
                { "name": "udp", "port": 53, "targetPort": 9, "protocol": "UDP", "nodePort": node_port + 100 },
            ],
        }}),
    );
    let endpoints = slice(
        name,
        name,
        node,
        &[("tcp", 9000, "TCP"), ("udp", 9, "UDP")],
        &[Ep::ready(ip)],
    );
    [svc, endpoints]
}

/// `client` downloads 1 MiB from `pod` (which serves it on port 9000) through
/// `front`, past a link narrower than the pod's packets: the pod must learn
/// the path MTU to `peer` (where its packets go: the client, or the node that
/// source-NATed the flow to it) from the ICMP error.
fn fetch_through_narrow_link(name: &str, pod: &Pod, client: &Netns, front: SocketAddr, peer: IpAddr) {
    let at = SocketAddr::new(if front.is_ipv6() { pod.ipv6() } else { pod.ipv4() }, 9000);
    transfer_mib(&pod.ns, at, client, front, Sender::Server, name);
    let route = pod.ns.sh(&format!("ip route get {peer}"));
    assert!(
        route.contains("mtu 1280"),
        "{name}: the endpoint caches the path MTU to {peer}: {route}"
    );
}

/// Which end of a connection sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sender {
    Client,
    Server,
}

/// 1 MiB over a connection from `client` to `to`, accepted at `at` in
/// `server`, sent by `sender` and read whole by the other end within 15 s: a
/// transfer that stalls (a sender that never learns the path MTU) fails.
fn transfer_mib(server: &Netns, at: SocketAddr, client: &Netns, to: SocketAddr, sender: Sender, what: &str) {
    use std::io::{Read, Write};
    const BYTES: usize = 1 << 20;
    const WITHIN: Duration = Duration::from_secs(15);
    fn talk(mut conn: std::net::TcpStream, send: bool) -> std::io::Result<usize> {
        conn.set_write_timeout(Some(WITHIN))?;
        conn.set_read_timeout(Some(WITHIN))?;
        if send {
            conn.write_all(&vec![7u8; BYTES])?;
            return Ok(BYTES);
        }
        let mut got = 0;
        let mut buf = vec![0u8; 1 << 16];
        while got < BYTES {
            match conn.read(&mut buf)? {
                0 => break,
                n => got += n,
            }
        }
        Ok(got)
    }
    let listener = server.run(move || std::net::TcpListener::bind(at).expect("listen"));
    let server_end = std::thread::spawn(move || {
        let (conn, _) = listener.accept().expect("accept");
        talk(conn, sender == Sender::Server)
    });
    let started = Instant::now();
    let client_end = client.run(move || {
        let conn = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3)).expect("connect");
        talk(conn, sender == Sender::Client)
    });
    let server_end = server_end.join().expect("server");
    for (end, result) in [("client", client_end), ("server", server_end)] {
        let done = result.unwrap_or_else(|e| panic!("{what}: the {end}'s end: {e}"));
        assert_eq!(done, BYTES, "{what}: the {end} got only {done} bytes of 1 MiB");
    }
    assert!(
        started.elapsed() < WITHIN,
        "{what}: the transfer took {:?}",
        started.elapsed()
    );
}

/// With XDP in front of the node devices (`--nodeport-acceleration native`),
/// the replies of masqueraded flows are translated back by XDP and handed to
/// TC, which sends them into the pod; ICMP errors about them go on to TC
/// untouched and still reach the pod.
#[test]
fn root_xdp_in_front_masqueraded_replies_and_icmp_errors_reach_the_pod() {
    let flags: &[&str] = &["--masquerade=true", "--nodeport-acceleration", "native"];
    let lab = Lab::new(77, [flags, flags]);
    lab._underlay.take_xdp_frames();
    let tcp = ask_tcp(&lab.a.ns, internet(80)).expect("TCP to the internet");
    assert_from_node(&tcp, lab.node_ips[0], "TCP from a");
    let udp = ask_udp(&lab.a.ns, internet(80)).expect("UDP to the internet");
    assert_from_node(&udp, lab.node_ips[0], "UDP from a");
    assert_eq!(
        ping(&lab.a, INTERNET, &lab.internet.host),
        vec![lab.node_ips[0]; 3],
        "ping from a: the internet host sees the node's address"
    );
    assert!(
        lab.agents[0].forwarded("xdp") >= 4,
        "XDP translated the replies back to the pod"
    );
    assert_eq!(
        refused_datagram(&lab.a.ns, internet(9)),
        Err(std::io::ErrorKind::ConnectionRefused),
        "the host's port unreachable reaches the pod's socket"
    );
}

/// An externalTrafficPolicy Local NodePort reached from another node's pod
/// (inside the cluster: its address is in a Node's pod CIDR) uses every
/// endpoint, as kube-proxy with a cluster CIDR does; from the internet, only
/// the node's own endpoints, the client's address kept (and its replies not
/// masqueraded).
#[test]
fn root_local_nodeport_from_another_nodes_pod_uses_every_endpoint() {
    let lab = Lab::new(73, [&["--masquerade=true"], &["--masquerade=true"]]);
    let mut svc = service(
        "web",
        "10.96.73.10",
        &[port("tcp", 80, "8080", "TCP"), port("udp", 53, "8080", "UDP")],
    );
    merge(
        &mut svc,
        &json!({ "spec": {
            "type": "NodePort",
            "externalTrafficPolicy": "Local",
            "ports": [
                { "name": "tcp", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080 },
                { "name": "udp", "port": 53, "targetPort": 8080, "protocol": "UDP", "nodePort": 30053 },
            ],
        }}),
    );
    let only_a = slice(
        "web-a",
        "web",
        lab.nodes[0].name(),
        &[("tcp", 8080, "TCP"), ("udp", 8080, "UDP")],
        &[Ep::ready(lab.a.ipv4())],
    );
    lab.dir.write("web.yaml", &[svc, only_a]);
    let front = |i: usize| format!("{}:30080/TCP", lab.node_ips[i]);
    for (i, count) in [(0, 1), (1, 0)] {
        lab.agents[i].wait_slots(&front(i), "external", count);
    }
    let node_b = |p| SocketAddr::new(lab.node_ips[1], p);
    // Node B has no endpoint of its own: a pod of node A still gets one (a's),
    // through B's address so that the replies come back the way they went.
    let client = lab.nodes[0].add_pod("client");
    for i in 0..10 {
        let t = ask_tcp(&client.ns, node_b(30080))
            .unwrap_or_else(|e| panic!("TCP {i} pod -> node B's Local NodePort: {e}"));
        assert_eq!(t.server, "a");
        assert_eq!(
            t.peer.ip(),
            lab.node_ips[1],
            "a remote endpoint sees the node that forwarded"
        );
        let u = ask_udp(&client.ns, node_b(30053))
            .unwrap_or_else(|e| panic!("UDP {i} pod -> node B's Local NodePort: {e}"));
        assert_eq!(u.server, "a");
    }
    // From the internet, node B drops (no local endpoint); node A serves it
    // with the client's address, its replies untouched by masquerade.
    assert!(
        ask_tcp(&lab.internet.host, node_b(30080)).is_err(),
        "the internet must not reach node B's Local NodePort"
    );
    let node_a = |p| SocketAddr::new(lab.node_ips[0], p);
    for i in 0..5 {
        let t = ask_tcp(&lab.internet.host, node_a(30080))
            .unwrap_or_else(|e| panic!("TCP {i} internet -> node A: {e}"));
        assert_eq!(
            (t.server.as_str(), t.peer.ip()),
            ("a", INTERNET.parse().expect("address"))
        );
        let u = ask_udp(&lab.internet.host, node_a(30053))
            .unwrap_or_else(|e| panic!("UDP {i} internet -> node A: {e}"));
        assert_eq!(
            (u.server.as_str(), u.peer.ip()),
            ("a", INTERNET.parse().expect("address"))
        );
    }
    assert!(
        lab.masquerade_entries(0, "UDP").is_empty(),
        "a pod's replies to a NodePort client are not masqueraded"
    );
}

/// A NodePort whose endpoint is a hostNetwork pod (its address its node's),
/// reached from another node's pod: node A hands the request to its own
/// process, whose replies go back to the pod's node by the route to that
/// node's pod CIDR (the underlay, or the tunnel with `--routing vxlan`) and
/// must leave from the NodePort, as must its "port unreachable" for a UDP
/// port nothing listens on. Through the ClusterIP (translated on the
/// client's node) the same endpoint answers too.
#[test]
fn root_host_network_nodeport_endpoint_answers_another_nodes_pod() {
    host_network_endpoint_answers_another_nodes_pod(82, Routing::Native);
}

#[test]
fn root_vxlan_host_network_nodeport_endpoint_answers_another_nodes_pod() {
    host_network_endpoint_answers_another_nodes_pod(83, Routing::Vxlan);
}

fn host_network_endpoint_answers_another_nodes_pod(n: u8, routing: Routing) {
    let lab = Lab::routed(n, routing, [&[], &[]], |_| {});
    let node_a = |p| SocketAddr::new(lab.node_ips[0], p);
    let _server = WhoAmI::start(&lab.nodes[0].ns, "host-a", lab.node_ips[0], &[8090]);
    let cluster_ip = format!("10.96.{n}.10");
    let mut svc = service(
        "hostnet",
        &cluster_ip,
        &[port("tcp", 80, "8090", "TCP"), port("udp", 53, "8090", "UDP")],
    );
    merge(
        &mut svc,
        &json!({ "spec": {
            "type": "NodePort",
            "ports": [
                { "name": "tcp", "port": 80, "targetPort": 8090, "protocol": "TCP", "nodePort": 30089 },
                // Nothing listens on UDP 9 of node A.
                { "name": "udp", "port": 53, "targetPort": 9, "protocol": "UDP", "nodePort": 30189 },
            ],
        }}),
    );
    let endpoints = slice(
        "hostnet",
        "hostnet",
        lab.nodes[0].name(),
        &[("tcp", 8090, "TCP"), ("udp", 9, "UDP")],
        &[Ep::ready(lab.node_ips[0])],
    );
    lab.dir.write("hostnet.yaml", &[svc, endpoints]);
    lab.agents[0].wait_slots(&format!("{}/TCP", node_a(30089)), "external", 1);
    lab.agents[0].wait_slots(&format!("{}/UDP", node_a(30189)), "external", 1);
    lab.agents[1].wait_slots(&format!("{cluster_ip}:80/TCP"), "external", 1);

    let client = &lab.b;
    for i in 0..5 {
        let t = ask_tcp(&client.ns, node_a(30089))
            .unwrap_or_else(|e| panic!("{routing:?} TCP {i}: pod of node B -> node A's NodePort: {e}"));
        assert_eq!(
            (t.server.as_str(), t.peer.ip()),
            ("host-a", client.ipv4()),
            "the hostNetwork endpoint sees the pod's own address"
        );
        let front = SocketAddr::new(cluster_ip.parse().expect("address"), 80);
        let t = ask_tcp(&client.ns, front)
            .unwrap_or_else(|e| panic!("{routing:?} TCP {i}: pod of node B -> ClusterIP: {e}"));
        assert_eq!(t.server, "host-a");
    }
    let answered = udp_no_ports(&lab.nodes[0].ns);
    assert_eq!(
        refused_datagram(&client.ns, node_a(30189)),
        Err(std::io::ErrorKind::ConnectionRefused),
        "{routing:?}: node A's port unreachable reaches the pod's socket from the NodePort"
    );
    assert!(
        udp_no_ports(&lab.nodes[0].ns) > answered,
        "node A itself refused the datagram"
    );
}

/// A dual-stack node `10.n.1.0/24` + `fd00:10:n:1::/64` (its IPv6 address
/// `fd00:n::1`) and its agent (masquerading), with one pod; IPv6 beside the
/// lab's IPv4 on the same links, through the router to the internet host
/// (`fd00:c0::10`). Field order is drop order.
struct Ipv6Lab {
    pod: Pod,
    agent: Agent,
    internet: Internet,
    node6: IpAddr,
    host6: IpAddr,
    dir: ManifestDir,
    node: Node,
    _underlay: Underlay,
}

impl Ipv6Lab {
    fn new(n: u8) -> Self {
        let underlay = Underlay::new(n);
        let mut node = Node::with_ranges(json!([
            [{ "subnet": format!("10.{n}.1.0/24") }],
            [{ "subnet": format!("fd00:10:{n}:1::/64") }]
        ]));
        let node_ip = underlay.plug_nodes(&[&node])[0];
        let internet = Internet::new(&underlay, &[&node]);
        let dev = |ns: &Netns, v4: &str| {
            ns.sh(&format!(
                "ip -o -4 addr show | awk '$4 ~ /^{v4}\\// {{print $2}}'"
            ))
            .trim()
            .to_owned()
        };
        let node_dev = dev(&node.ns, &node_ip.to_string());
        node.ns.sh(&format!(
            "ip -6 addr add fd00:{n}::1/64 dev {node_dev} nodad && ip -6 route add fd00:c0::/64 via fd00:{n}::fe"
        ));
        let router_under = dev(&internet.router, &format!("10.200.{n}.254"));
        let router_out = dev(&internet.router, "192.0.2.1");
        internet.router.sh(&format!(
            "sysctl -qw net.ipv6.conf.all.forwarding=1 && ip -6 addr add fd00:{n}::fe/64 dev {router_under} nodad && ip -6 addr add fd00:c0::1/64 dev {router_out} nodad"
        ));
        let host_dev = dev(&internet.host, internet::HOST);
        internet.host.sh(&format!(
            "ip -6 addr add fd00:c0::10/64 dev {host_dev} nodad && ip -6 route add default via fd00:c0::1"
        ));
        let node6: IpAddr = format!("fd00:{n}::1").parse().expect("address");
        let dir = ManifestDir::new();
        dir.write(
            "nodes.yaml",
            &[node_object(
                node.name(),
                &[&format!("10.{n}.1.0/24"), &format!("fd00:10:{n}:1::/64")],
                &[node_ip, node6],
            )],
        );
        let agent = node.start_agent_with_source_and(dir.path(), vec!["--masquerade=true".to_owned()]);
        wait_for(Duration::from_secs(20), "the masquerade exceptions", || {
            agent.log_text().contains("masquerade exceptions written")
        });
        let pod = node.add_pod("a");
        Self {
            pod,
            agent,
            internet,
            node6,
            host6: "fd00:c0::10".parse().expect("address"),
            dir,
            node,
            _underlay: underlay,
        }
    }
}

/// IPv6: a dual-stack node's pod reaches an IPv6 internet host from the
/// node's IPv6 address, by TCP and UDP.
#[test]
fn root_pods_reach_the_ipv6_internet_from_their_node_address() {
    let lab = Ipv6Lab::new(74);
    let (pod, internet, node6, host6) = (&lab.pod, &lab.internet, lab.node6, lab.host6);
    let _server = WhoAmI::start(&internet.host, "internet", host6, &[80]);
    let to = SocketAddr::new(host6, 80);
    // The links' neighbours are found by the first packets: give the first
    // connection a few tries.
    wait_for(
        Duration::from_secs(10),
        "a first IPv6 connection to the internet host",
        || ask_tcp(&pod.ns, to).is_ok(),
    );
    let tcp = ask_tcp(&pod.ns, to).unwrap_or_else(|e| panic!("TCP over IPv6 from {}: {e}", pod.ipv6()));
    assert_from_node(&tcp, node6, "TCP over IPv6");
    let udp = ask_udp(&pod.ns, to).unwrap_or_else(|e| panic!("UDP over IPv6 from {}: {e}", pod.ipv6()));
    assert_from_node(&udp, node6, "UDP over IPv6");
    // The router knows no pod prefix: answered pings prove the translation
    // back too.
    assert_eq!(
        ping(pod, "fd00:c0::10", &internet.host),
        vec![node6; 3],
        "ping over IPv6: the internet host must see the node's address"
    );
    // And the ICMPv6 error of a datagram to a port with no listener.
    assert_eq!(
        refused_datagram(&pod.ns, SocketAddr::new(host6, 9)),
        Err(std::io::ErrorKind::ConnectionRefused),
        "the host's ICMPv6 port unreachable reaches the pod's socket"
    );
}

/// IPv6: ICMPv6 errors about a NodePort flow (whose checksum covers the
/// addresses rewritten) reach the local endpoint, "packet too big" from the
/// router before a narrow link, and the outside client, the endpoint's "port
/// unreachable".
#[test]
fn root_icmpv6_errors_about_nodeport_flows_reach_their_ends() {
    let lab = Ipv6Lab::new(79);
    let objects = download_service("web6", "fd00:96:79::10", 30092, lab.node.name(), lab.pod.ipv6());
    lab.dir.write("web6.yaml", &objects);
    let front = |p| SocketAddr::new(lab.node6, p);
    lab.agent
        .wait_slots(&format!("{}/TCP", front(30092)), "external", 1);
    lab.agent
        .wait_slots(&format!("{}/UDP", front(30192)), "external", 1);
    let answered = udp_no_ports(&lab.pod.ns);
    // The links' neighbours are found by the first packets: a few tries.
    wait_for(
        Duration::from_secs(10),
        "the endpoint's ICMPv6 port unreachable at the outside client's socket",
        || refused_datagram(&lab.internet.host, front(30192)) == Err(std::io::ErrorKind::ConnectionRefused),
    );
    assert!(
        udp_no_ports(&lab.pod.ns) > answered,
        "the endpoint itself refused it"
    );
    lab.internet.narrow_link(1280);
    fetch_through_narrow_link("IPv6", &lab.pod, &lab.internet.host, front(30092), lab.host6);
}
