//! Tier 2 (root + namespaces): Services load-balanced by the eBPF datapath with
//! real packets, each scenario read once from a manifest directory (`weir-agent
//! --source dir:`, tests `*::root_dir`) and once from the lab's API server
//! (`--source kube`, tests `*::root_kube`). Each
//! test runs on a node of its own; backends are pods running a who-am-I server
//! that answers with its name and the client address it saw.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use weir_common::maps as names;
use weir_lab::{
    Agent, Node, Pod,
    netns::Netns,
    services::{Cluster, Ep, SourceKind, frontend, port, service, service_with_ips, slice},
    traffic::ConnectionLoad,
    whoami::{Answer, TcpSession, UdpSession, WhoAmI, ask_tcp, ask_tcp_from, ask_udp, ask_udp_from},
};

const VIP: &str = "10.96.0.10";

/// A node whose agent reads `cluster`, with backend pods serving who-am-I.
/// Field order is drop order: servers, then pods, then the agent and the node.
struct Lab {
    _servers: Vec<WhoAmI>,
    backends: Vec<Pod>,
    client: Pod,
    agent: Agent,
    node: Node,
    cluster: Cluster,
}

impl Lab {
    /// `backends`: pod names; each serves who-am-I (TCP and UDP) on `ports`.
    fn new(kind: SourceKind, pod_cidr: &str, backends: &[&str], ports: &[u16]) -> Self {
        let cluster = Cluster::new(kind);
        let mut node = Node::new(pod_cidr);
        let agent = node.start_agent_for(&cluster);
        let backends: Vec<Pod> = backends.iter().map(|n| node.add_pod(n)).collect();
        let servers = backends
            .iter()
            .map(|p| WhoAmI::start(&p.ns, &p.spec.name, p.ipv4(), ports))
            .collect();
        let client = node.add_pod("client");
        Self {
            _servers: servers,
            backends,
            client,
            agent,
            node,
            cluster,
        }
    }

    fn pod(&self, name: &str) -> &Pod {
        self.backends
            .iter()
            .find(|p| p.spec.name == name)
            .unwrap_or_else(|| panic!("no backend pod {name}"))
    }

    fn ip(&self, name: &str) -> IpAddr {
        self.pod(name).ipv4()
    }

    fn ready(&self, names: &[&str]) -> Vec<Ep> {
        names.iter().map(|n| Ep::ready(self.ip(n))).collect()
    }

    /// `ip:port` of each named backend, as `weirctl services` shows them.
    fn addrs(&self, names: &[&str], port: u16) -> Vec<String> {
        names.iter().map(|n| format!("{}:{port}", self.ip(n))).collect()
    }

    /// One Service `web` on [`VIP`] (port 80 -> 8080/TCP) with one slice.
    fn web(&self, endpoints: &[Ep]) -> Vec<Value> {
        vec![
            service("web", VIP, &[port("http", 80, "8080", "TCP")]),
            slice(
                "web-abc12",
                "web",
                self.node.name(),
                &[("http", 8080, "TCP")],
                endpoints,
            ),
        ]
    }
}

fn vip(port: u16) -> SocketAddr {
    SocketAddr::new(VIP.parse().expect("VIP"), port)
}

/// Which server answered each of `n` new TCP connections from `ns`.
fn tally_tcp(ns: &Netns, to: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let a = ask_tcp(ns, to).unwrap_or_else(|e| panic!("connection {i} to {to}: {e}"));
        *seen.entry(a.server).or_default() += 1;
    }
    seen
}

fn expect_server(answer: std::io::Result<Answer>, server: &str, what: &str) -> Answer {
    let a = answer.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        a.server, server,
        "{what}: answered by {} instead of {server}",
        a.server
    );
    a
}

weir_lab::with_both_sources!(
    clusterip_tcp_and_udp,
    several_ports_with_different_protocols,
    target_port_number_and_name,
    selectorless_service_with_endpoints,
    headless_and_other_proxy_services_get_no_frontend,
    no_endpoints_rejects_quickly,
    client_source_ip_is_preserved,
    hairpin_backend_reaches_its_own_service,
    session_affinity_client_ip,
    endpoint_conditions_ready_then_terminating_fallback,
    several_slices_per_service_merge,
    established_tcp_keeps_its_backend_when_the_slice_changes,
    udp_flows_to_a_removed_endpoint_are_flushed,
    ports_and_service_recreation_apply_live,
    new_connections_spread_evenly,
    agent_restart_keeps_services_and_ids,
    maglev_spreads_and_keeps_surviving_flows_on_their_backend,
    a_closed_translated_flow_never_captures_a_direct_one,
    ipv6_and_dual_stack_clusterips,
    metrics_say_what_is_programmed_dropped_and_how_long_it_took,
    views_name_services_and_pods_while_the_agent_is_down_too,
    explain_says_what_the_packets_do,
    status_reports_the_agent_the_node_and_the_maps,
    monitors_each_see_every_drop_and_drops_takes_nothing,
    monitor_traces_new_flows_naming_service_backend_and_verdicts,
);

fn clusterip_tcp_and_udp(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.1.0/24", &["a"], &[8080]);
    let mut objects = vec![service(
        "web",
        VIP,
        &[port("http", 80, "8080", "TCP"), port("dns", 53, "8080", "UDP")],
    )];
    objects.push(slice(
        "web-x1",
        "web",
        lab.node.name(),
        &[("http", 8080, "TCP"), ("dns", 8080, "UDP")],
        &lab.ready(&["a"]),
    ));
    lab.cluster.write("web.yaml", &objects);
    lab.agent
        .wait_backends(&format!("{VIP}:80/TCP"), &lab.addrs(&["a"], 8080));
    lab.agent
        .wait_backends(&format!("{VIP}:53/UDP"), &lab.addrs(&["a"], 8080));
    expect_server(ask_tcp(&lab.client.ns, vip(80)), "a", "TCP through the ClusterIP");
    expect_server(ask_udp(&lab.client.ns, vip(53)), "a", "UDP through the ClusterIP");
}

fn several_ports_with_different_protocols(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.2.0/24", &["a", "b"], &[8080, 5353]);
    let objects = vec![
        service(
            "multi",
            VIP,
            &[
                port("http", 80, "8080", "TCP"),
                port("dns", 53, "5353", "UDP"),
                port("dns-tcp", 53, "5353", "TCP"),
            ],
        ),
        slice(
            "multi-1",
            "multi",
            lab.node.name(),
            &[
                ("http", 8080, "TCP"),
                ("dns", 5353, "UDP"),
                ("dns-tcp", 5353, "TCP"),
            ],
            &lab.ready(&["a", "b"]),
        ),
    ];
    lab.cluster.write("multi.yaml", &objects);
    lab.agent
        .wait_backends(&format!("{VIP}:80/TCP"), &lab.addrs(&["a", "b"], 8080));
    lab.agent
        .wait_backends(&format!("{VIP}:53/UDP"), &lab.addrs(&["a", "b"], 5353));
    lab.agent
        .wait_backends(&format!("{VIP}:53/TCP"), &lab.addrs(&["a", "b"], 5353));
    for (what, answer) in [
        ("80/TCP", ask_tcp(&lab.client.ns, vip(80))),
        ("53/UDP", ask_udp(&lab.client.ns, vip(53))),
        ("53/TCP", ask_tcp(&lab.client.ns, vip(53))),
    ] {
        let a = answer.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(["a", "b"].contains(&a.server.as_str()), "{what}: {a:?}");
    }
}

fn target_port_number_and_name(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.3.0/24", &["a"], &[8080, 9090]);
    // `web` targets a container port by name: the EndpointSlice carries the
    // resolved number under the Service port's name, as the controller writes it.
    let objects = vec![
        service("num", VIP, &[port("http", 80, "8080", "TCP")]),
        slice(
            "num-1",
            "num",
            lab.node.name(),
            &[("http", 8080, "TCP")],
            &lab.ready(&["a"]),
        ),
        service("named", "10.96.0.11", &[port("http", 80, "web", "TCP")]),
        slice(
            "named-1",
            "named",
            lab.node.name(),
            &[("http", 9090, "TCP")],
            &lab.ready(&["a"]),
        ),
    ];
    lab.cluster.write("svc.yaml", &objects);
    lab.agent
        .wait_backends(&format!("{VIP}:80/TCP"), &lab.addrs(&["a"], 8080));
    lab.agent
        .wait_backends("10.96.0.11:80/TCP", &lab.addrs(&["a"], 9090));
    expect_server(ask_tcp(&lab.client.ns, vip(80)), "a", "port 80 -> 8080");
    expect_server(
        ask_tcp(&lab.client.ns, "10.96.0.11:80".parse().expect("addr")),
        "a",
        "port 80 -> named target 9090",
    );
}

fn selectorless_service_with_endpoints(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.4.0/24", &["a"], &[7000]);
    let mut svc = service("ext", VIP, &[port("", 80, "7000", "TCP")]);
    svc["spec"].as_object_mut().expect("spec").remove("selector");
    let endpoints = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": { "name": "ext", "namespace": "default" },
        "subsets": [{
            "addresses": [{ "ip": lab.ip("a").to_string() }],
            "ports": [{ "port": 7000, "protocol": "TCP" }],
        }],
    });
    lab.cluster.write("ext.yaml", &[svc, endpoints]);
    lab.agent
        .wait_backends(&format!("{VIP}:80/TCP"), &lab.addrs(&["a"], 7000));
    expect_server(ask_tcp(&lab.client.ns, vip(80)), "a", "selector-less Service");
}

fn headless_and_other_proxy_services_get_no_frontend(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.5.0/24", &["a"], &[8080]);
    let mut headless = service("headless", "None", &[port("http", 80, "8080", "TCP")]);
    headless["spec"]["clusterIPs"] = json!(["None"]);
    let mut other_proxy = service("other", "10.96.0.12", &[port("http", 80, "8080", "TCP")]);
    other_proxy["metadata"]["labels"] = json!({ "service.kubernetes.io/service-proxy-name": "someone-else" });
    let mut objects = lab.web(&lab.ready(&["a"]));
    for (svc, name) in [(headless, "headless"), (other_proxy, "other")] {
        objects.push(svc);
        objects.push(slice(
            &format!("{name}-1"),
            name,
            lab.node.name(),
            &[("http", 8080, "TCP")],
            &lab.ready(&["a"]),
        ));
    }
    lab.cluster.write("all.yaml", &objects);
    let services = lab
        .agent
        .wait_backends(&format!("{VIP}:80/TCP"), &lab.addrs(&["a"], 8080));
    let fronts = services.as_array().expect("rows");
    assert_eq!(fronts.len(), 1, "only web may have a frontend: {services:#}");
    assert!(frontend(&services, "10.96.0.12:80/TCP").is_none(), "{services:#}");
    expect_server(
        ask_tcp(&lab.client.ns, vip(80)),
        "a",
        "the valid Service next to them",
    );
}

#[test]
fn root_invalid_service_is_reported_and_skipped() {
    let lab = Lab::new(SourceKind::Dir, "10.91.6.0/24", &["a"], &[8080]);
    let mut objects = lab.web(&lab.ready(&["a"]));
    objects.push(service(
        "broken",
        "10.96.0.13",
        &[port("http", 80, "8080", "ICMP")],
    ));
    lab.cluster.write("mixed.yaml", &objects);
    lab.cluster
        .dir()
        .write_raw("garbage.yaml", "kind: [unterminated\n");
    let services = lab
        .agent
        .wait_backends(&format!("{VIP}:80/TCP"), &lab.addrs(&["a"], 8080));
    assert!(
        frontend(&services, "10.96.0.13:80/ICMP").is_none(),
        "{services:#}"
    );
    expect_server(
        ask_tcp(&lab.client.ns, vip(80)),
        "a",
        "the valid Service in the same file",
    );
    let log = lab.agent.log_text();
    let reported = |needle: &str| log.lines().any(|l| l.contains("WARN") && l.contains(needle));
    assert!(
        reported("mixed.yaml") && reported("Service default/broken") && reported("ICMP"),
        "the invalid Service is not reported with file, object and reason:\n{log}"
    );
    assert!(
        reported("garbage.yaml"),
        "the unparsable file is not reported:\n{log}"
    );
    // And counted, by kind, on the agent's metrics endpoint.
    let metrics = weir_lab::http_get(&lab.node.ns, "127.0.0.1:9878", "/metrics");
    for line in [
        r#"weir_objects_skipped_total{kind="Service"} 1"#,
        r#"weir_objects_skipped_total{kind="document"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in:\n{metrics}");
    }
}

fn no_endpoints_rejects_quickly(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.7.0/24", &[], &[]);
    let objects = vec![
        service(
            "empty",
            VIP,
            &[port("http", 80, "8080", "TCP"), port("dns", 53, "53", "UDP")],
        ),
        slice(
            "empty-1",
            "empty",
            lab.node.name(),
            &[("http", 8080, "TCP"), ("dns", 53, "UDP")],
            &[],
        ),
    ];
    lab.cluster.write("empty.yaml", &objects);
    lab.agent.wait_services("both frontends, without backends", |s| {
        [format!("{VIP}:80/TCP"), format!("{VIP}:53/UDP")]
            .iter()
            .all(|f| frontend(s, f).is_some_and(|f| f["count"] == 0))
    });
    let start = Instant::now();
    let tcp = TcpSession::connect(&lab.client.ns, vip(80));
    let took = start.elapsed();
    match tcp {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("TCP connect to a Service without endpoints: {e} (want connection refused)"),
        Ok(_) => panic!("TCP connect to a Service without endpoints succeeded"),
    }
    assert!(
        took < Duration::from_secs(1),
        "refusal took {took:?}: a timeout, not a reject"
    );
    let udp = UdpSession::connect(&lab.client.ns, vip(53)).expect("UDP socket");
    match udp.ask() {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!("UDP to a Service without endpoints: {other:?} (want ICMP -> connection refused)"),
    }

    // A flood: answers are rate-limited as the kernel limits its ICMP errors
    // (1,000 a second per CPU after a burst of as many); the rest is dropped.
    let flood = 20_000;
    let sent = lab.client.ns.run(move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        (0..flood)
            .filter(|_| socket.send_to(b"x", vip(53)).is_ok())
            .count()
    });
    let metrics = lab.agent.weirctl(&["metrics"]);
    let limited = weir_lab::agent::counted(
        &metrics,
        "from-pod",
        "service without endpoints, over the rejection rate (dropped)",
    );
    assert!(
        limited > 0 && limited < sent as u64,
        "{limited} of {sent} datagrams dropped over the rejection rate: {metrics:#}"
    );
    // The rate refills: a client later is refused again, at once.
    std::thread::sleep(Duration::from_millis(1_100));
    let start = Instant::now();
    let tcp = TcpSession::connect(&lab.client.ns, vip(80));
    assert!(
        matches!(&tcp, Err(e) if e.kind() == ErrorKind::ConnectionRefused)
            && start.elapsed() < Duration::from_secs(1),
        "after the flood: {:?} in {:?}",
        tcp.err(),
        start.elapsed()
    );
}

fn client_source_ip_is_preserved(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.8.0/24", &["a"], &[8080]);
    lab.cluster.write("web.yaml", &lab.web(&lab.ready(&["a"])));
    lab.agent
        .wait_backends(&format!("{VIP}:80/TCP"), &lab.addrs(&["a"], 8080));
    let a = expect_server(ask_tcp(&lab.client.ns, vip(80)), "a", "TCP");
    assert_eq!(
        a.peer.ip(),
        lab.client.ipv4(),
        "the backend saw {} instead of the client pod",
        a.peer
    );
}

fn hairpin_backend_reaches_its_own_service(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.9.0/24", &["a"], &[8080]);
    lab.cluster.write("web.yaml", &lab.web(&lab.ready(&["a"])));
    lab.agent
        .wait_backends(&format!("{VIP}:80/TCP"), &lab.addrs(&["a"], 8080));
    let a = expect_server(ask_tcp(&lab.pod("a").ns, vip(80)), "a", "hairpin TCP");
    assert_eq!(
        a.peer.ip(),
        IpAddr::from(weir_common_hairpin()),
        "hairpinned traffic must come from the hairpin address"
    );
}

/// `weir_common::HAIRPIN_V4`, without a dependency on the ABI crate.
fn weir_common_hairpin() -> [u8; 4] {
    [169, 254, 42, 1]
}

fn affinity_service(timeout: Option<u32>) -> Value {
    let mut svc = service("sticky", VIP, &[port("http", 80, "8080", "TCP")]);
    if let Some(t) = timeout {
        svc["spec"]["sessionAffinity"] = json!("ClientIP");
        svc["spec"]["sessionAffinityConfig"] = json!({ "clientIP": { "timeoutSeconds": t } });
    }
    svc
}

fn session_affinity_client_ip(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.10.0/24", &["a", "b", "c", "d"], &[8080]);
    let all = ["a", "b", "c", "d"];
    let slice = || {
        slice(
            "sticky-1",
            "sticky",
            lab.node.name(),
            &[("http", 8080, "TCP")],
            &lab.ready(&all),
        )
    };
    let front = format!("{VIP}:80/TCP");
    let affinity = |s: &Value| frontend(s, &front).map(|f| f["affinity_timeout"].clone());

    lab.cluster
        .write("sticky.yaml", &[affinity_service(Some(10_800)), slice()]);
    lab.agent
        .wait_services("affinity 10800", |s| affinity(s) == Some(json!(10_800)));
    let seen = tally_tcp(&lab.client.ns, vip(80), 20);
    assert_eq!(
        seen.len(),
        1,
        "20 connections with ClientIP affinity hit several backends: {seen:?}"
    );

    lab.cluster
        .write("sticky.yaml", &[affinity_service(None), slice()]);
    lab.agent
        .wait_services("affinity off", |s| affinity(s) == Some(Value::Null));
    let seen = tally_tcp(&lab.client.ns, vip(80), 40);
    assert!(
        seen.len() >= 2,
        "affinity off, yet 40 connections all hit one backend: {seen:?}"
    );

    // A 2 s timeout: within it the choice sticks; after > 2 s idle it is free again.
    lab.cluster
        .write("sticky.yaml", &[affinity_service(Some(2)), slice()]);
    lab.agent
        .wait_services("affinity 2", |s| affinity(s) == Some(json!(2)));
    let mut firsts = BTreeMap::<String, usize>::new();
    for round in 0..7 {
        std::thread::sleep(Duration::from_millis(2300));
        let first = ask_tcp(&lab.client.ns, vip(80)).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let again = ask_tcp(&lab.client.ns, vip(80)).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(
            first.server, again.server,
            "round {round}: affinity did not hold within its timeout"
        );
        *firsts.entry(first.server).or_default() += 1;
    }
    // 4 backends, 7 free choices: all alike by chance with probability 4^-6.
    assert!(
        firsts.len() >= 2,
        "after the timeout the client kept its backend every time: {firsts:?}"
    );
}

fn endpoint_conditions_ready_then_terminating_fallback(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.11.0/24", &["a", "b", "c", "d"], &[8080]);
    let front = format!("{VIP}:80/TCP");
    lab.cluster.write(
        "web.yaml",
        &lab.web(&[
            Ep::ready(lab.ip("a")),
            Ep::not_ready(lab.ip("b")),
            Ep::terminating(lab.ip("c")),
        ]),
    );
    lab.agent.wait_backends(&front, &lab.addrs(&["a"], 8080));
    let seen = tally_tcp(&lab.client.ns, vip(80), 20);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["a"],
        "only the ready endpoint may get connections"
    );

    lab.cluster.write(
        "web.yaml",
        &lab.web(&[
            Ep::not_ready(lab.ip("b")),
            Ep::terminating(lab.ip("c")),
            Ep::terminating(lab.ip("d")),
        ]),
    );
    lab.agent.wait_backends(&front, &lab.addrs(&["c", "d"], 8080));
    let seen = tally_tcp(&lab.client.ns, vip(80), 30);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["c", "d"],
        "with none ready, the serving terminating endpoints (and only they) take connections"
    );
}

fn several_slices_per_service_merge(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.12.0/24", &["a", "b", "c"], &[8080]);
    let node = lab.node.name();
    let objects = vec![
        service("web", VIP, &[port("http", 80, "8080", "TCP")]),
        slice("web-1", "web", node, &[("http", 8080, "TCP")], &lab.ready(&["a"])),
        slice(
            "web-2",
            "web",
            node,
            &[("http", 8080, "TCP")],
            &lab.ready(&["b", "c"]),
        ),
    ];
    lab.cluster.write("web.yaml", &objects);
    lab.agent
        .wait_backends(&format!("{VIP}:80/TCP"), &lab.addrs(&["a", "b", "c"], 8080));
    let seen = tally_tcp(&lab.client.ns, vip(80), 60);
    assert_eq!(
        seen.len(),
        3,
        "60 connections did not reach all three backends: {seen:?}"
    );
}

fn established_tcp_keeps_its_backend_when_the_slice_changes(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.13.0/24", &["a", "b"], &[8080]);
    let front = format!("{VIP}:80/TCP");
    lab.cluster.write("web.yaml", &lab.web(&lab.ready(&["a", "b"])));
    lab.agent.wait_backends(&front, &lab.addrs(&["a", "b"], 8080));
    let mut session = TcpSession::connect(&lab.client.ns, vip(80)).expect("connect");
    let first = session.ask().expect("first answer").server;
    let other = if first == "a" { "b" } else { "a" };

    lab.cluster.write("web.yaml", &lab.web(&lab.ready(&[other])));
    lab.agent.wait_backends(&front, &lab.addrs(&[other], 8080));
    let again = session.ask().expect("the open connection must still work");
    assert_eq!(
        again.server, first,
        "the open connection moved to another backend"
    );
    let seen = tally_tcp(&lab.client.ns, vip(80), 10);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        [other],
        "new connections must avoid the removed endpoint"
    );
}

fn udp_flows_to_a_removed_endpoint_are_flushed(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.14.0/24", &["a", "b"], &[5353]);
    let front = format!("{VIP}:53/UDP");
    let objects = |names: &[&str]| {
        vec![
            service("dns", VIP, &[port("dns", 53, "5353", "UDP")]),
            slice(
                "dns-1",
                "dns",
                lab.node.name(),
                &[("dns", 5353, "UDP")],
                &lab.ready(names),
            ),
        ]
    };
    lab.cluster.write("dns.yaml", &objects(&["a", "b"]));
    lab.agent.wait_backends(&front, &lab.addrs(&["a", "b"], 5353));
    let session = UdpSession::connect(&lab.client.ns, vip(53)).expect("UDP socket");
    let first = session.ask().expect("first answer").server;
    let other = if first == "a" { "b" } else { "a" };

    lab.cluster.write("dns.yaml", &objects(&[other]));
    lab.agent.wait_backends(&front, &lab.addrs(&[other], 5353));
    // The flush follows the map update: wait until no entry points at the old one.
    let gone = format!("{}:5353", lab.ip(&first));
    let deadline = Instant::now() + weir_lab::services::SYNC_TIMEOUT;
    loop {
        let ct = lab.agent.weirctl(&["conntrack"]);
        let rows = ct.as_array().expect("rows");
        if !rows
            .iter()
            .any(|r| r["nat"] == gone.as_str() || r["source"] == gone.as_str())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "conntrack still points at {gone}: {ct:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let next = session.ask().expect("the next datagram on the same socket");
    assert_eq!(
        next.server, other,
        "the UDP flow still goes to the removed endpoint"
    );
}

fn ports_and_service_recreation_apply_live(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.15.0/24", &["a"], &[8080, 5353]);
    let node = lab.node.name().to_owned();
    let write = |ip: &str, ports: &[Value], slice_ports: &[(&str, u16, &str)]| {
        lab.cluster.write(
            "svc.yaml",
            &[
                service("svc", ip, ports),
                slice("svc-1", "svc", &node, slice_ports, &lab.ready(&["a"])),
            ],
        );
    };
    write(VIP, &[port("http", 80, "8080", "TCP")], &[("http", 8080, "TCP")]);
    lab.agent
        .wait_backends(&format!("{VIP}:80/TCP"), &lab.addrs(&["a"], 8080));

    // A port added.
    write(
        VIP,
        &[port("http", 80, "8080", "TCP"), port("dns", 53, "5353", "UDP")],
        &[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
    );
    lab.agent
        .wait_backends(&format!("{VIP}:53/UDP"), &lab.addrs(&["a"], 5353));
    expect_server(ask_udp(&lab.client.ns, vip(53)), "a", "added UDP port");

    // A port removed.
    write(VIP, &[port("dns", 53, "5353", "UDP")], &[("dns", 5353, "UDP")]);
    lab.agent.wait_no_frontend(&format!("{VIP}:80/TCP"));
    expect_server(ask_udp(&lab.client.ns, vip(53)), "a", "remaining UDP port");

    // Deleted, then created again under the same name with a new cluster IP.
    lab.cluster.remove("svc.yaml");
    lab.agent
        .wait_services("no frontends", |s| s.as_array().is_some_and(Vec::is_empty));
    write(
        "10.96.0.20",
        &[port("http", 80, "8080", "TCP")],
        &[("http", 8080, "TCP")],
    );
    lab.agent
        .wait_backends("10.96.0.20:80/TCP", &lab.addrs(&["a"], 8080));
    expect_server(
        ask_tcp(&lab.client.ns, "10.96.0.20:80".parse().expect("addr")),
        "a",
        "recreated Service",
    );
}

fn new_connections_spread_evenly(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.16.0/24", &["a", "b", "c"], &[8080]);
    lab.cluster
        .write("web.yaml", &lab.web(&lab.ready(&["a", "b", "c"])));
    lab.agent
        .wait_backends(&format!("{VIP}:80/TCP"), &lab.addrs(&["a", "b", "c"], 8080));
    let n = 1200;
    let seen = tally_tcp(&lab.client.ns, vip(80), n);
    // Each share is Binomial(1200, 1/3): sd 1.4 %, so 25 %..42 % is > 5 sd away.
    for name in ["a", "b", "c"] {
        let share = seen.get(name).copied().unwrap_or(0) as f64 / n as f64;
        assert!(
            (0.25..=0.42).contains(&share),
            "{name} got {:.1} % of {n} connections: {seen:?}",
            share * 100.0
        );
    }
}

fn agent_restart_keeps_services_and_ids(kind: SourceKind) {
    let mut lab = Lab::new(kind, "10.91.17.0/24", &["a", "b"], &[8080]);
    let front = format!("{VIP}:80/TCP");
    lab.cluster.write("web.yaml", &lab.web(&lab.ready(&["a", "b"])));
    let before = lab.agent.wait_backends(&front, &lab.addrs(&["a", "b"], 8080));
    let backends_before = lab.agent.weirctl(&["backends"]);

    let load = ConnectionLoad::start(&lab.client.ns, |ns| ask_tcp(ns, vip(80)).map(|_| ()));
    std::thread::sleep(Duration::from_millis(300));
    lab.agent.kill();
    std::thread::sleep(Duration::from_millis(300));
    let node_name = lab.node.name().to_owned();
    lab.agent.restart(&node_name);
    // The restarted agent has read the maps back and synced once.
    lab.agent.wait_services("the restarted agent's first sync", |_| {
        lab.agent.log_text().matches("services synced").count() >= 2
    });
    std::thread::sleep(Duration::from_millis(300));
    load.stop_and_assert_none_failed("across the restart");

    let after = lab.agent.weirctl(&["services"]);
    assert_eq!(
        before, after,
        "the restart changed the service map (ids or slots)"
    );
    assert_eq!(
        backends_before,
        lab.agent.weirctl(&["backends"]),
        "the restart changed backend ids"
    );
    let last_sync = lab
        .agent
        .log_text()
        .lines()
        .rfind(|l| l.contains("services synced"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        last_sync.contains("writes=0") && last_sync.contains("deletes=0"),
        "the restarted agent rewrote maps that were already right: {last_sync}"
    );
}

/// Which server answered a connection from each client port (fixed source ports,
/// closed with a RST so that they can be reused at once).
fn tally_by_port(lab: &Lab, ports: std::ops::Range<u16>) -> BTreeMap<u16, String> {
    ports
        .map(|p| {
            let from = SocketAddr::new(lab.client.ipv4(), p);
            let a = ask_tcp_from(&lab.client.ns, from, vip(80))
                .unwrap_or_else(|e| panic!("connection from {from} to {}: {e}", vip(80)));
            (p, a.server)
        })
        .collect()
}

/// Waits until no conntrack entry is live, so that the next connections from the
/// same tuples are new flows (a closing TCP entry lives 10 s after the RST).
fn wait_conntrack_idle(agent: &Agent) {
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let ct = agent.weirctl(&["conntrack"]);
        let live = ct
            .as_array()
            .expect("rows")
            .iter()
            // Whole seconds, truncated: 0 may still be live.
            .filter(|r| r["seconds_left"].as_i64().is_some_and(|s| s >= 0))
            .count();
        if live == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{live} conntrack entries still live: {ct:#}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn maglev_spreads_and_keeps_surviving_flows_on_their_backend(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.18.0/24", &["a", "b", "c"], &[8080]);
    let front = format!("{VIP}:80/TCP");
    let write = |names: &[&str]| {
        let mut objects = lab.web(&lab.ready(names));
        objects[0]["metadata"]["annotations"] = json!({ "weir.dev/lb-algorithm": "maglev" });
        lab.cluster.write("web.yaml", &objects);
    };
    write(&["a", "b", "c"]);
    lab.agent
        .wait_backends(&front, &lab.addrs(&["a", "b", "c"], 8080));
    let services = lab.agent.wait_services("the Maglev table", |s| {
        frontend(s, &front).is_some_and(|f| f["algorithm"] == "maglev")
    });
    let f = frontend(&services, &front).expect("frontend");
    assert!(
        f["flags"]
            .as_array()
            .is_some_and(|fl| fl.contains(&json!("maglev"))),
        "{f:#}"
    );

    // (a) Many client ports spread over every backend.
    let ports = 42_000..42_150;
    let n = ports.len();
    let before = tally_by_port(&lab, ports.clone());
    let mut shares = BTreeMap::<&str, usize>::new();
    for server in before.values() {
        *shares.entry(server.as_str()).or_default() += 1;
    }
    // Each share is about Binomial(150, 1/3): sd 5.8, so 25 connections is > 4 sd off.
    assert_eq!(
        shares.len(),
        3,
        "{n} client ports did not reach all three backends: {shares:?}"
    );
    assert!(shares.values().all(|&c| c >= 25), "uneven spread: {shares:?}");

    // (b) One backend removed: flows from the same (client IP, port) that went to
    // a surviving backend still go to it (Maglev moves only the removed one's).
    let removed = "c";
    write(&["a", "b"]);
    lab.agent.wait_backends(&front, &lab.addrs(&["a", "b"], 8080));
    wait_conntrack_idle(&lab.agent);
    let after = tally_by_port(&lab, ports);
    assert!(
        after.values().all(|s| s != removed),
        "new connections reached the removed backend: {after:?}"
    );
    let survivors: Vec<u16> = before
        .iter()
        .filter(|(_, s)| s.as_str() != removed)
        .map(|(p, _)| *p)
        .collect();
    let kept = survivors.iter().filter(|p| before[p] == after[p]).count();
    assert!(
        kept * 100 > survivors.len() * 90,
        "only {kept} of {} flows on surviving backends kept their backend",
        survivors.len()
    );
    eprintln!(
        "maglev: {shares:?} over {n} ports; {kept}/{} surviving flows kept their backend",
        survivors.len()
    );
}

fn ipv6_and_dual_stack_clusterips(kind: SourceKind) {
    const VIP6: &str = "fd00:96::10";
    const EMPTY6: &str = "fd00:96::11";
    let cluster = Cluster::new(kind);
    let mut node =
        Node::with_ranges(json!([[{ "subnet": "10.91.30.0/24" }], [{ "subnet": "fd00:10:91:30::/64" }]]));
    let agent = node.start_agent_for(&cluster);
    let a = node.add_pod("a");
    let client = node.add_pod("client");
    let _servers = [
        WhoAmI::start(&a.ns, "a", a.ipv4(), &[8080]),
        WhoAmI::start(&a.ns, "a", a.ipv6(), &[8080]),
    ];
    let ports = [port("http", 80, "8080", "TCP"), port("dns", 53, "8080", "UDP")];
    let slice_ports = [("http", 8080, "TCP"), ("dns", 8080, "UDP")];
    cluster.write(
        "web.yaml",
        &[
            service_with_ips("web", &[VIP, VIP6], &ports),
            slice("web-v4", "web", node.name(), &slice_ports, &[Ep::ready(a.ipv4())]),
            slice("web-v6", "web", node.name(), &slice_ports, &[Ep::ready(a.ipv6())]),
            service_with_ips("empty", &[EMPTY6], &ports),
        ],
    );
    let front6 = |port: u16, proto: &str| format!("[{VIP6}]:{port}/{proto}");
    let backend6 = vec![format!("[{}]:8080", a.ipv6())];
    agent.wait_backends(&front6(80, "TCP"), &backend6);
    agent.wait_backends(&front6(53, "UDP"), &backend6);
    agent.wait_backends(&format!("{VIP}:80/TCP"), &[format!("{}:8080", a.ipv4())]);
    agent.wait_backends(&format!("[{EMPTY6}]:80/TCP"), &[]);

    let vip6 = |port| SocketAddr::new(VIP6.parse().expect("VIP6"), port);
    // Both families of the one Service, the client's own address preserved.
    let answer = expect_server(ask_tcp(&client.ns, vip6(80)), "a", "TCP to the IPv6 ClusterIP");
    assert_eq!(
        answer.peer.ip(),
        client.ipv6(),
        "the backend sees the client's IPv6 address"
    );
    let answer = expect_server(ask_udp(&client.ns, vip6(53)), "a", "UDP to the IPv6 ClusterIP");
    assert_eq!(answer.peer.ip(), client.ipv6());
    expect_server(
        ask_tcp(&client.ns, vip(80)),
        "a",
        "TCP to the IPv4 ClusterIP of the same Service",
    );
    // Hairpin over IPv6: the backend reaches itself through its Service.
    expect_server(ask_tcp(&a.ns, vip6(80)), "a", "hairpin over IPv6");
    // No endpoints: refused (ICMPv6 port unreachable), not a timeout. A TCP
    // connect may take one SYN retransmission (1 s): the ICMPv6 error for the
    // first SYN can reach the socket while connect() still holds it, and Linux
    // drops it then (TcpExtLockDroppedIcmps).
    let empty = |port| SocketAddr::new(EMPTY6.parse().expect("EMPTY6"), port);
    let started = Instant::now();
    let err = ask_tcp(&client.ns, empty(80)).expect_err("a Service without endpoints must refuse");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused only after {:?}",
        started.elapsed()
    );
    let err = ask_udp(&client.ns, empty(53)).expect_err("a Service without endpoints must refuse");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "UDP: {err}");
}

/// A flow translated through a ClusterIP and closed never captures a direct
/// flow from the same client port to its backend (the kernel reuses source
/// ports freely across destinations): the backend's SYN-ACK of the new direct
/// connection must not be made to come from the frontend, nor its UDP answers.
fn a_closed_translated_flow_never_captures_a_direct_one(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.20.0/24", &["a", "b"], &[8080]);
    let web = |eps: &[&str]| {
        vec![
            service(
                "web",
                VIP,
                &[port("http", 80, "8080", "TCP"), port("dns", 53, "8080", "UDP")],
            ),
            slice(
                "web-x1",
                "web",
                lab.node.name(),
                &[("http", 8080, "TCP"), ("dns", 8080, "UDP")],
                &lab.ready(eps),
            ),
        ]
    };
    lab.cluster.write("web.yaml", &web(&["a"]));
    lab.agent
        .wait_backends(&format!("{VIP}:80/TCP"), &lab.addrs(&["a"], 8080));
    lab.agent
        .wait_backends(&format!("{VIP}:53/UDP"), &lab.addrs(&["a"], 8080));
    let client = lab.client.ipv4();
    let direct = SocketAddr::new(lab.ip("a"), 8080);

    // TCP: through the ClusterIP (closed with a RST), then straight to the backend.
    for p in 41_000..41_020 {
        let from = SocketAddr::new(client, p);
        expect_server(
            ask_tcp_from(&lab.client.ns, from, vip(80)),
            "a",
            &format!("{from} -> ClusterIP"),
        );
    }
    for p in 41_000..41_020 {
        let from = SocketAddr::new(client, p);
        let a = expect_server(
            ask_tcp_from(&lab.client.ns, from, direct),
            "a",
            &format!("{from} -> {direct} after the ClusterIP"),
        );
        assert_eq!(a.peer, from, "the backend saw another source");
    }
    // UDP: a datagram through the ClusterIP, then one straight to the backend.
    for p in 42_000..42_020 {
        let from = SocketAddr::new(client, p);
        expect_server(
            ask_udp_from(&lab.client.ns, from, vip(53)),
            "a",
            &format!("{from} -> ClusterIP/UDP"),
        );
        expect_server(
            ask_udp_from(&lab.client.ns, from, direct),
            "a",
            &format!("{from} -> {direct}/UDP after the ClusterIP"),
        );
        // And back through the ClusterIP: a new translated flow again.
        expect_server(
            ask_udp_from(&lab.client.ns, from, vip(53)),
            "a",
            &format!("{from} -> ClusterIP/UDP again"),
        );
    }

    // A reused port that the load balancer sent to another backend leaves the
    // first backend's reply entry behind: it must not capture a direct flow to
    // that backend either.
    lab.cluster.write("web.yaml", &web(&["a", "b"]));
    lab.agent
        .wait_backends(&format!("{VIP}:80/TCP"), &lab.addrs(&["a", "b"], 8080));
    let mut checked = 0;
    for p in 43_000..43_200 {
        let from = SocketAddr::new(client, p);
        let first = ask_tcp_from(&lab.client.ns, from, vip(80)).expect("first").server;
        let second = ask_tcp_from(&lab.client.ns, from, vip(80))
            .expect("second")
            .server;
        if first == second {
            continue;
        }
        let to = SocketAddr::new(lab.ip(&first), 8080);
        expect_server(
            ask_tcp_from(&lab.client.ns, from, to),
            &first,
            &format!("{from} -> {to} after a move"),
        );
        checked += 1;
        if checked == 5 {
            break;
        }
    }
    assert_eq!(checked, 5, "the load balancer never moved a reused port");
}

/// The value of the series `series` (name and labels, exactly as rendered).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The sum of `name`'s series whose labels hold every one of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?.strip_prefix('{')?;
            labels
                .iter()
                .all(|want| rest.contains(want))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn metrics_say_what_is_programmed_dropped_and_how_long_it_took(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.31.0/24", &["a", "b"], &[8080]);
    const EMPTY: &str = "10.96.0.11";
    // The EndpointSlice controller stamps when the change it carries began
    // (RFC 3339, to the nanosecond).
    let now = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%NZ"])
        .output()
        .expect("date");
    let now = String::from_utf8_lossy(&now.stdout).trim().to_owned();
    // b is isolated below: the Service's one backend is a.
    let mut objects = lab.web(&lab.ready(&["a"]));
    weir_lab::services::merge(
        &mut objects[1],
        &json!({ "metadata": { "annotations": {
            "endpoints.kubernetes.io/last-change-trigger-time": now } } }),
    );
    objects.push(service("empty", EMPTY, &[port("http", 80, "8080", "TCP")]));
    objects.push(slice(
        "empty-1",
        "empty",
        lab.node.name(),
        &[("http", 8080, "TCP")],
        &[],
    ));
    // b is isolated: nothing may reach it.
    objects.push(weir_lab::services::pod(
        "default",
        "b",
        json!({ "app": "b" }),
        lab.node.name(),
        &[lab.ip("b")],
        json!([]),
    ));
    objects.push(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": { "name": "b-alone", "namespace": "default" },
        "spec": { "podSelector": { "matchLabels": { "app": "b" } }, "policyTypes": ["Ingress"] },
    }));
    lab.cluster.write("web.yaml", &objects);
    lab.agent.wait_services("web with a backend, empty without", |s| {
        frontend(s, &format!("{VIP}:80/TCP")).is_some_and(|f| f["count"] == 1)
            && frontend(s, &format!("{EMPTY}:80/TCP")).is_some_and(|f| f["count"] == 0)
    });
    lab.agent
        .wait_get("127.0.0.1:9878", "/metrics", "shows the policy synced", |_, m| {
            metric(m, "weir_isolated_endpoints") == Some(1.0)
        });

    // Traffic: translated connections, a rejection, a policy drop.
    let seen = tally_tcp(&lab.client.ns, vip(80), 6);
    assert_eq!(seen.values().sum::<usize>(), 6);
    let refused = TcpSession::connect(&lab.client.ns, SocketAddr::new(EMPTY.parse().expect("ip"), 80));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused),
        "a Service without endpoints: {:?}",
        refused.map(|_| ())
    );
    let to_b = SocketAddr::new(lab.ip("b"), 8080);
    assert!(ask_tcp(&lab.client.ns, to_b).is_err(), "b is isolated");

    // The GC pass (every 5 s) counts conntrack and the small maps.
    let (_, text) = lab
        .agent
        .wait_get("127.0.0.1:9878", "/metrics", "counts conntrack", |_, m| {
            metric(m, &format!(r#"weir_map_entries{{map="{}"}}"#, names::CONNTRACK)).is_some_and(|n| n > 0.0)
                && metric(m, "weir_endpoints").is_some_and(|n| n > 0.0)
        });

    // What is programmed, and the maps' fill, agree with the maps themselves.
    let views = |view: &str| lab.agent.weirctl(&[view]).as_array().map_or(0, Vec::len) as f64;
    let entries = |map: &str| metric(&text, &format!(r#"weir_map_entries{{map="{map}"}}"#));
    assert_eq!(metric(&text, "weir_frontends"), Some(2.0), "{text}");
    assert_eq!(metric(&text, "weir_backends"), Some(1.0), "{text}");
    assert_eq!(entries(names::REVNAT), Some(2.0), "{text}");
    assert_eq!(entries(names::BACKENDS), Some(views("backends")), "{text}");
    assert_eq!(
        metric(&text, "weir_endpoints"),
        Some(views("endpoints")),
        "{text}"
    );
    assert_eq!(entries(names::ENDPOINTS), Some(views("endpoints")), "{text}");
    assert_eq!(entries(names::IPCACHE), Some(views("ipcache")), "{text}");
    assert_eq!(metric(&text, "weir_policies"), Some(1.0), "{text}");
    assert_eq!(
        metric(
            &text,
            &format!(r#"weir_map_capacity{{map="{}"}}"#, names::CONNTRACK)
        ),
        Some(f64::from(names::CONNTRACK_ENTRIES)),
        "{text}"
    );
    // The datapath's counters: forwarded packets, and each drop by its reason.
    assert!(
        metric_sum(&text, "weir_datapath_packets_total", &[r#"reason="forwarded""#]) >= 6.0,
        "{text}"
    );
    assert!(
        metric_sum(&text, "weir_drops_total", &[r#"reason="no_backend""#]) >= 1.0,
        "{text}"
    );
    assert!(
        metric_sum(&text, "weir_drops_total", &[r#"reason="policy_ingress""#]) >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "weir_drops_total", &[r#"reason="forwarded""#]),
        0.0,
        "{text}"
    );
    // Syncs and their latency: the slice's change reached the maps within
    // seconds of its trigger.
    assert!(
        metric(&text, r#"weir_sync_duration_seconds_count{kind="services"}"#) >= Some(1.0),
        "{text}"
    );
    assert!(
        metric(&text, r#"weir_sync_duration_seconds_count{kind="policy"}"#) >= Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "weir_network_programming_duration_seconds_count"),
        Some(1.0),
        "{text}"
    );
    let latency = metric(&text, "weir_network_programming_duration_seconds_sum").expect("sum");
    assert!(
        (0.0..30.0).contains(&latency),
        "network programming took {latency} s"
    );
    // Each pod registered once by the CNI plugin, and the process's own figures.
    assert_eq!(
        metric(&text, r#"weir_cni_requests_total{op="add",result="ok"}"#),
        Some(3.0),
        "{text}"
    );
    assert!(
        metric(&text, "process_resident_memory_bytes").is_some_and(|b| b > 1e6),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "not OpenMetrics: {text}");
    alert_rules_name_only_exported_metrics(&text);
}

/// Every metric the shipped alerting rules read is one the agent exports
/// (a rule on a misspelt metric never fires).
fn alert_rules_name_only_exported_metrics(text: &str) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/monitoring/weir-alerts.rules.yaml"
    );
    let rules: Value = serde_saphyr::from_str(&std::fs::read_to_string(path).expect("rules")).expect("YAML");
    let rules = rules["groups"][0]["rules"].as_array().expect("rules");
    assert!(rules.len() >= 5, "{rules:?}");
    for rule in rules {
        let expr = rule["expr"].as_str().expect("expr");
        assert!(
            rule["alert"].is_string() && rule["labels"]["severity"].is_string(),
            "{rule}"
        );
        let names = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("weir_"));
        let mut any = false;
        for name in names {
            any = true;
            let base = ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            assert!(
                text.lines().any(|l| l.starts_with(&format!("# TYPE {base} "))),
                "rule {} reads {name}, which the agent does not export",
                rule["alert"]
            );
        }
        assert!(any, "rule {} reads no Weir metric", rule["alert"]);
    }
}

/// `weir-agent compile` of the directory a running agent reads is what that
/// agent wrote to its maps (numbers aside: a running agent keeps those it
/// gave), as `weirctl` reads them back.
#[test]
fn root_dir_compile_offline_is_what_the_agent_wrote() {
    let lab = Lab::new(SourceKind::Dir, "10.91.32.0/24", &["a", "b", "c"], &[8080]);
    let mut web = service("web", VIP, &[port("http", 80, "8080", "TCP")]);
    web["spec"]["sessionAffinity"] = json!("ClientIP");
    let mut mag = service(
        "mag",
        "10.96.0.12",
        &[port("http", 80, "8080", "TCP"), port("dns", 53, "8080", "UDP")],
    );
    mag["metadata"]["annotations"] = json!({ "weir.dev/lb-algorithm": "maglev" });
    let mut edge = service("edge", "10.96.0.15", &[port("http", 80, "8080", "TCP")]);
    edge["spec"]["type"] = json!("LoadBalancer");
    edge["spec"]["loadBalancerSourceRanges"] = json!(["198.51.100.0/24", "203.0.113.9/32"]);
    edge["status"] = json!({ "loadBalancer": { "ingress": [{ "ip": "192.0.2.80" }] } });
    let labels = |name: &str| json!({ "app": name });
    let mut objects = vec![
        web,
        slice(
            "web-1",
            "web",
            lab.node.name(),
            &[("http", 8080, "TCP")],
            &lab.ready(&["a", "b"]),
        ),
        mag,
        slice(
            "mag-1",
            "mag",
            lab.node.name(),
            &[("http", 8080, "TCP"), ("dns", 8080, "UDP")],
            &[Ep::ready(lab.ip("a")), Ep::terminating(lab.ip("c"))],
        ),
        service("empty", "10.96.0.13", &[port("http", 80, "8080", "TCP")]),
        edge,
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": { "name": "b-from-a", "namespace": "default" },
            "spec": {
                "podSelector": { "matchLabels": { "app": "b" } },
                "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "app": "a" } } },
                                       { "ipBlock": { "cidr": "192.0.2.0/24" } }],
                              "ports": [{ "port": 8080 }] }],
                "egress": [{ "ports": [{ "port": 53, "protocol": "UDP" }] }],
            },
        }),
    ];
    for name in ["a", "b", "c"] {
        objects.push(weir_lab::services::pod(
            "default",
            name,
            labels(name),
            lab.node.name(),
            &[lab.ip(name)],
            json!([]),
        ));
    }
    lab.cluster.write("cluster.yaml", &objects);
    lab.agent.wait_services("three Services", |s| {
        frontend(s, &format!("{VIP}:80/TCP")).is_some_and(|f| f["count"] == 2)
            && frontend(s, "10.96.0.12:53/UDP").is_some_and(|f| f["count"] == 1)
            && frontend(s, "10.96.0.13:80/TCP").is_some()
            && frontend(s, "192.0.2.80:80/TCP").is_some()
    });
    // The policy maps are synced when the isolated pod shows.
    let deadline = Instant::now() + Duration::from_secs(20);
    while lab
        .agent
        .weirctl(&["policy"])
        .as_array()
        .is_none_or(|r| r.len() < 2)
    {
        assert!(Instant::now() < deadline, "policy never synced");
        std::thread::sleep(Duration::from_millis(100));
    }

    let out = std::process::Command::new(weir_lab::bins::path("weir-agent"))
        .args(["compile", "-o", "json", "--node", lab.node.name(), "--source"])
        .arg(format!("dir:{}", lab.cluster.dir().path().display()))
        .output()
        .expect("weir-agent compile");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let compiled: Value = serde_json::from_slice(&out.stdout).expect("JSON");

    // Each view without its numbers, sorted.
    let strip = |rows: &Value, numbers: &[&str]| -> Vec<Value> {
        let mut rows: Vec<Value> = rows
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                let mut r = r.clone();
                let o = r.as_object_mut().expect("row");
                for n in numbers {
                    o.remove(*n);
                }
                o.remove("service");
                if let Some(slots) = o.get_mut("backends").and_then(Value::as_array_mut) {
                    for slot in slots {
                        slot.as_object_mut().expect("slot").remove("id");
                    }
                }
                r
            })
            .collect();
        rows.sort_by_key(ToString::to_string);
        rows
    };
    for (view, section, numbers) in [
        ("services", "services", &["rev_nat_id"][..]),
        ("backends", "backends", &["id"][..]),
        ("policy", "policy", &["endpoint_id", "identity"][..]),
        ("ipcache", "ipcache", &["identity"][..]),
        ("source-ranges", "source_ranges", &["rev_nat_id"][..]),
    ] {
        let live = strip(&lab.agent.weirctl(&[view]), numbers);
        let offline = strip(&compiled[section], numbers);
        assert!(!offline.is_empty(), "{view}: nothing compiled");
        assert_eq!(
            live, offline,
            "{view}: the maps (left) and the offline compile (right) differ"
        );
    }
    assert_eq!(compiled["skipped"], json!([]));
}

/// The name table the agent keeps beside its pins, read as it is.
fn name_table(agent: &weir_lab::Agent) -> weir_agent::ctl::NameTable {
    let pins = weir_agent::datapath::PinLayout::new(agent.bpffs_root.clone());
    weir_agent::datapath::names::Names::open(&pins)
        .expect("the name table is pinned")
        .read()
        .expect("readable")
}

fn views_name_services_and_pods_while_the_agent_is_down_too(kind: SourceKind) {
    let mut lab = Lab::new(kind, "10.91.33.0/24", &["a", "b"], &[8080]);
    const API: &str = "10.96.0.14";
    let mut objects = lab.web(&lab.ready(&["a", "b"]));
    objects.push(service("api", API, &[port("http", 80, "8080", "TCP")]));
    objects.push(slice(
        "api-1",
        "api",
        lab.node.name(),
        &[("http", 8080, "TCP")],
        &lab.ready(&["a"]),
    ));
    lab.cluster.write("web.yaml", &objects);
    let named = |services: &Value, front: &str, want: &str| {
        frontend(services, front).is_some_and(|f| f["service"] == want)
    };
    lab.agent.wait_services("both Services named", |s| {
        named(s, &format!("{VIP}:80/TCP"), "default/web") && named(s, &format!("{API}:80/TCP"), "default/api")
    });
    // Pods by the names the runtime gave weir-cni (K8S_POD_NAMESPACE/NAME).
    let pod_of = |view: &Value, key: &str, value: &str| -> Option<String> {
        view.as_array()?
            .iter()
            .find(|r| r[key] == value)
            .and_then(|r| r["pod"].as_str().map(str::to_owned))
    };
    let endpoints = lab.agent.weirctl(&["endpoints"]);
    for name in ["a", "b", "client"] {
        let ip = if name == "client" {
            lab.client.ipv4()
        } else {
            lab.ip(name)
        };
        assert_eq!(
            pod_of(&endpoints, "ip", &ip.to_string()),
            Some(format!("default/{name}")),
            "{endpoints:#}"
        );
    }
    let backends = lab.agent.weirctl(&["backends"]);
    assert_eq!(
        pod_of(&backends, "address", &format!("{}:8080", lab.ip("b"))),
        Some("default/b".to_owned()),
        "{backends:#}"
    );
    // A translated flow and an affinity-free frontend: conntrack names the Service.
    expect_server(
        ask_tcp(&lab.client.ns, SocketAddr::new(API.parse().expect("ip"), 80)),
        "a",
        "api",
    );
    let conntrack = lab.agent.weirctl(&["conntrack"]);
    assert!(
        conntrack
            .as_array()
            .expect("rows")
            .iter()
            .any(|r| r["service"] == "default/api"),
        "{conntrack:#}"
    );
    let table = std::process::Command::new(weir_lab::bins::path("weirctl"))
        .arg("--bpffs-root")
        .arg(&lab.agent.bpffs_root)
        .arg("services")
        .output()
        .expect("weirctl");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("SERVICE") && table.contains("default/web"),
        "{table}"
    );

    // A Service removed: its frontend's name goes with it.
    let web_id = frontend(&lab.agent.weirctl(&["services"]), &format!("{VIP}:80/TCP"))
        .map(|f| f["rev_nat_id"].as_u64().expect("id") as u32)
        .expect("web");
    lab.cluster.write("web.yaml", &objects[2..]);
    lab.agent.wait_no_frontend(&format!("{VIP}:80/TCP"));
    let names = name_table(&lab.agent);
    assert_eq!(
        names.service(web_id),
        None,
        "the removed Service's name stays: {names:?}"
    );
    assert_eq!(names.frontends.len(), 1, "{names:?}");

    // A pod deleted: its name goes with it.
    let del = lab.node.del_pod(lab.pod("b"));
    assert_eq!(del.exit_code, 0, "DEL of b: {}", del.stderr);
    assert_eq!(name_table(&lab.agent).pods.get(&lab.ip("b")), None);

    // With the agent down, the views still say who is who.
    lab.agent.kill();
    let services = lab.agent.weirctl(&["services"]);
    assert!(
        named(&services, &format!("{API}:80/TCP"), "default/api"),
        "{services:#}"
    );
    let endpoints = lab.agent.weirctl(&["endpoints"]);
    assert_eq!(
        pod_of(&endpoints, "ip", &lab.ip("a").to_string()),
        Some("default/a".to_owned())
    );
}

/// `weirctl explain` of a flow.
fn explain(agent: &weir_lab::Agent, src: &str, dst: &str, sport: Option<u16>) -> Value {
    let mut args = vec!["explain", src, dst];
    let sport = sport.map(|p| p.to_string());
    if let Some(p) = &sport {
        args.extend(["--sport", p]);
    }
    agent.weirctl(&args)
}

/// The backend addresses `explain` says the flow may go to, and the one it goes to if known.
fn explained_paths(e: &Value) -> (Vec<String>, Option<String>) {
    let paths = e["paths"].as_array().expect("paths");
    let all = paths
        .iter()
        .map(|p| p["destination"].as_str().expect("dst").to_owned())
        .collect();
    let chosen: Vec<String> = paths
        .iter()
        .filter(|p| p["chosen"] == true)
        .map(|p| p["destination"].as_str().expect("dst").to_owned())
        .collect();
    (all, (chosen.len() == 1).then(|| chosen[0].clone()))
}

/// For flows of every kind, `explain`'s answer is what real packets then do:
/// the candidates a connection lands on, a refusal, a policy drop, Maglev's
/// backend for a given source port, an affinity entry's backend.
fn explain_says_what_the_packets_do(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.34.0/24", &["a", "b", "c"], &[8080]);
    const MAG: &str = "10.96.0.15";
    const EMPTY: &str = "10.96.0.16";
    const STICKY: &str = "10.96.0.17";
    let mut objects = lab.web(&lab.ready(&["a", "b"]));
    let mut mag = service("mag", MAG, &[port("http", 80, "8080", "TCP")]);
    mag["metadata"]["annotations"] = json!({ "weir.dev/lb-algorithm": "maglev" });
    let mut sticky = service("sticky", STICKY, &[port("http", 80, "8080", "TCP")]);
    sticky["spec"]["sessionAffinity"] = json!("ClientIP");
    let ports = [("http", 8080, "TCP")];
    objects.extend([
        mag,
        slice(
            "mag-1",
            "mag",
            lab.node.name(),
            &ports,
            &lab.ready(&["a", "b", "c"]),
        ),
        sticky,
        slice(
            "sticky-1",
            "sticky",
            lab.node.name(),
            &ports,
            &lab.ready(&["a", "b"]),
        ),
        service("empty", EMPTY, &[port("http", 80, "8080", "TCP")]),
        slice("empty-1", "empty", lab.node.name(), &ports, &[]),
        weir_lab::services::pod(
            "default",
            "c",
            json!({ "app": "c" }),
            lab.node.name(),
            &[lab.ip("c")],
            json!([]),
        ),
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": { "name": "c-alone", "namespace": "default" },
            "spec": { "podSelector": { "matchLabels": { "app": "c" } }, "policyTypes": ["Ingress"] },
        }),
    ]);
    lab.cluster.write("all.yaml", &objects);
    lab.agent.wait_services("four Services", |s| {
        frontend(s, &format!("{MAG}:80/TCP")).is_some_and(|f| f["algorithm"] == "maglev" && f["count"] == 3)
            && frontend(s, &format!("{STICKY}:80/TCP")).is_some_and(|f| f["count"] == 2)
            && frontend(s, &format!("{EMPTY}:80/TCP")).is_some()
            && frontend(s, &format!("{VIP}:80/TCP")).is_some_and(|f| f["count"] == 2)
    });
    let client = lab.client.ipv4().to_string();
    let c = format!("{}:8080", lab.ip("c"));
    // The policy is in force once explain's own reading says c is isolated.
    let deadline = Instant::now() + Duration::from_secs(20);
    while explain(&lab.agent, &client, &c, None)["paths"][0]["ingress"]["verdict"] != "denied" {
        assert!(Instant::now() < deadline, "c never isolated");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A ClusterIP of two backends: a random one, both admitted, named.
    let e = explain(&lab.agent, "default/client", &format!("{VIP}:80"), None);
    assert_eq!(e["frontend"]["service"], "default/web", "{e:#}");
    assert_eq!(e["verdict"], "admitted", "{e:#}");
    let (candidates, chosen) = explained_paths(&e);
    assert_eq!(chosen, None, "random: no one backend: {e:#}");
    let mut want = lab.addrs(&["a", "b"], 8080);
    want.sort();
    let mut got = candidates.clone();
    got.sort();
    assert_eq!(got, want);
    for _ in 0..6 {
        let a = ask_tcp(&lab.client.ns, vip(80)).expect("web");
        assert!(
            candidates.contains(&format!("{}:8080", lab.ip(&a.server))),
            "{} not a candidate",
            a.server
        );
    }

    // No endpoints: refused, as explained.
    let e = explain(&lab.agent, &client, &format!("{EMPTY}:80"), None);
    assert!(
        e["verdict"].as_str().is_some_and(|v| v.starts_with("rejected")),
        "{e:#}"
    );
    let refused = TcpSession::connect(&lab.client.ns, SocketAddr::new(EMPTY.parse().expect("ip"), 80));
    assert!(refused.is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused));

    // Straight to the isolated pod: denied at its ingress, and no answer.
    let e = explain(&lab.agent, &client, &c, None);
    assert_eq!(
        e["verdict"], "denied by the destination's ingress policy",
        "{e:#}"
    );
    assert_eq!(
        e["paths"][0]["ingress"]["identity"],
        json!(weir_common::IDENTITY_WORLD),
        "{e:#}"
    );
    assert!(
        ask_tcp(&lab.client.ns, c.parse().expect("c")).is_err(),
        "c answered"
    );
    // To an admitted pod: admitted, no policy on either side.
    let e = explain(&lab.agent, &client, &format!("{}:8080", lab.ip("a")), None);
    assert_eq!(e["verdict"], "admitted", "{e:#}");
    assert_eq!(e["paths"][0]["ingress"]["verdict"], "not isolated", "{e:#}");

    // Maglev: the backend for each source port is the one that answers (and
    // a path through c is explained as denied).
    for sport in [41_000, 41_001, 41_002, 41_003, 41_004, 41_005, 41_006, 41_007] {
        let e = explain(&lab.agent, &client, &format!("{MAG}:80"), Some(sport));
        let (_, chosen) = explained_paths(&e);
        let chosen = chosen.unwrap_or_else(|| panic!("maglev with a source port chooses: {e:#}"));
        let from = SocketAddr::new(lab.client.ipv4(), sport);
        let answer = ask_tcp_from(
            &lab.client.ns,
            from,
            SocketAddr::new(MAG.parse().expect("ip"), 80),
        );
        if chosen == c {
            assert_eq!(
                e["verdict"], "denied by the destination's ingress policy",
                "{e:#}"
            );
            assert!(answer.is_err(), "c answered port {sport}");
        } else {
            assert_eq!(e["verdict"], "admitted", "{e:#}");
            let a = answer.unwrap_or_else(|err| panic!("port {sport}: {err}"));
            assert_eq!(
                format!("{}:8080", lab.ip(&a.server)),
                chosen,
                "port {sport}: {e:#}"
            );
        }
    }

    // Session affinity: once the client has an entry, explain names its backend,
    // and the next connections go there.
    let sticky_vip = SocketAddr::new(STICKY.parse().expect("ip"), 80);
    let e = explain(&lab.agent, &client, &format!("{STICKY}:80"), None);
    assert_eq!(explained_paths(&e).1, None, "no entry yet: one of two: {e:#}");
    let first = ask_tcp(&lab.client.ns, sticky_vip).expect("sticky").server;
    let e = explain(&lab.agent, &client, &format!("{STICKY}:80"), None);
    let (_, chosen) = explained_paths(&e);
    assert_eq!(chosen, Some(format!("{}:8080", lab.ip(&first))), "{e:#}");
    assert!(
        e["frontend"]["choice"]
            .as_str()
            .is_some_and(|c| c.contains("affinity")),
        "{e:#}"
    );
    for _ in 0..3 {
        assert_eq!(ask_tcp(&lab.client.ns, sticky_vip).expect("sticky").server, first);
    }

    // The table form says the same in words.
    let text = std::process::Command::new(weir_lab::bins::path("weirctl"))
        .arg("--bpffs-root")
        .arg(&lab.agent.bpffs_root)
        .args(["explain", "default/client", &c])
        .output()
        .expect("weirctl explain");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("denied by the destination's ingress policy") && text.contains("(default/client)"),
        "{text}"
    );
}

/// `weirctl status`'s report, from inside the agent's namespace (where its
/// health address is).
fn status_of(agent: &weir_lab::Agent) -> weir_agent::ctl::StatusReport {
    let pins = weir_agent::datapath::PinLayout::new(agent.bpffs_root.clone());
    Netns::attach(&agent.netns)
        .run(move || weir_agent::ctl::status(&pins, "127.0.0.1:9879".parse().expect("addr")).expect("status"))
}

fn status_reports_the_agent_the_node_and_the_maps(kind: SourceKind) {
    let mut lab = Lab::new(kind, "10.91.35.0/24", &["a"], &[8080]);
    lab.cluster.write("web.yaml", &lab.web(&lab.ready(&["a"])));
    lab.agent
        .wait_backends(&format!("{VIP}:80/TCP"), &lab.addrs(&["a"], 8080));
    lab.agent.wait_ready();
    let s = status_of(&lab.agent);
    let report = s
        .agent
        .report
        .as_ref()
        .unwrap_or_else(|| panic!("the agent answers: {s:?}"));
    assert!(s.agent.up);
    assert_eq!(report["node"], lab.node.name());
    let source = report["source"].as_str().expect("source");
    assert!(
        match kind {
            SourceKind::Dir => source.starts_with("dir:"),
            SourceKind::Kube => source == "kube",
        },
        "{report:#}"
    );
    assert_eq!(report["ready"], true, "{report:#}");
    assert_eq!(report["services_synced"], true);
    assert_eq!(report["object"], s.weirctl.object, "the same build");
    // The maps' fill, counted.
    let fill = |map: &str| s.maps.iter().find(|m| m.map == map).and_then(|m| m.entries);
    assert_eq!(fill(names::REVNAT), Some(1), "{:?}", s.maps);
    assert_eq!(fill(names::BACKENDS), Some(1));
    assert_eq!(fill(names::ENDPOINTS), Some(2), "a and the client");
    assert!(s.maps.iter().all(|m| m.error.is_none()), "{:?}", s.maps);
    // Programs: the socket hooks, and each pod's veth, named.
    let cgroup = s
        .attachments
        .iter()
        .find(|a| a.kind == "cgroup")
        .expect("cgroup hooks");
    assert!(
        cgroup.programs.iter().any(|p| p.starts_with("sock_connect")),
        "{cgroup:?}"
    );
    let a = s
        .attachments
        .iter()
        .find(|a| a.pod.as_deref() == Some("default/a"))
        .unwrap_or_else(|| panic!("pod a's veth: {:?}", s.attachments));
    assert_eq!(a.kind, "pod");
    assert!(a.programs.len() >= 2, "{a:?}");
    // In the node's namespace: the veth by its name too.
    assert_eq!(
        a.name.as_deref(),
        lab.pod("a").result["interfaces"][0]["name"].as_str(),
        "{a:?}"
    );
    let text = s.to_text();
    assert!(
        text.contains("agent:     up") && text.contains(names::CONNTRACK),
        "{text}"
    );

    // The agent down: said so, and the datapath's side still reported.
    lab.agent.kill();
    let s = status_of(&lab.agent);
    assert!(!s.agent.up && s.agent.error.is_some(), "{:?}", s.agent);
    assert_eq!(
        s.maps
            .iter()
            .find(|m| m.map == names::REVNAT)
            .and_then(|m| m.entries),
        Some(1)
    );
    assert!(s.to_text().contains("agent:     down"), "{}", s.to_text());
}

/// A `weirctl monitor` of this test, following.
fn monitors_each_see_every_drop_and_drops_takes_nothing(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.36.0/24", &["a", "b"], &[8080]);
    let objects = vec![
        weir_lab::services::pod(
            "default",
            "b",
            json!({ "app": "b" }),
            lab.node.name(),
            &[lab.ip("b")],
            json!([]),
        ),
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": { "name": "b-alone", "namespace": "default" },
            "spec": { "podSelector": { "matchLabels": { "app": "b" } }, "policyTypes": ["Ingress"] },
        }),
    ];
    lab.cluster.write("policy.yaml", &objects);
    let to_b = SocketAddr::new(lab.ip("b"), 8080);
    let deadline = Instant::now() + Duration::from_secs(20);
    while ask_tcp(&lab.client.ns, to_b).is_ok() {
        assert!(Instant::now() < deadline, "b never isolated");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Two monitors at once, one filtered to b's address and TCP, one to the
    // client's address; a third whose filter nothing matches.
    let b_ip = lab.ip("b").to_string();
    let client_ip = lab.client.ipv4().to_string();
    let first = lab
        .agent
        .monitor(&["--count", "1", "--ip", &b_ip, "--protocol", "tcp"]);
    let second = lab
        .agent
        .monitor(&["--count", "1", "--ip", &client_ip, "--type", "drop"]);
    let mut none = lab.agent.monitor(&["--count", "1", "--port", "1"]);
    assert!(ask_tcp(&lab.client.ns, to_b).is_err(), "b is isolated");
    for events in [first.events(), second.events()] {
        assert_eq!(events.len(), 1, "{events:?}");
        let e = &events[0];
        assert_eq!(e["code"], "policy_ingress", "{e:#}");
        assert_eq!(e["pod"], "default/b", "{e:#}");
        assert_eq!(e["destination"], to_b.to_string(), "{e:#}");
    }
    assert!(
        none.child.try_wait().expect("wait").is_none(),
        "a filter nothing matches let an event through"
    );
    let _ = none.child.kill();
    // `drops` reads the agent's latest events: twice, the same.
    let drops = |agent: &weir_lab::Agent| -> Vec<Value> {
        agent.weirctl(&["drops"]).as_array().expect("rows").clone()
    };
    let once = drops(&lab.agent);
    assert!(
        once.iter()
            .any(|d| d["destination"] == to_b.to_string() && d["pod"] == "default/b"),
        "{once:#?}"
    );
    assert_eq!(drops(&lab.agent), once, "reading drops took them");
}

fn monitor_traces_new_flows_naming_service_backend_and_verdicts(kind: SourceKind) {
    let lab = Lab::new(kind, "10.91.37.0/24", &["a", "b"], &[8080]);
    const EMPTY: &str = "10.96.0.15";
    let client_ip = lab.client.ipv4().to_string();
    let mut objects = lab.web(&lab.ready(&["b"]));
    objects.push(service("empty", EMPTY, &[port("http", 80, "8080", "TCP")]));
    objects.push(weir_lab::services::pod(
        "default",
        "b",
        json!({ "app": "b" }),
        lab.node.name(),
        &[lab.ip("b")],
        json!([]),
    ));
    objects.push(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": { "name": "b-from-client", "namespace": "default" },
        "spec": {
            "podSelector": { "matchLabels": { "app": "b" } },
            "policyTypes": ["Ingress"],
            "ingress": [{ "from": [{ "ipBlock": { "cidr": format!("{client_ip}/32") } }] }],
        },
    }));
    lab.cluster.write("web.yaml", &objects);
    let deadline = Instant::now() + Duration::from_secs(20);
    while ask_tcp(&lab.client.ns, SocketAddr::new(lab.ip("b"), 8080)).is_err()
        || ask_tcp(&lab.client.ns, vip(80)).is_err()
        || lab
            .agent
            .weirctl(&["policy"])
            .as_array()
            .is_none_or(|r| r.is_empty())
    {
        assert!(Instant::now() < deadline, "web never served, b never isolated");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!lab.agent.tracing(), "tracing is off while no monitor traces");
    // A tracing monitor and a plain one, both on the client's flows.
    let traced = lab
        .agent
        .monitor(&["--trace", "--count", "3", "--ip", &client_ip]);
    assert!(lab.agent.tracing(), "a tracing monitor turns tracing on");
    let plain = lab.agent.monitor(&["--count", "1", "--ip", &client_ip]);
    expect_server(ask_tcp(&lab.client.ns, vip(80)), "b", "web");
    let refused = ask_tcp(&lab.client.ns, SocketAddr::new(EMPTY.parse().expect("ip"), 80));
    assert!(refused.is_err(), "a Service without endpoints refuses");
    let traced = traced.events();
    let of = |kind: &str| -> &Value {
        traced
            .iter()
            .find(|e| e["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} event: {traced:#?}"))
    };
    let vip80 = vip(80).to_string();
    let b8080 = format!("{}:8080", lab.ip("b"));
    let t = of("translate");
    assert_eq!(
        (
            &t["direction"],
            &t["destination"],
            &t["backend"],
            &t["backend_pod"],
            &t["source_pod"]
        ),
        (
            &json!("from-pod"),
            &json!(vip80),
            &json!(b8080),
            &json!("default/b"),
            &json!("default/client")
        ),
        "{t:#}"
    );
    assert!(
        t["service"]
            .as_str()
            .is_some_and(|s| s.starts_with("default/web")),
        "{t:#}"
    );
    assert_eq!(
        t["device"].as_str(),
        lab.client.result["interfaces"][0]["name"].as_str(),
        "seen on the client's veth: {t:#}"
    );
    let p = of("policy");
    assert_eq!(
        (&p["direction"], &p["destination"], &p["pod"], &p["code"]),
        (
            &json!("to-pod"),
            &json!(b8080),
            &json!("default/b"),
            &json!("forwarded")
        ),
        "b's ingress admitted the translated flow: {p:#}"
    );
    let d = of("drop");
    assert_eq!(
        (&d["code"], &d["destination"]),
        (&json!("no_backend"), &json!(format!("{EMPTY}:80"))),
        "{d:#}"
    );
    assert!(
        d["service"]
            .as_str()
            .is_some_and(|s| s.starts_with("default/empty")),
        "{d:#}"
    );
    // The plain monitor saw the drop, not the traced flow before it.
    let plain = plain.events();
    assert_eq!(plain.len(), 1, "{plain:#?}");
    assert_eq!(plain[0]["code"], "no_backend", "{plain:#?}");
    // The tracing monitor gone, tracing goes off.
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.agent.tracing() {
        assert!(Instant::now() < deadline, "tracing outlived its last monitor");
        std::thread::sleep(Duration::from_millis(100));
    }
}
