//! `weir-lab`: the main job. Builds two nodes of network namespaces on a switched
//! underlay with a host outside the cluster, runs `weir-agent` on each with
//! Services from a manifest directory, wires pods with `weir-cni` and shows them
//! talking to each other and through Services (ClusterIP on one node and across
//! nodes, NodePort from outside, from the node itself) and a NetworkPolicy
//! denying, then admitting, a client, with what the datapath saw, as `weirctl`
//! reports it. A second act brings a lab up the way a cluster does: the lab's
//! API server, Node objects, agents with `--source kube` writing the conflist,
//! containers started by containerd.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use serde_json::{Value, json};
use weir_lab::{
    Agent, Netns, Node, Pod, bins,
    kube_lab::{self, KubeLab},
    reachability::{self, Probe},
    services::{self, Ep, ManifestDir, SYNC_TIMEOUT, frontend, merge, port, service, slice, slot_addresses},
    traffic::{EchoServer, tcp_roundtrip, udp_roundtrip},
    underlay::{Routing, Underlay},
    whoami::{TcpSession, UdpSession, WhoAmI, ask_tcp, ask_udp},
};

/// The Services of the demo: ClusterIPs and the port the backends serve on.
const WEB_VIP: &str = "10.96.0.10";
const STICKY_VIP: &str = "10.96.0.11";
const EMPTY_VIP: &str = "10.96.0.12";
const REMOTE_VIP: &str = "10.96.0.13";
const NODE_PORT_VIP: &str = "10.96.0.14";
const NODE_PORT: u16 = 30080;
const TARGET_PORT: u16 = 9376;
/// New connections (and datagrams) sent to show the spread.
const SPREAD: usize = 30;
/// Connections sent to the ClientIP-affinity Service.
const STICKY: usize = 10;

#[derive(Parser)]
#[command(name = "weir-lab", about = "A local lab of namespaces running Weir")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the lab, show pods talking and Services load-balanced, tear it down
    /// (or keep it with --keep).
    Demo {
        /// Keep the lab up until Ctrl-C, to explore it with `ip netns exec`, weirctl
        /// and by editing the Services' YAML directory.
        #[arg(long)]
        keep: bool,
    },
}

/// What the demo expected and did not see; the demo fails if any.
#[derive(Default)]
struct Expectations(Vec<String>);

impl Expectations {
    /// Prints `line` with `ok` or `FAILED`, remembering failures.
    fn check(&mut self, ok: bool, line: String) {
        println!("  {line}: {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            self.0.push(line);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let Cmd::Demo { keep } = Cli::parse().command;
    weir_lab::require_root();
    // Block Ctrl-C before any thread starts (threads inherit the mask), so that it
    // reaches our sigwait and the lab is torn down instead of the process dying.
    let signals = termination_signals();
    if keep {
        signals.thread_block().context("blocking SIGINT/SIGTERM")?;
    }
    let started = Instant::now();
    let mut expect = Expectations::default();
    let dir = ManifestDir::new();
    let underlay = Underlay::new(250);
    let mut node = Node::new("10.244.1.0/24");
    let mut node_b = Node::new("10.244.2.0/24");
    let node_ips = underlay.join(&[&node, &node_b]);
    let (external, external_ip) = underlay.external();
    for (n, ip) in [&node, &node_b].iter().zip(&node_ips) {
        println!(
            "== node {} (pod CIDR {}, underlay address {ip}), pins under {}",
            n.ns.name(),
            n.pod_cidr(),
            n.bpffs_root.display()
        );
    }
    println!(
        "== external host {} ({external_ip}) on the underlay, outside the cluster",
        external.name()
    );
    let agent = node.start_agent_with_source(dir.path());
    let agent_b = node_b.start_agent_with_source(dir.path());
    println!(
        "== weir-agent running on each node (CNI sockets {} and {}), Services from --source dir:{}",
        agent.socket.display(),
        agent_b.socket.display(),
        dir.path().display()
    );

    let mut pods: Vec<Pod> = ["a", "b", "c", "client"]
        .iter()
        .map(|name| node.add_pod(name))
        .collect();
    pods.push(node_b.add_pod("d"));
    println!("\n== pods wired by weir-cni");
    for pod in &pods {
        let host_if = pod.result["interfaces"][0]["name"].as_str().unwrap_or("?");
        println!(
            "  pod {:<6} netns {:<12} ip {:<12} host veth {}",
            pod.spec.name,
            pod.ns.name(),
            pod.ipv4(),
            host_if
        );
    }
    let backends = &pods[..3];
    let client = &pods[3];
    let d = &pods[4];

    let _echo = pod_to_pod(&pods, &mut expect);

    // Backends answer with their name: that is how we see who served a connection.
    let _whoami: Vec<WhoAmI> = backends
        .iter()
        .chain([d])
        .map(|p| WhoAmI::start(&p.ns, &p.spec.name, p.ipv4(), &[TARGET_PORT]))
        .collect();
    write_services(&dir, node.name(), backends);
    write_cross_node_services(&dir, (node.name(), &backends[0]), (node_b.name(), d));
    println!(
        "\n== Services written to {} (web.yaml, sticky.yaml, empty.yaml, remote.yaml, nodeport.yaml)",
        dir.path().display()
    );
    wait_synced(&agent, backends)?;
    wait_for(&agent, &format!("{}:{NODE_PORT}/TCP", node_ips[0]), 2)?;
    wait_for(&agent, &format!("{REMOTE_VIP}:80/TCP"), 1)?;
    show_services(client, &mut expect);
    show_cross_node(
        Cross {
            client,
            external: &external,
            external_ip,
            node_a: &node.ns,
            node_a_ip: node_ips[0],
        },
        &mut expect,
    );
    show_policy(&dir, (&node, node_b.name()), &pods, &mut expect)?;
    show_trace(&agent, client, &mut expect);

    println!("\n== weirctl services");
    weirctl(&node, "services")?;
    for view in ["policy", "drops", "endpoints", "metrics"] {
        println!("\n== weirctl {view}");
        weirctl(&node, view)?;
    }
    act_two(&mut expect)?;
    println!("\n(demo ran in {:.1} s)", started.elapsed().as_secs_f64());

    if keep {
        let weirctl = format!(
            "{} --bpffs-root {}",
            bins::path("weirctl").display(),
            node.bpffs_root.display()
        );
        println!(
            "\nLab is up. Try:\n  ip netns exec {client_ns} ping {b}\n  ip netns exec {client_ns} socat - TCP:{WEB_VIP}:80   (type a line: a backend answers with its name)\n  {weirctl} services\n  {weirctl} conntrack\n  {weirctl} metrics\nThe agent watches {dir}: edit web.yaml (remove an endpoint, add a port) and run\nweirctl services again; changes apply within a second.\nCtrl-C tears it down.",
            client_ns = client.ns.name(),
            b = backends[1].ipv4(),
            dir = dir.path().display(),
        );
        signals.wait().context("waiting for Ctrl-C")?;
    }
    if !expect.0.is_empty() {
        bail!(
            "{} expectations failed:\n  {}",
            expect.0.len(),
            expect.0.join("\n  ")
        );
    }
    println!("\nAll pods reached each other and every Service behaved. Tearing the lab down.");
    Ok(())
}

/// Every ordered pair of pods, TCP and UDP echo on :8080. The echo servers are
/// returned, to stay up with `--keep`.
fn pod_to_pod(pods: &[Pod], expect: &mut Expectations) -> Vec<EchoServer> {
    let servers: Vec<EchoServer> = pods
        .iter()
        .map(|p| EchoServer::start(&p.ns, SocketAddr::new(p.ipv4(), 8080)))
        .collect();
    println!("\n== pod-to-pod traffic (TCP and UDP echo on :8080)");
    for from in pods {
        for (to, server) in pods.iter().zip(&servers) {
            if from.spec.name == to.spec.name {
                continue;
            }
            let msg = format!("hi {} from {}", to.spec.name, from.spec.name);
            let tcp = tcp_roundtrip(&from.ns, server.addr, msg.as_bytes()).is_ok_and(|b| b == msg.as_bytes());
            let udp = udp_roundtrip(&from.ns, server.addr, msg.as_bytes()).is_ok_and(|b| b == msg.as_bytes());
            let word = |ok: bool| if ok { "ok" } else { "FAILED" };
            println!(
                "  {:<6} -> {:<6} ({}): TCP {}  UDP {}",
                from.spec.name,
                to.spec.name,
                server.addr,
                word(tcp),
                word(udp)
            );
            if !(tcp && udp) {
                expect
                    .0
                    .push(format!("{} -> {} echo", from.spec.name, to.spec.name));
            }
        }
    }
    servers
}

/// The manifest directory, as a cluster holds the objects: `web` (TCP and UDP
/// ports, three ready endpoints in an EndpointSlice), `sticky` (the same backends,
/// `sessionAffinity: ClientIP`) and `empty` (a slice without endpoints).
fn write_services(dir: &ManifestDir, node: &str, backends: &[Pod]) {
    let ready: Vec<Ep> = backends.iter().map(|p| Ep::ready(p.ipv4())).collect();
    let target = TARGET_PORT.to_string();
    let web = service(
        "web",
        WEB_VIP,
        &[port("http", 80, &target, "TCP"), port("dns", 53, &target, "UDP")],
    );
    let web_slice = slice(
        "web-7xk2p",
        "web",
        node,
        &[("http", TARGET_PORT, "TCP"), ("dns", TARGET_PORT, "UDP")],
        &ready,
    );
    dir.write("web.yaml", &[web, web_slice]);

    let mut sticky = service("sticky", STICKY_VIP, &[port("http", 80, &target, "TCP")]);
    sticky["spec"]["sessionAffinity"] = json!("ClientIP");
    sticky["spec"]["sessionAffinityConfig"] = json!({ "clientIP": { "timeoutSeconds": 10800 } });
    let sticky_slice = slice(
        "sticky-q9f4d",
        "sticky",
        node,
        &[("http", TARGET_PORT, "TCP")],
        &ready,
    );
    dir.write("sticky.yaml", &[sticky, sticky_slice]);

    let empty = service(
        "empty",
        EMPTY_VIP,
        &[port("http", 80, &target, "TCP"), port("dns", 53, &target, "UDP")],
    );
    let empty_slice = slice(
        "empty-m2c8r",
        "empty",
        node,
        &[("http", TARGET_PORT, "TCP"), ("dns", TARGET_PORT, "UDP")],
        &[],
    );
    dir.write("empty.yaml", &[empty, empty_slice]);
}

/// `remote` (ClusterIP, its one endpoint `d` on node B) and `nodeport` (NodePort
/// 30080, externalTrafficPolicy Cluster, endpoints `a` on node A and `d` on B).
fn write_cross_node_services(dir: &ManifestDir, (node_a, a): (&str, &Pod), (node_b, d): (&str, &Pod)) {
    let target = TARGET_PORT.to_string();
    let ports = [("http", TARGET_PORT, "TCP")];
    let remote = service("remote", REMOTE_VIP, &[port("http", 80, &target, "TCP")]);
    let remote_slice = slice("remote-b7t2x", "remote", node_b, &ports, &[Ep::ready(d.ipv4())]);
    dir.write("remote.yaml", &[remote, remote_slice]);
    let mut np = service("nodeport", NODE_PORT_VIP, &[port("http", 80, &target, "TCP")]);
    merge(
        &mut np,
        &json!({ "spec": { "type": "NodePort", "externalTrafficPolicy": "Cluster", "ports": [
            { "name": "http", "port": 80, "targetPort": TARGET_PORT, "protocol": "TCP", "nodePort": NODE_PORT }
        ] } }),
    );
    let on_a = slice("nodeport-a1", "nodeport", node_a, &ports, &[Ep::ready(a.ipv4())]);
    let on_b = slice("nodeport-b1", "nodeport", node_b, &ports, &[Ep::ready(d.ipv4())]);
    dir.write("nodeport.yaml", &[np, on_a, on_b]);
}

/// Waits until the agent has `front` with `count` backends.
fn wait_for(agent: &Agent, front: &str, count: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    while !frontend(&agent.weirctl(&["services"]), front).is_some_and(|f| f["count"] == json!(count)) {
        if start.elapsed() > SYNC_TIMEOUT {
            bail!(
                "the agent did not write {front} within {SYNC_TIMEOUT:?}:\n{}",
                agent.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Who takes part in the cross-node part of the demo.
struct Cross<'a> {
    client: &'a Pod,
    external: &'a Netns,
    external_ip: IpAddr,
    node_a: &'a Netns,
    node_a_ip: IpAddr,
}

fn show_cross_node(c: Cross<'_>, expect: &mut Expectations) {
    println!("\n== Service remote {REMOTE_VIP}: its endpoint d runs on the other node");
    let answer = ask_tcp(&c.client.ns, vip(REMOTE_VIP, 80));
    expect.check(
        answer
            .as_ref()
            .is_ok_and(|a| a.server == "d" && a.peer.ip() == c.client.ipv4()),
        format!(
            "pod client on node A -> {REMOTE_VIP}:80: {}",
            answer.as_ref().map_or_else(
                |e| e.to_string(),
                |a| format!("{} answered, saw {}", a.server, a.peer.ip())
            )
        ),
    );

    let np = SocketAddr::new(c.node_a_ip, NODE_PORT);
    println!(
        "\n== NodePort {NODE_PORT} from the external host {} (endpoints a on node A, d on node B)",
        c.external_ip
    );
    let mut peers: BTreeMap<String, std::collections::BTreeSet<IpAddr>> = BTreeMap::new();
    let seen = tally(SPREAD, || {
        ask_tcp(c.external, np).map(|a| {
            peers.entry(a.server.clone()).or_default().insert(a.peer.ip());
            a.server
        })
    });
    expect.check(
        seen.keys().map(String::as_str).eq(["a", "d"]),
        format!("{SPREAD} TCP connections to {np}: {}", shares(&seen)),
    );
    let want = BTreeMap::from([
        ("a".to_owned(), std::collections::BTreeSet::from([c.external_ip])),
        ("d".to_owned(), std::collections::BTreeSet::from([c.node_a_ip])),
    ]);
    expect.check(
        peers == want,
        format!(
            "a (on node A) sees the client {:?}, d (on node B) node A's address {:?}, as kube-proxy's externalTrafficPolicy Cluster",
            peers.get("a"),
            peers.get("d")
        ),
    );

    println!("\n== From node A itself (socket hooks): its NodePort on localhost, a ClusterIP");
    let local = vip("127.0.0.1", NODE_PORT);
    let answer = ask_tcp(c.node_a, local);
    expect.check(
        answer.is_ok(),
        format!(
            "{local}: {}",
            answer.map_or_else(|e| e.to_string(), |a| format!("{} answered", a.server))
        ),
    );
    let web = vip(WEB_VIP, 80);
    let answer = ask_tcp(c.node_a, web);
    expect.check(
        answer.is_ok(),
        format!(
            "{web}: {}",
            answer.map_or_else(|e| e.to_string(), |a| format!("{} answered", a.server))
        ),
    );
}

/// Waits until the agent has written every frontend of the demo's Services.
fn wait_synced(agent: &Agent, backends: &[Pod]) -> anyhow::Result<()> {
    let mut want: Vec<String> = backends
        .iter()
        .map(|p| format!("{}:{TARGET_PORT}", p.ipv4()))
        .collect();
    want.sort();
    let full = [
        format!("{WEB_VIP}:80/TCP"),
        format!("{WEB_VIP}:53/UDP"),
        format!("{STICKY_VIP}:80/TCP"),
    ];
    let empty = [format!("{EMPTY_VIP}:80/TCP"), format!("{EMPTY_VIP}:53/UDP")];
    let done = |s: &Value| {
        full.iter().all(|f| {
            slot_addresses(s, f).is_some_and(|mut got| {
                got.sort();
                got == want
            })
        }) && empty
            .iter()
            .all(|f| frontend(s, f).is_some_and(|f| f["count"] == 0))
    };
    let start = Instant::now();
    loop {
        let services = agent.weirctl(&["services"]);
        if done(&services) {
            println!(
                "  the agent compiled and wrote them in {} ms",
                start.elapsed().as_millis()
            );
            return Ok(());
        }
        if start.elapsed() > SYNC_TIMEOUT {
            bail!(
                "the agent did not write the Services within {SYNC_TIMEOUT:?}; weirctl services:\n{services:#}\nagent log:\n{}",
                agent.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn vip(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("a constant address"), port)
}

/// Which backend answered each of `n` tries; errors counted under `error: ...`.
fn tally(n: usize, mut ask: impl FnMut() -> std::io::Result<String>) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let who = ask().unwrap_or_else(|e| format!("error: {e}"));
        *seen.entry(who).or_default() += 1;
    }
    seen
}

fn shares(seen: &BTreeMap<String, usize>) -> String {
    seen.iter()
        .map(|(who, n)| format!("{who}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One new connection as `weirctl monitor --trace` reports it: the load
/// balancer's choice, named.
fn show_trace(agent: &weir_lab::Agent, client: &Pod, expect: &mut Expectations) {
    println!("\n== weirctl monitor --trace: one new connection from pod client to {WEB_VIP}:80");
    let client_ip = client.ipv4().to_string();
    let monitor = agent.monitor(&[
        "--trace",
        "--count",
        "1",
        "--type",
        "translate",
        "--ip",
        &client_ip,
    ]);
    let answer = ask_tcp(&client.ns, vip(WEB_VIP, 80));
    let events = monitor.events();
    let e = &events[0];
    println!(
        "  {} {} {} -> {} ({}) => {} ({})",
        e["type"].as_str().unwrap_or("?"),
        e["direction"].as_str().unwrap_or("?"),
        e["source"].as_str().unwrap_or("?"),
        e["destination"].as_str().unwrap_or("?"),
        e["service"].as_str().unwrap_or("-"),
        e["backend"].as_str().unwrap_or("?"),
        e["backend_pod"].as_str().unwrap_or("-"),
    );
    let served_by = answer.map(|a| a.server).unwrap_or_default();
    expect.check(
        e["service"]
            .as_str()
            .is_some_and(|s| s.starts_with("default/web"))
            && e["backend_pod"].as_str() == Some(&format!("default/{served_by}")),
        format!("the traced translation names the Service and the backend that answered ({served_by})"),
    );
}

fn show_services(client: &Pod, expect: &mut Expectations) {
    let ns = &client.ns;
    let names = ["a", "b", "c"];
    let all_backends = |seen: &BTreeMap<String, usize>| seen.keys().map(String::as_str).eq(names);

    println!("\n== Service web {WEB_VIP}: new connections from pod client, spread over a, b, c");
    let web_tcp = vip(WEB_VIP, 80);
    let seen = tally(SPREAD, || ask_tcp(ns, web_tcp).map(|a| a.server));
    expect.check(
        all_backends(&seen),
        format!("{SPREAD} TCP connections to {web_tcp}: {}", shares(&seen)),
    );
    let web_udp = vip(WEB_VIP, 53);
    let seen = tally(SPREAD, || ask_udp(ns, web_udp).map(|a| a.server));
    expect.check(
        all_backends(&seen),
        format!(
            "{SPREAD} UDP datagrams (new sockets) to {web_udp}: {}",
            shares(&seen)
        ),
    );
    let answer = ask_tcp(ns, web_tcp);
    let preserved = answer.as_ref().is_ok_and(|a| a.peer.ip() == client.ipv4());
    expect.check(
        preserved,
        format!(
            "the backend sees the client's own address ({})",
            answer.map_or_else(|e| e.to_string(), |a| a.peer.to_string())
        ),
    );

    println!("\n== Service sticky {STICKY_VIP}: sessionAffinity ClientIP pins the client to one backend");
    let sticky = vip(STICKY_VIP, 80);
    let seen = tally(STICKY, || ask_tcp(ns, sticky).map(|a| a.server));
    expect.check(
        seen.len() == 1 && !seen.keys().any(|k| k.starts_with("error")),
        format!("{STICKY} TCP connections to {sticky}: {}", shares(&seen)),
    );

    println!("\n== Service empty {EMPTY_VIP}: no endpoints, clients refused at once");
    let empty_tcp = vip(EMPTY_VIP, 80);
    let start = Instant::now();
    let tcp = TcpSession::connect(ns, empty_tcp).map(|_| ());
    let took = start.elapsed();
    expect.check(
        matches!(&tcp, Err(e) if e.kind() == ErrorKind::ConnectionRefused) && took < Duration::from_secs(1),
        format!(
            "TCP connect to {empty_tcp}: {} after {:.1} ms",
            outcome(&tcp),
            took.as_secs_f64() * 1e3
        ),
    );
    let empty_udp = vip(EMPTY_VIP, 53);
    let start = Instant::now();
    let udp = UdpSession::connect(ns, empty_udp)
        .and_then(|s| s.ask())
        .map(|_| ());
    let took = start.elapsed();
    expect.check(
        matches!(&udp, Err(e) if e.kind() == ErrorKind::ConnectionRefused) && took < Duration::from_secs(1),
        format!(
            "UDP datagram to {empty_udp}: {} (ICMP port unreachable) after {:.1} ms",
            outcome(&udp),
            took.as_secs_f64() * 1e3
        ),
    );
}

fn outcome(result: &std::io::Result<()>) -> String {
    match result {
        Ok(()) => "answered".to_owned(),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        Err(e) => e.to_string(),
    }
}

/// The pods as the API server would hold them (namespace `default`), with the
/// client's `role`, and a policy admitting only `role: frontend` into `app: web`.
fn write_policy(dir: &ManifestDir, (node_a, node_b): (&str, &str), pods: &[Pod], client_role: &str) {
    let mut objects = vec![json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": "default", "labels": { "kubernetes.io/metadata.name": "default" } },
    })];
    for pod in pods {
        let name = pod.spec.name.as_str();
        let (labels, node) = match name {
            "client" => (json!({ "role": client_role }), node_a),
            "d" => (json!({ "app": "remote" }), node_b),
            _ => (json!({ "app": "web" }), node_a),
        };
        let http = json!([{ "name": "http", "containerPort": TARGET_PORT }]);
        objects.push(services::pod("default", name, labels, node, &[pod.ipv4()], http));
    }
    objects.push(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": { "name": "web-from-frontend", "namespace": "default" },
        "spec": {
            "podSelector": { "matchLabels": { "app": "web" } },
            "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "role": "frontend" } } }],
                          "ports": [{ "port": "http" }] }],
        },
    }));
    dir.write("policy.yaml", &objects);
}

/// A NetworkPolicy isolates a, b and c: the client is denied until it is
/// relabelled `role: frontend`; d (the other node) stays denied; node A itself
/// (kubelet's probes) always gets in.
fn show_policy(
    dir: &ManifestDir,
    (node_a, node_b): (&Node, &str),
    pods: &[Pod],
    expect: &mut Expectations,
) -> anyhow::Result<()> {
    let (a, client, d) = (&pods[0], &pods[3], &pods[4]);
    println!(
        "\n== NetworkPolicy web-from-frontend: only role=frontend may reach app=web (a, b, c) on port http"
    );
    let probe = |from: &Pod, to: SocketAddr, wait: u64| {
        reachability::run(
            &[Probe {
                from: &from.ns,
                to,
                proto: "TCP",
            }],
            Duration::from_millis(wait),
        )[0]
    };
    // Patient for the checks; quick (an allowed connection takes well under a
    // millisecond here) to time the changes.
    let reach = |from: &Pod, to: SocketAddr| probe(from, to, 600);
    let quick = |from: &Pod, to: SocketAddr| probe(from, to, 20);
    let to_a = SocketAddr::new(a.ipv4(), TARGET_PORT);
    let web = vip(WEB_VIP, 80);
    write_policy(dir, (node_a.name(), node_b), pods, "client");
    let start = Instant::now();
    while quick(client, to_a) {
        ensure!(start.elapsed() < SYNC_TIMEOUT, "the policy never took effect");
    }
    println!(
        "  (in force {:.0} ms after the write)",
        start.elapsed().as_secs_f64() * 1e3
    );
    expect.check(
        !reach(client, to_a),
        format!("client (role=client) -> a {to_a}: denied"),
    );
    expect.check(
        !reach(client, web),
        format!("client (role=client) -> Service web {web}: denied"),
    );
    expect.check(
        !reach(d, to_a),
        format!("d (node B, app=remote) -> a {to_a}: denied"),
    );
    expect.check(
        ask_tcp(&node_a.ns, to_a).is_ok(),
        format!("node A itself -> a {to_a}: allowed (kubelet probes)"),
    );

    write_policy(dir, (node_a.name(), node_b), pods, "frontend");
    let start = Instant::now();
    while !quick(client, to_a) {
        ensure!(start.elapsed() < SYNC_TIMEOUT, "the relabel never took effect");
    }
    println!(
        "  client relabelled role=frontend (in force {:.0} ms after the write)",
        start.elapsed().as_secs_f64() * 1e3
    );
    expect.check(
        reach(client, to_a),
        format!("client (role=frontend) -> a {to_a}: allowed"),
    );
    expect.check(
        reach(client, web),
        format!("client (role=frontend) -> Service web {web}: allowed"),
    );
    expect.check(!reach(d, to_a), format!("d -> a {to_a}: still denied"));
    Ok(())
}

/// `weirctl VIEW` as a table, straight to the terminal.
fn weirctl(node: &Node, view: &str) -> anyhow::Result<()> {
    let status = Command::new(bins::path("weirctl"))
        .arg("--bpffs-root")
        .arg(&node.bpffs_root)
        .arg(view)
        .status()
        .context("running weirctl")?;
    ensure!(status.success(), "weirctl {view} failed");
    Ok(())
}

/// The second act: a lab brought up the way a cluster is. The lab's API server
/// (HTTPS, list and watch, as kube-apiserver serves them) holds a Node object
/// per node with its pod CIDR; each node's agent runs with `--source kube`,
/// reads its Node, writes the node's conflist once it can serve pods, and
/// becomes ready; containerd (`ctr run --cni`, reading that conflist) starts a
/// web server on node A and a client on node B, which reaches it directly and
/// through a Service created in the API. The nodes' network carries only their
/// own addresses: pods talk across nodes through the agents' VXLAN overlay
/// (`--routing vxlan`).
fn act_two(expect: &mut Expectations) -> anyhow::Result<()> {
    const VIP: &str = "10.96.1.10";
    println!("\n== act 2: the cluster path, weir-agent --source kube against the lab's API server");
    let lab = KubeLab::new(251, &["10.245.1.0/24", "10.245.2.0/24"], Some(Routing::Vxlan));
    for n in &lab.nodes {
        let conflist = n.conflist();
        let plugins: Vec<&str> = conflist["plugins"]
            .as_array()
            .map(|p| p.iter().filter_map(|p| p["type"].as_str()).collect())
            .unwrap_or_default();
        println!(
            "  node {} (Node object: podCIDRs [{}], InternalIP {}): /readyz {}, wrote {} ({}, ranges {}, mtu {})",
            n.node.name(),
            n.node.pod_cidr(),
            n.ip,
            n.agent.health("/readyz").1.trim(),
            n.net_d.join("05-weir.conflist").display(),
            plugins.join(" + "),
            conflist["plugins"][0]["ipam"]["ranges"],
            conflist["plugins"][0]["mtu"]
        );
    }
    let (server, server_ip) = lab.start_server(0, "web-0", "hello from web-0 on node A");
    println!("  containerd started web-0 on node A: {server_ip} (weir-cni, via the agent's conflist)");
    lab.cluster.write(
        "web",
        &[
            service("web", VIP, &[port("http", 80, "8080", "TCP")]),
            slice(
                "web-x",
                "web",
                lab.nodes[0].node.name(),
                &[("http", 8080, "TCP")],
                &[Ep::ready(server_ip)],
            ),
        ],
    );
    println!("  Service web {VIP}:80 and its EndpointSlice created in the API");
    for n in &lab.nodes {
        wait_for(&n.agent, &format!("{VIP}:80/TCP"), 1)?;
    }
    let targets = [format!("{server_ip}:8080"), format!("{VIP}:80")];
    let out = lab.fetch(1, "client-0", &targets);
    let client_ip = kube_lab::answer(&out.stdout, "ip").unwrap_or("?").to_owned();
    println!("  containerd ran client-0 on node B ({client_ip}):");
    for (what, t) in ["directly", "through the Service"].iter().zip(&targets) {
        let got = kube_lab::answer(&out.stdout, t);
        expect.check(
            got == Some("hello from web-0 on node A"),
            format!("client-0 -> web-0 {what} ({t}): {:?}", got.unwrap_or("no answer")),
        );
    }
    let stopped = lab.stop(server);
    expect.check(
        stopped.exit_code == Some(0),
        "web-0 stopped; ctr ran DEL".to_owned(),
    );
    Ok(())
}

fn termination_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set
}
