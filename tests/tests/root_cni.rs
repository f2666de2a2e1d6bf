//! `weir-cni` driven exactly as a container runtime drives it (environment + stdin,
//! run in the node's namespace), against real namespaces, veths and traffic.
//!
//! Needs root. Every test builds its own node (a network namespace with its own
//! IPAM state), so they run in parallel and clean up on drop.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
};

use serde_json::{Value, json};
use weir_lab::{
    Netns, Node, Pod,
    node::{PodSpec, result_ips},
    require_root,
    traffic::{EchoServer, tcp_roundtrip, udp_roundtrip},
    unique,
};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

// ---- helpers ---------------------------------------------------------------

fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

fn host_veth_of(result: &Value) -> String {
    let ifaces = result["interfaces"].as_array().expect("interfaces");
    let host = ifaces
        .iter()
        .find(|i| i.get("sandbox").is_none())
        .expect("host interface in result");
    host["name"].as_str().expect("name").to_owned()
}

fn host_mac_of(result: &Value) -> String {
    let ifaces = result["interfaces"].as_array().expect("interfaces");
    let host = ifaces
        .iter()
        .find(|i| i.get("sandbox").is_none())
        .expect("host interface");
    host["mac"].as_str().expect("mac").to_owned()
}

/// The checks every ADD result must pass, for the version it was asked in.
fn assert_result_shape(result: &Value, version: &str, spec: &PodSpec) {
    assert_eq!(result["cniVersion"], version, "{result}");
    let ifaces = result["interfaces"].as_array().expect("interfaces");
    // Chained plugins may add theirs (bandwidth's ifb) after ours.
    assert!(ifaces.len() >= 2, "{result}");
    let host = &ifaces[0];
    assert!(
        host["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("weir") && n.len() == 15),
        "{result}"
    );
    assert!(host.get("sandbox").is_none(), "{result}");
    assert_eq!(host["mac"].as_str().map(str::len), Some(17), "{result}");
    let pod = &ifaces[1];
    assert_eq!(pod["name"], spec.ifname.as_str());
    assert_eq!(pod["sandbox"], spec.netns_path.display().to_string());
    assert_eq!(pod["mac"].as_str().map(str::len), Some(17), "{result}");
    let ips = result["ips"].as_array().expect("ips");
    assert!(!ips.is_empty());
    for ip in ips {
        let addr = ip["address"].as_str().expect("address");
        let v4 = !addr.contains(':');
        assert!(addr.ends_with(if v4 { "/32" } else { "/128" }), "{result}");
        assert_eq!(ip["interface"], 1, "{result}");
        assert!(ip["gateway"].is_string(), "{result}");
        if version.starts_with("0.") {
            assert_eq!(ip["version"], if v4 { "4" } else { "6" }, "{result}");
        } else {
            assert!(
                ip.get("version").is_none(),
                "1.x results have no ips[].version: {result}"
            );
        }
    }
    let routes = result["routes"].as_array().expect("routes");
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "0.0.0.0/0" || r["dst"] == "::/0"),
        "{result}"
    );
    assert!(result["dns"].is_object(), "{result}");
}

/// The pod's address, on-link gateway route, default route and permanent
/// neighbour entry, and the node's route back, are really in the kernel.
fn assert_wired(node: &Node, pod_ns: &Netns, result: &Value) {
    let host = host_veth_of(result);
    let mac = host_mac_of(result);
    let addrs = pod_ns.sh("ip -o addr show dev eth0");
    let routes4 = pod_ns.sh("ip route show");
    let routes6 = pod_ns.sh("ip -6 route show");
    let neigh = pod_ns.sh("ip neigh show dev eth0");
    let node_routes = node.ns.sh("ip route show; ip -6 route show");
    assert!(pod_ns.sh("ip -o link show eth0").contains("UP"), "eth0 is not up");
    for ip in result["ips"].as_array().expect("ips") {
        let cidr = ip["address"].as_str().expect("address");
        let addr = cidr.split('/').next().expect("addr");
        let gw = ip["gateway"].as_str().expect("gateway");
        assert!(addrs.contains(cidr), "pod lacks {cidr}: {addrs}");
        let routes = if addr.contains(':') { &routes6 } else { &routes4 };
        assert!(
            routes.contains(&format!("default via {gw} dev eth0")),
            "no default route via {gw}: {routes}"
        );
        assert!(
            routes.lines().any(|l| l.starts_with(&format!("{gw} dev eth0"))),
            "no on-link route to {gw}: {routes}"
        );
        assert!(
            neigh
                .lines()
                .any(|l| l.starts_with(gw) && l.contains(&mac) && l.contains("PERMANENT")),
            "no permanent neighbour {gw} -> {mac}: {neigh}"
        );
        assert!(
            node_routes
                .lines()
                .any(|l| l.starts_with(&format!("{addr} dev {host}"))),
            "node has no route {addr} dev {host}: {node_routes}"
        );
    }
}

fn assert_traffic(server: &Pod, client: &Pod, ip: IpAddr) {
    let echo = EchoServer::start(&server.ns, SocketAddr::new(ip, 0));
    let msg = format!("hello from {}", client.spec.name);
    let back = tcp_roundtrip(&client.ns, echo.addr, msg.as_bytes())
        .unwrap_or_else(|e| panic!("TCP {} -> {}: {e}", client.spec.name, echo.addr));
    assert_eq!(back, msg.as_bytes());
    let back = udp_roundtrip(&client.ns, echo.addr, msg.as_bytes())
        .unwrap_or_else(|e| panic!("UDP {} -> {}: {e}", client.spec.name, echo.addr));
    assert_eq!(back, msg.as_bytes());
}

// ---- tests -----------------------------------------------------------------

#[test]
fn add_check_del_in_every_version() {
    require_root();
    for version in VERSIONS {
        let mut node = Node::new("10.244.1.0/24");
        node.conf["cniVersion"] = json!(version);
        let (ns, spec) = PodSpec::with_netns("web");
        let result = node.call("ADD", &spec).run().ok();
        assert_result_shape(&result, version, &spec);
        assert_wired(&node, &ns, &result);
        let ip = result_ips(&result)[0];
        assert_eq!(
            ip.to_string(),
            "10.244.1.2",
            "the first pod gets .2 (.1 is the gateway)"
        );
        assert!(node.allocated().contains(&ip));

        let check = node
            .call_with("CHECK", &spec, &with_prev(&node.conf, &result))
            .run();
        if version.starts_with("0.3") {
            check.assert_error(1);
        } else {
            check.ok();
            // CHECK without prevResult is an invalid configuration.
            node.call("CHECK", &spec).run().assert_error(7);
        }

        let host = host_veth_of(&result);
        let del_conf = if version.starts_with("0.3") {
            node.conf.clone()
        } else {
            with_prev(&node.conf, &result)
        };
        node.call_with("DEL", &spec, &del_conf).run().ok();
        assert!(
            !weir_lab::link_exists(&node.ns, &host),
            "{version}: host veth {host} survived DEL"
        );
        assert!(
            !weir_lab::link_exists(&ns, "eth0"),
            "{version}: eth0 survived DEL"
        );
        assert!(node.allocated().is_empty(), "{version}: address not freed");
        // DEL is idempotent.
        node.call_with("DEL", &spec, &del_conf).run().ok();
    }
}

#[test]
fn check_reports_what_differs_and_unknown_containers() {
    require_root();
    let node = Node::new("10.244.2.0/24");
    let pod = node.add_pod("a");
    let conf = with_prev(&node.conf, &pod.result);
    node.call_with("CHECK", &pod.spec, &conf).run().ok();

    let addr = pod.result["ips"][0]["address"]
        .as_str()
        .expect("address")
        .to_owned();
    pod.ns.sh(&format!("ip addr del {addr} dev eth0"));
    let v = node.call_with("CHECK", &pod.spec, &conf).run().assert_error(103);
    assert!(v["msg"].as_str().is_some_and(|m| m.contains(&addr)), "{v}");

    let mut stranger = pod.spec.clone();
    stranger.container_id = unique("ctr-stranger-");
    node.call_with("CHECK", &stranger, &conf).run().assert_error(3);
}

#[test]
fn pod_to_pod_tcp_and_udp_on_one_node() {
    require_root();
    let node = Node::new("10.244.3.0/24");
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    assert_ne!(a.ipv4(), b.ipv4());
    assert_traffic(&a, &b, a.ipv4());
    assert_traffic(&b, &a, b.ipv4());
}

#[test]
fn repeated_add_returns_the_same_address_and_keeps_working() {
    require_root();
    let node = Node::new("10.244.4.0/24");
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let again = node.call("ADD", &a.spec).run().ok();
    assert_eq!(result_ips(&again), a.ips);
    assert_eq!(host_veth_of(&again), host_veth_of(&a.result));
    assert_eq!(again["interfaces"][1]["mac"], a.result["interfaces"][1]["mac"]);
    assert_eq!(node.allocated().len(), 2);
    assert_wired(&node, &a.ns, &again);
    assert_traffic(&a, &b, a.ipv4());
}

#[test]
fn add_refuses_an_interface_it_did_not_create() {
    require_root();
    let node = Node::new("10.244.5.0/24");
    let (ns, spec) = PodSpec::with_netns("squatted");
    ns.sh("ip link add eth0 type veth peer name squatter");
    let out = node.call("ADD", &spec).run();
    assert!(out.error_code() >= 100, "{}", out.stdout);
    assert!(node.allocated().is_empty(), "failed ADD kept its address");
    assert!(
        node.weir_links().is_empty(),
        "failed ADD left {:?}",
        node.weir_links()
    );
    assert!(
        ns.sh("ip link show eth0").contains("eth0@squatter"),
        "the foreign eth0 was touched"
    );
}

#[test]
fn del_after_the_pod_netns_is_gone_frees_the_address() {
    require_root();
    // A single address: the next pod can only be wired if DEL gave it back.
    let node = Node::with_ranges(
        json!([[{ "subnet": "10.244.6.0/24", "rangeStart": "10.244.6.10", "rangeEnd": "10.244.6.10" }]]),
    );
    let Pod { spec, ns, result, .. } = node.add_pod("gone");
    let host = host_veth_of(&result);
    drop(ns);
    node.call("DEL", &spec).run().ok();
    // The runtime may also pass no CNI_NETNS at all.
    let mut no_netns = node.call("DEL", &spec);
    no_netns.netns = None;
    no_netns.run().ok();
    no_netns.netns = Some(String::new());
    no_netns.run().ok();
    assert!(
        !weir_lab::link_exists(&node.ns, &host),
        "host veth {host} survived"
    );
    assert!(node.allocated().is_empty());
    let next = node.add_pod("next");
    assert_eq!(next.ipv4().to_string(), "10.244.6.10");
}

#[test]
fn del_with_host_veth_still_present_but_netns_gone() {
    require_root();
    let node = Node::new("10.244.7.0/24");
    let (ns, spec) = PodSpec::with_netns("x");
    let result = node.call("ADD", &spec).run().ok();
    let host = host_veth_of(&result);
    // Move the pod end back to the node, so that deleting the netns leaves our
    // host veth alive: DEL must still find and delete it by name.
    ns.sh(&format!("ip link set eth0 netns {}", node.ns.name()));
    drop(ns);
    assert!(weir_lab::link_exists(&node.ns, &host));
    node.call("DEL", &spec).run().ok();
    assert!(!weir_lab::link_exists(&node.ns, &host), "DEL left {host}");
    assert!(node.allocated().is_empty());
}

#[test]
fn sixty_four_parallel_adds_get_distinct_addresses() {
    require_root();
    let node = Node::new("10.244.8.0/24");
    let pods: Vec<(Netns, PodSpec)> = (0..64).map(|i| PodSpec::with_netns(&format!("p{i}"))).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|(_, spec)| s.spawn(|| node.call("ADD", spec).run()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread").ok())
            .collect()
    });
    let ips: HashSet<IpAddr> = results.iter().flat_map(result_ips).collect();
    assert_eq!(ips.len(), 64, "duplicate addresses handed out");
    assert_eq!(node.allocated(), ips);
    let veths: HashSet<String> = results.iter().map(host_veth_of).collect();
    assert_eq!(veths.len(), 64);
}

#[test]
fn exhaustion_is_a_clear_error_and_status_says_so() {
    require_root();
    let node = Node::with_ranges(
        json!([[{ "subnet": "10.244.9.0/24", "rangeStart": "10.244.9.20", "rangeEnd": "10.244.9.21" }]]),
    );
    node.call_plain("STATUS", &node.conf).run().ok();
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let mut got: Vec<String> = [a.ipv4(), b.ipv4()].iter().map(ToString::to_string).collect();
    got.sort();
    assert_eq!(got, ["10.244.9.20", "10.244.9.21"]);

    let (ns, spec) = PodSpec::with_netns("c");
    let out = node.call("ADD", &spec).run();
    let code = out.error_code();
    assert!(
        code >= 100,
        "exhaustion must be a plugin error (>= 100), got {code}"
    );
    let msg = out.json()["msg"].as_str().unwrap_or_default().to_owned();
    assert!(
        msg.contains("10.244.9.0/24"),
        "message does not name the range: {msg}"
    );
    assert!(
        !weir_lab::link_exists(&ns, "eth0"),
        "failed ADD left eth0 in the pod"
    );
    assert_eq!(
        node.weir_links().len(),
        2,
        "failed ADD left a veth: {:?}",
        node.weir_links()
    );

    let v = node.call_plain("STATUS", &node.conf).run().assert_error(50);
    assert!(
        v["msg"].as_str().is_some_and(|m| m.contains("10.244.9.0/24")),
        "{v}"
    );

    node.del_pod(&a).ok();
    node.call_plain("STATUS", &node.conf).run().ok();
}

#[test]
fn status_needs_a_configured_node_and_version_1_1_0() {
    require_root();
    let node = Node::new("10.244.10.0/24");
    let mut unconfigured = node.conf.clone();
    unconfigured["ipam"] = json!({ "dataDir": node.state_dir.join("ipam") });
    node.call_plain("STATUS", &unconfigured).run().assert_error(50);
    let mut old = node.conf.clone();
    old["cniVersion"] = json!("1.0.0");
    node.call_plain("STATUS", &old).run().assert_error(1);
    node.call_plain("GC", &old).run().assert_error(1);
    let mut with_agent = node.conf.clone();
    with_agent["agentSocket"] = json!(node.state_dir.join("no-agent.sock"));
    node.call_plain("STATUS", &with_agent).run().assert_error(50);
}

#[test]
fn gc_frees_what_is_not_valid_and_keeps_the_rest() {
    require_root();
    let node = Node::new("10.244.11.0/24");
    let keep = node.add_pod("keep");
    let stale1 = node.add_pod("stale1");
    let stale2 = node.add_pod("stale2");
    // A veth of ours on another network must survive this network's GC.
    let mut other_net = node.conf.clone();
    other_net["name"] = json!("other-net");
    other_net["ipam"]["ranges"] = json!([[{ "subnet": "10.244.111.0/24" }]]);
    let (other_ns, other_spec) = PodSpec::with_netns("other");
    let other = node.call_with("ADD", &other_spec, &other_net).run().ok();

    let mut gc = node.conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{ "containerID": keep.spec.container_id, "ifname": "eth0" }]);
    node.call_plain("GC", &gc).run().ok();

    assert_eq!(node.allocated(), HashSet::from([keep.ipv4()]));
    assert!(weir_lab::link_exists(&node.ns, &host_veth_of(&keep.result)));
    assert!(!weir_lab::link_exists(&node.ns, &host_veth_of(&stale1.result)));
    assert!(!weir_lab::link_exists(&node.ns, &host_veth_of(&stale2.result)));
    assert!(
        weir_lab::link_exists(&node.ns, &host_veth_of(&other)),
        "GC touched another network's veth"
    );
    assert!(weir_lab::link_exists(&other_ns, "eth0"));
    assert_wired(&node, &keep.ns, &keep.result);

    // GC without the list would wipe everything: refused.
    node.call_plain("GC", &node.conf).run().assert_error(7);
}

#[test]
fn chained_with_portmap_bandwidth_and_tuning() {
    require_root();
    weir_lab::cni::reference_plugins_dir();
    let node = Node::new("10.244.12.0/24");
    let mut weir = node.conf.clone();
    weir.as_object_mut().expect("object").remove("cniVersion");
    let plugins = [
        weir,
        json!({ "type": "tuning", "sysctl": { "net.ipv4.conf.eth0.rp_filter": "2" } }),
        json!({
            "type": "bandwidth",
            "ingressRate": 8_000_000, "ingressBurst": 100_000,
            "egressRate": 8_000_000, "egressBurst": 100_000,
        }),
        json!({
            "type": "portmap", "capabilities": { "portMappings": true },
            "runtimeConfig": { "portMappings": [{ "hostPort": 18080, "containerPort": 80, "protocol": "tcp" }] },
        }),
    ];
    let (ns, spec) = PodSpec::with_netns("chained");
    let result = node.run_chain(&spec, "ADD", &plugins, None);
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_result_shape(&result, "1.0.0", &spec);
    assert_wired(&node, &ns, &result);
    assert_eq!(
        ns.sh("sysctl -n net.ipv4.conf.eth0.rp_filter").trim(),
        "2",
        "tuning did not apply"
    );
    let host = host_veth_of(&result);
    let qdisc = node.ns.sh(&format!("tc qdisc show dev {host}"));
    assert!(qdisc.contains("tbf"), "bandwidth did not shape {host}: {qdisc}");

    // libcni passes the cached result to every plugin's DEL, in reverse order.
    node.run_chain(&spec, "DEL", &plugins, Some(&result));
    assert!(!weir_lab::link_exists(&node.ns, &host));
    assert!(node.allocated().is_empty());
}

#[test]
fn dual_stack_pods_talk_over_ipv6() {
    require_root();
    let node =
        Node::with_ranges(json!([[{ "subnet": "10.244.13.0/24" }], [{ "subnet": "fd00:10:244:13::/64" }]]));
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    for pod in [&a, &b] {
        assert_eq!(pod.ips.len(), 2, "{}", pod.result);
        assert!(pod.ips[0].is_ipv4() && pod.ips[1].is_ipv6(), "{}", pod.result);
        assert_result_shape(&pod.result, "1.1.0", &pod.spec);
        assert_wired(&node, &pod.ns, &pod.result);
    }
    assert_eq!(a.ips[1].to_string(), "fd00:10:244:13::2");
    assert_traffic(&a, &b, a.ips[1]);
    assert_traffic(&b, &a, b.ips[0]);
    node.del_pod(&a).ok();
    assert_eq!(node.allocated(), b.ips.iter().copied().collect());
}

#[test]
fn malformed_and_hostile_input_gets_the_right_error_codes() {
    require_root();
    let node = Node::new("10.244.14.0/24");
    let (_ns, spec) = PodSpec::with_netns("x");
    let raw = |stdin: &[u8]| {
        let mut c = node.call("ADD", &spec);
        c.stdin = stdin.to_vec();
        c.run()
    };
    let good = serde_json::to_vec(&node.conf).expect("json");
    raw(&good[..good.len() / 2]).assert_error(6);
    raw(b"").assert_error(6);
    raw(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0xff, 0x7b]).assert_error(6);
    raw(b"null").assert_error(6);
    let mut big = node.conf.clone();
    big["mtu"] = json!("big");
    node.call_with("ADD", &spec, &big).run().assert_error(6);
    let mut future = node.conf.clone();
    future["cniVersion"] = json!("9.9.9");
    let v = node.call_with("ADD", &spec, &future).run().assert_error(1);
    assert!(v["msg"].as_str().is_some_and(|m| m.contains("9.9.9")), "{v}");
    let mut bad_subnet = node.conf.clone();
    bad_subnet["ipam"]["ranges"] = json!([[{ "subnet": "10.0.0.0/99" }]]);
    node.call_with("ADD", &spec, &bad_subnet).run().assert_error(7);
    let mut no_ranges = node.conf.clone();
    no_ranges["ipam"] = json!({});
    node.call_with("ADD", &spec, &no_ranges).run().assert_error(7);

    for var in ["command", "container_id", "ifname", "netns"] {
        let mut c = node.call("ADD", &spec);
        match var {
            "command" => c.command = None,
            "container_id" => c.container_id = None,
            "ifname" => c.ifname = None,
            _ => c.netns = None,
        }
        let v = c.run().assert_error(4);
        assert!(
            v["msg"].as_str().is_some_and(|m| m.contains("CNI_")),
            "{var}: {v}"
        );
    }
    let mut c = node.call("ADD", &spec);
    c.command = Some("EXPLODE".into());
    c.run().assert_error(4);
    let mut c = node.call("ADD", &spec);
    c.container_id = Some("bad/id".into());
    c.run().assert_error(4);
    let mut c = node.call("ADD", &spec);
    c.ifname = Some("much-too-long-ifname".into());
    c.run().assert_error(4);
    let mut c = node.call("ADD", &spec);
    c.netns = Some("/var/run/netns/does-not-exist".into());
    c.run().assert_error(4);
    let mut c = node.call("ADD", &spec);
    c.netns = Some("/etc/hostname".into());
    c.run().assert_error(4);

    // VERSION needs nothing but CNI_COMMAND.
    let v = node.call_plain("VERSION", &node.conf).run().ok();
    assert_eq!(v["supportedVersions"], json!(VERSIONS));
    let mut empty = node.call_plain("VERSION", &node.conf);
    empty.stdin.clear();
    assert_eq!(empty.run().ok()["supportedVersions"], json!(VERSIONS));

    assert!(node.allocated().is_empty(), "a rejected ADD allocated");
    assert!(
        node.weir_links().is_empty(),
        "a rejected ADD created {:?}",
        node.weir_links()
    );
}

#[test]
fn delegates_ipam_to_host_local() {
    require_root();
    let node = Node::new("10.244.15.0/24");
    let hl_dir = node.state_dir.join("host-local");
    let mut conf = node.conf.clone();
    // Debian's reference plugins speak CNI up to 1.0.0.
    conf["cniVersion"] = json!("1.0.0");
    conf["ipam"] =
        json!({ "type": "host-local", "ranges": [[{ "subnet": "10.244.15.0/24" }]], "dataDir": hl_dir });
    let (ns, spec) = PodSpec::with_netns("hl");
    let result = node.call_with("ADD", &spec, &conf).run().ok();
    assert_result_shape(&result, "1.0.0", &spec);
    assert_wired(&node, &ns, &result);
    let ip = result_ips(&result)[0];
    let store = hl_dir.join("weir-lab").join(ip.to_string());
    assert!(
        store.is_file(),
        "host-local did not record {ip} in {}",
        store.display()
    );
    node.call_with("CHECK", &spec, &with_prev(&conf, &result))
        .run()
        .ok();
    node.call_with("DEL", &spec, &with_prev(&conf, &result))
        .run()
        .ok();
    assert!(!store.exists(), "host-local still holds {ip}");
    assert!(node.weir_links().is_empty());

    // An IPAM error is passed through: host-local's own code and message.
    let mut broken = conf.clone();
    broken["ipam"]["ranges"] = json!([[{ "subnet": "not-a-subnet" }]]);
    let out = node.call_with("ADD", &spec, &broken).run();
    assert!(out.error_code() > 0);
    assert!(node.weir_links().is_empty());
}

#[test]
fn unreachable_agent_fails_add_with_try_again_and_leaves_nothing() {
    require_root();
    let node = Node::new("10.244.16.0/24");
    let socket = node.state_dir.join("no-agent.sock");
    let mut conf = node.conf.clone();
    conf["agentSocket"] = json!(socket);
    let (ns, spec) = PodSpec::with_netns("lonely");
    let v = node.call_with("ADD", &spec, &conf).run().assert_error(11);
    assert!(
        v["msg"]
            .as_str()
            .is_some_and(|m| m.contains(&socket.display().to_string())),
        "{v}"
    );
    assert!(node.weir_links().is_empty(), "left {:?}", node.weir_links());
    assert!(!weir_lab::link_exists(&ns, "eth0"));
    assert!(node.allocated().is_empty());
    // DEL does not need the agent.
    node.call_with("DEL", &spec, &conf).run().ok();
}

#[test]
fn mtu_from_config_and_from_the_uplink() {
    require_root();
    let node = Node::new("10.244.17.0/24");
    let mut conf = node.conf.clone();
    conf["mtu"] = json!(1400);
    let (ns, spec) = PodSpec::with_netns("m");
    let result = node.call_with("ADD", &spec, &conf).run().ok();
    assert!(ns.sh("ip link show eth0").contains("mtu 1400"));
    assert!(
        node.ns
            .sh(&format!("ip link show {}", host_veth_of(&result)))
            .contains("mtu 1400")
    );

    // No mtu: the node's uplink (the IPv4 default route's link) decides.
    node.ns.sh("ip link add uplink0 mtu 1450 type veth peer name uplink0p && ip link set uplink0 up && ip addr add 192.0.2.1/24 dev uplink0 && ip route add default via 192.0.2.254 dev uplink0");
    let (ns2, spec2) = PodSpec::with_netns("m2");
    node.call("ADD", &spec2).run().ok();
    assert!(
        ns2.sh("ip link show eth0").contains("mtu 1450"),
        "{}",
        ns2.sh("ip link show eth0")
    );
}
