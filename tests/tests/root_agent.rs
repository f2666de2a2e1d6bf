//! Tier 2 (root + namespaces): `weir-agent` attaches its programs to the veths that
//! `weir-cni` wires, they see every real packet, and they outlive the agent.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use weir_lab::{
    Node,
    services::{Ep, ManifestDir, port, service, slice},
    traffic::{ConnectionLoad, EchoServer, tcp_roundtrip, udp_roundtrip},
    whoami::{WhoAmI, ask_tcp},
};

/// Forwarded packets counted so far in one direction.
fn forwarded(metrics: &Value, direction: &str) -> u64 {
    weir_lab::agent::counted(metrics, direction, "forwarded")
}

#[test]
fn root_agent_programs_see_real_pod_traffic() {
    let mut node = Node::new("10.90.1.0/24");
    let agent = node.start_agent();
    let server = node.add_pod("server");
    let client = node.add_pod("client");

    let before = agent.weirctl(&["metrics"]);
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
    let after = agent.weirctl(&["metrics"]);
    // 20 TCP connections (>= 5 packets each way) and 20 datagrams, seen at both pods'
    // veths in both directions.
    for dir in ["from-pod", "to-pod"] {
        let seen = forwarded(&after, dir) - forwarded(&before, dir);
        assert!(
            seen >= 2 * (20 * 4 + 20),
            "{dir}: only {seen} packets counted: {after}"
        );
    }

    // Both pods are registered, each with its host veth's ifindex.
    let endpoints = agent.weirctl(&["endpoints"]);
    for pod in [&server, &client] {
        let host_if = pod.result["interfaces"][0]["name"]
            .as_str()
            .expect("host interface");
        let ifindex: u64 = node
            .ns
            .sh(&format!("cat /sys/class/net/{host_if}/ifindex"))
            .trim()
            .parse()
            .expect("ifindex");
        let row = endpoints
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["ip"] == pod.ipv4().to_string())
            .unwrap_or_else(|| panic!("{} missing from endpoints: {endpoints}", pod.ipv4()));
        assert_eq!(row["ifindex"].as_u64(), Some(ifindex), "{endpoints}");
    }

    // DEL unregisters the pod and unpins its links.
    node.del_pod(&client).ok();
    let endpoints = agent.weirctl(&["endpoints"]);
    assert!(
        !endpoints.to_string().contains(&format!("\"{}\"", client.ipv4())),
        "deleted pod still registered: {endpoints}"
    );
    // Per interface (by ifindex); `cgroup` holds the socket hooks' links.
    let links = std::fs::read_dir(node.bpffs_root.join("links"))
        .expect("links dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok()))
        .count();
    assert_eq!(links, 1, "only the server's links should remain pinned");
}

#[test]
fn root_datapath_outlives_the_agent_and_is_adopted_on_restart() {
    let mut node = Node::new("10.90.2.0/24");
    let mut agent = node.start_agent();
    let server = node.add_pod("server");
    let client = node.add_pod("client");
    let echo = EchoServer::start(&server.ns, SocketAddr::new(server.ipv4(), 0));
    let counted = || {
        forwarded(
            &weir_lab::agent::weirctl(&node.bpffs_root, &["metrics"]),
            "from-pod",
        )
    };

    // A client keeps opening connections across the whole restart.
    let to = echo.addr;
    let load = ConnectionLoad::start(&client.ns, move |ns| tcp_roundtrip(ns, to, b"ping").map(|_| ()));

    std::thread::sleep(Duration::from_millis(300));
    agent.kill();
    let while_down = counted();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        counted() > while_down,
        "programs stopped counting while the agent was down"
    );

    agent.restart(node.ns.name());
    assert!(
        agent.log_text().contains("adopted=2"),
        "agent did not adopt both endpoints:\n{}",
        agent.log_text()
    );
    let after_restart = counted();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        counted() > after_restart,
        "programs stopped counting after the restart"
    );
    // The pinned map was reused: counters did not start again from zero.
    assert!(after_restart >= while_down, "metrics were reset by the restart");

    load.stop_and_assert_none_failed("across the restart");
    // A pod added after the restart is wired through the new agent.
    let late = node.add_pod("late");
    assert_eq!(tcp_roundtrip(&late.ns, echo.addr, b"late").expect("TCP"), b"late");
}

/// Idle connections, a client trickling one byte every 1.5 s, garbage and a
/// 100 MB request: the agent answers each as it should, its log stays small,
/// and every pod's ADD still registers at once.
#[test]
fn root_hostile_clients_of_the_cni_socket_do_not_block_registrations() {
    use std::{io::Write as _, os::unix::net::UnixStream};

    let mut node = Node::new("10.90.4.0/24");
    let agent = node.start_agent();
    let socket = agent.socket.clone();
    let log_before = agent.log_text().len();

    // More idle connections than the agent keeps open at once.
    let idle: Vec<UnixStream> = (0..300)
        .map(|_| UnixStream::connect(&socket).expect("connect"))
        .collect();
    let trickle = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let mut s = UnixStream::connect(&socket).expect("connect");
            for b in br#"{"op":"del","containerId":"slow","ifname":"eth0"}"# {
                if s.write_all(&[*b]).is_err() {
                    return; // closed by the agent: as it should
                }
                std::thread::sleep(Duration::from_millis(1500));
            }
        })
    };
    let huge = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let mut s = UnixStream::connect(&socket).expect("connect");
            let mut line = br#"{"op":"del","ifname":"eth0","ips":[],"containerId":""#.to_vec();
            line.extend(std::iter::repeat_n(b'x', 100 << 20));
            line.extend(b"\"}\n");
            // The agent stops reading at its limit and answers: a broken pipe here.
            let _ = s.write_all(&line);
        })
    };
    for garbage in [
        &b"\x00\xff garbage\n"[..],
        br#"{"op":"add"}"#,
        b"{\"op\":\"del\",\"containerId\":\"\",\"ifname\":\"eth0\"}\n",
    ] {
        let mut s = UnixStream::connect(&socket).expect("connect");
        s.write_all(garbage).expect("write");
        s.write_all(b"\n").expect("write");
        let mut answer = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut answer).expect("answer");
        assert!(answer.contains("\"error\""), "{garbage:?}: {answer}");
    }

    // Pods keep coming and going meanwhile: each ADD registers (weir-cni gives
    // up after 10 s with code 11: before, the first idle client blocked all).
    for i in 0..5 {
        let start = std::time::Instant::now();
        let pod = node.add_pod(&format!("p{i}"));
        println!("ADD under attack: {:?}", start.elapsed());
        node.del_pod(&pod).ok();
    }
    huge.join().expect("huge client");
    trickle.join().expect("trickling client");
    drop(idle);
    let pod = node.add_pod("last");
    assert!(
        agent
            .weirctl(&["endpoints"])
            .to_string()
            .contains(&pod.ipv4().to_string())
    );

    let grown = agent.log_text().len() - log_before;
    assert!(grown < 64 * 1024, "the agent's log grew by {grown} bytes");
}

/// A supervised thread's panic (here the sync thread's, injected by the debug
/// build's `WEIR_TEST_PANIC`) ends the agent with an error naming the thread,
/// so that the DaemonSet restarts it; meanwhile the pinned datapath keeps
/// serving what the last agent programmed, and a new agent takes over.
#[test]
fn root_a_panicking_sync_thread_ends_the_agent_and_the_datapath_serves_on() {
    let dir = ManifestDir::new();
    let mut node = Node::new("10.90.7.0/24");
    let mut agent = node.start_agent_with_source(dir.path());
    let backend = node.add_pod("backend");
    let client = node.add_pod("client");
    let _server = WhoAmI::start(&backend.ns, "backend", backend.ipv4(), &[8080]);
    let name = node.name().to_owned();
    dir.write(
        "web.yaml",
        &[
            service("web", "10.96.7.1", &[port("http", 80, "8080", "TCP")]),
            slice(
                "web-x",
                "web",
                &name,
                &[("http", 8080, "TCP")],
                &[Ep::ready(backend.ipv4())],
            ),
        ],
    );
    agent.wait_backends("10.96.7.1:80/TCP", &[format!("{}:8080", backend.ipv4())]);
    let vip = SocketAddr::new("10.96.7.1".parse().expect("VIP"), 80);
    assert_eq!(
        ask_tcp(&client.ns, vip).expect("through the ClusterIP").server,
        "backend"
    );

    agent.kill();
    let mark = agent.log_text().len();
    let mut faulty =
        node.start_agent_with_source_and(dir.path(), vec!["env:WEIR_TEST_PANIC=weir-sync@1000".to_owned()]);
    let status = faulty
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the agent outlived its sync thread:\n{}", faulty.log_since(mark)));
    assert!(!status.success(), "exit status {status}");
    let log = faulty.log_since(mark);
    assert!(
        log.contains("thread weir-sync panicked: fault injected by WEIR_TEST_PANIC")
            && log.contains("exiting so that the agent is restarted"),
        "the reason is not logged:\n{log}"
    );
    // No agent at all now: the pinned maps and links still serve.
    for i in 0..10 {
        let answer = ask_tcp(&client.ns, vip).unwrap_or_else(|e| panic!("connection {i} with no agent: {e}"));
        assert_eq!(answer.server, "backend");
    }

    // The DaemonSet's restart: a healthy agent takes over.
    let agent = node.start_agent_with_source(dir.path());
    agent.wait_backends("10.96.7.1:80/TCP", &[format!("{}:8080", backend.ipv4())]);
    assert_eq!(
        ask_tcp(&client.ns, vip).expect("after the restart").server,
        "backend"
    );
}

/// `weir-agent run --preallocate-bpf-maps`: the Services' maps the agent
/// makes are preallocated and carry real ClusterIP traffic; an agent
/// restarted without the option keeps them (and says so), and serves on.
#[test]
fn root_preallocated_maps_serve_services_and_survive_a_restart_without_the_option() {
    use weir_agent::datapath::{PinLayout, maps};
    let dir = ManifestDir::new();
    let mut node = Node::new("10.90.8.0/24");
    let mut agent = node.start_agent_with_source_and(dir.path(), vec!["--preallocate-bpf-maps".to_owned()]);
    let pins = PinLayout::new(&node.bpffs_root);
    let preallocated = |pins: &PinLayout| -> Vec<bool> {
        maps::PREALLOCATABLE
            .iter()
            .map(|spec| maps::is_preallocated(pins, spec).unwrap_or_else(|e| panic!("{}: {e}", spec.name)))
            .collect()
    };
    assert_eq!(
        preallocated(&pins),
        [true; 3],
        "the agent's flag did not reach the maps"
    );
    let backends = [node.add_pod("backend-a"), node.add_pod("backend-b")];
    let client = node.add_pod("client");
    let _servers: Vec<WhoAmI> = backends
        .iter()
        .map(|p| WhoAmI::start(&p.ns, &p.spec.name, p.ipv4(), &[8080]))
        .collect();
    let name = node.name().to_owned();
    let eps: Vec<Ep> = backends.iter().map(|p| Ep::ready(p.ipv4())).collect();
    dir.write(
        "web.yaml",
        &[
            service("web", "10.96.8.1", &[port("http", 80, "8080", "TCP")]),
            slice("web-x", "web", &name, &[("http", 8080, "TCP")], &eps),
        ],
    );
    let want: Vec<String> = backends.iter().map(|p| format!("{}:8080", p.ipv4())).collect();
    agent.wait_backends("10.96.8.1:80/TCP", &want);
    let vip = SocketAddr::new("10.96.8.1".parse().expect("VIP"), 80);
    let served = |what: &str| -> std::collections::BTreeSet<String> {
        (0..40)
            .map(|i| {
                ask_tcp(&client.ns, vip)
                    .unwrap_or_else(|e| panic!("{what}: connection {i}: {e}"))
                    .server
            })
            .collect()
    };
    assert_eq!(served("preallocated").len(), 2, "both backends serve");

    let mark = agent.log_text().len();
    agent.restart_with(node.ns.name(), Vec::new());
    agent.wait_backends("10.96.8.1:80/TCP", &want);
    assert_eq!(preallocated(&pins), [true; 3], "a restart made the maps again");
    let log = agent.log_since(mark);
    assert!(
        log.contains("the pinned map stays as it was made"),
        "the kept maps are not said:\n{log}"
    );
    assert_eq!(served("after the restart").len(), 2, "both backends serve");
}
