//! `weir-cni` against hostile and broken input, and killed in the middle of an
//! `ADD` as a runtime's timeout does: nothing of the node is touched, nothing
//! is lost. Needs root (namespaces, veths).

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::json;
use weir_lab::{CniCall, Node, PodSpec, link_exists, require_root};

/// The node's routes, both families, as `ip` prints them.
fn routes(node: &Node) -> String {
    node.ns.sh("ip route show table all; ip -6 route show table all")
}

/// A node with an uplink and a default route through it, as real nodes have.
fn node_with_uplink(cidr: &str) -> Node {
    let node = Node::new(cidr);
    node.ns.sh(
        "ip link add up0 type veth peer name up0p && ip link set up0 up && ip link set up0p up \
         && ip addr add 192.0.2.1/24 dev up0 && ip route add default via 192.0.2.254 dev up0 \
         && ip -6 addr add 2001:db8::1/64 dev up0 nodad && ip -6 route add default via 2001:db8::fe dev up0",
    );
    node
}

#[test]
fn root_the_plugins_own_namespace_is_refused_and_the_node_untouched() {
    require_root();
    let node = node_with_uplink("10.244.40.0/24");
    let before = routes(&node);
    assert!(before.contains("default via 192.0.2.254 dev up0"), "{before}");
    let own_paths = [
        "/proc/self/ns/net".to_owned(),
        "/proc/thread-self/ns/net".to_owned(),
        node.ns.path().display().to_string(),
    ];
    for (i, path) in own_paths.iter().enumerate() {
        let spec = PodSpec {
            name: format!("own{i}"),
            container_id: format!("own-netns-{i}"),
            netns_path: path.into(),
            ifname: format!("weirpod{i}"),
        };
        for command in ["ADD", "CHECK"] {
            let mut call = node.call(command, &spec);
            if command == "CHECK" {
                let mut conf = node.conf.clone();
                conf["prevResult"] = json!({ "cniVersion": "1.1.0", "interfaces": [], "ips": [] });
                call = call.config(&conf);
            }
            let v = call.run().assert_error(4);
            assert!(
                v["msg"]
                    .as_str()
                    .is_some_and(|m| m.contains("own network namespace")),
                "{command} {path}: {v}"
            );
        }
        assert_eq!(routes(&node), before, "ADD in {path} touched the node's routes");
        assert!(node.weir_links().is_empty(), "{:?}", node.weir_links());
        assert!(!link_exists(&node.ns, &spec.ifname));
        assert!(node.allocated().is_empty(), "a refused ADD allocated");
        // DEL of what never was succeeds and changes nothing either.
        node.call("DEL", &spec).run().ok();
        assert_eq!(routes(&node), before, "DEL in {path} touched the node's routes");
    }
}

#[test]
fn root_routes_already_in_the_pod_are_never_replaced() {
    require_root();
    let node = Node::new("10.244.41.0/24");
    let (ns, spec) = PodSpec::with_netns("multi");
    // The pod already has a default route of its own (another interface).
    ns.sh(
        "ip link add other0 type veth peer name other0p && ip link set other0 up \
         && ip addr add 198.51.100.2/24 dev other0 && ip route add default via 198.51.100.1 dev other0",
    );
    let before = ns.sh("ip route show");
    let v = node.call("ADD", &spec).run().assert_error(101);
    assert!(
        v["msg"]
            .as_str()
            .is_some_and(|m| m.contains("0.0.0.0/0") && m.contains("left as it is")),
        "{v}"
    );
    assert_eq!(ns.sh("ip route show"), before, "the pod's default route changed");
    // Everything the failed ADD did is undone.
    assert!(node.weir_links().is_empty(), "{:?}", node.weir_links());
    assert!(!link_exists(&ns, "eth0"));
    assert!(node.allocated().is_empty());

    // A repeated ADD of a pod that works finds its own routes and succeeds.
    let pod = node.add_pod("again");
    let again = node.call("ADD", &pod.spec).run().ok();
    assert_eq!(again["ips"], pod.result["ips"]);
}

#[test]
fn root_validation_gaps_are_closed() {
    require_root();
    let node = Node::new("10.244.42.0/24");
    let (_ns, spec) = PodSpec::with_netns("v");
    let mut c = node.call("ADD", &spec);
    c.ifname = Some("eth%d".into());
    c.run().assert_error(4);
    let mut c = node.call("ADD", &spec);
    c.container_id = Some("c".repeat(1025));
    let v = c.run().assert_error(4);
    assert!(
        v["msg"].as_str().is_some_and(|m| m.len() < 512),
        "the message echoes the whole id: {} bytes",
        v["msg"].as_str().map_or(0, str::len)
    );
    for (field, value) in [
        ("name", json!("n".repeat(250))),
        ("ipam", json!({ "ranges": [[{ "subnet": "127.0.0.0/8" }]] })),
        ("ipam", json!({ "ranges": [[{ "subnet": "0.0.0.0/0" }]] })),
        ("ipam", json!({ "ranges": [[{ "subnet": "::/0" }]] })),
        ("ipam", json!({ "ranges": [[{ "subnet": "169.254.0.0/24" }]] })),
        ("ipam", json!({ "ranges": [[{ "subnet": "224.1.0.0/24" }]] })),
        (
            "ipam",
            json!({ "ranges": [[{ "subnet": "10.244.42.0/24" }]], "rangeStart": "10.244.42.9" }),
        ),
        (
            "ipam",
            json!({ "ranges": [[{ "subnet": "10.244.42.0/24" }]], "dataDir": "" }),
        ),
        (
            "ipam",
            json!({ "ranges": [[{ "subnet": "10.244.42.0/24" }]], "dataDir": "rel/dir" }),
        ),
    ] {
        let mut conf = node.conf.clone();
        conf[field] = value.clone();
        node.call_with("ADD", &spec, &conf).run().assert_error(7);
    }
    assert!(node.weir_links().is_empty());
    assert!(node.allocated().is_empty());

    // A long container id (the alias is cut to fit) is wired, and DEL frees it.
    let (ns, mut long) = PodSpec::with_netns("long");
    long.container_id = "c".repeat(300);
    let result = node.call("ADD", &long).run().ok();
    assert!(link_exists(&ns, "eth0"), "{result}");
    node.call("DEL", &long).run().ok();
    assert!(node.weir_links().is_empty());
    assert!(node.allocated().is_empty());
}

/// How long an ADD takes here, so that kills land all along it.
fn add_duration(node: &Node) -> Duration {
    let pod = node.add_pod("timing");
    let start = Instant::now();
    node.call("ADD", &pod.spec).run().ok();
    let repeat = start.elapsed();
    node.del_pod(&pod).ok();
    // A fresh ADD does more than a repeated one (veth, IPAM write).
    repeat * 3
}

/// Runs `call` and kills it (SIGKILL) after `after`, if it is still running.
fn run_killed(call: &CniCall, after: Duration) {
    let mut child = call.spawn(Stdio::null(), Stdio::null());
    std::thread::sleep(after);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn root_adds_killed_at_random_points_leave_nothing_after_del_or_gc() {
    require_root();
    let node = Node::new("10.244.43.0/24");
    let span = add_duration(&node);
    println!("ADD takes about {span:?}");
    let mut rng = weir_lab::rng::Rng::from_env();
    const N: usize = 64;
    let mut specs = Vec::new();
    let mut namespaces = Vec::new();
    for i in 0..N {
        let (ns, spec) = PodSpec::with_netns(&format!("k{i}"));
        let at = span.mul_f64(rng.fraction());
        run_killed(&node.call("ADD", &spec), at);
        specs.push(spec);
        namespaces.push(ns);
    }
    let touched = node.allocated().len() + node.weir_links().len();
    println!(
        "after {N} killed ADDs: {} addresses, {} veths, files {:?}",
        node.allocated().len(),
        node.weir_links().len(),
        node.store_files()
    );
    assert!(
        touched > 0,
        "no kill landed after the ADD had done anything: the test tests nothing"
    );

    // The first half is cleaned by DEL, as the runtime does after a failed ADD...
    for spec in &specs[..N / 2] {
        node.call("DEL", spec).run().ok();
    }
    // ... the rest by GC, as after a runtime restart that lost them.
    let mut gc = node.conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    node.call_plain("GC", &gc).run().ok();

    assert!(
        node.allocated().is_empty(),
        "addresses left: {:?}",
        node.allocated()
    );
    let stray: Vec<String> = node
        .store_files()
        .into_iter()
        .filter(|f| f != "lock" && !f.starts_with("last_reserved_ip."))
        .collect();
    assert!(stray.is_empty(), "files left in the IPAM store: {stray:?}");
    assert!(
        node.weir_links().is_empty(),
        "veths left: {:?}",
        node.weir_links()
    );
    for (ns, spec) in namespaces.iter().zip(&specs) {
        assert!(!link_exists(ns, &spec.ifname), "{} kept its eth0", spec.name);
    }
    // And the node still wires pods.
    let pod = node.add_pod("after");
    assert_eq!(pod.ips.len(), 1);
}
