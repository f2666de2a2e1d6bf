//! Tier 2 (root + namespaces + containerd): a two-node lab comes up the way a
//! cluster does. The API server (the lab's) holds a Node object per node with
//! its pod CIDR and address; each node's agent (`--source kube`) reads its own,
//! writes the node's conflist (weir-cni, then the chained portmap it finds in
//! the plugin directory) and becomes ready; a container runtime (containerd,
//! `ctr run --cni`, running in the node's network namespace and reading that
//! conflist as the kubelet's runtime does) starts containers, which reach each
//! other across the nodes and through a Service.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;
use weir_lab::{
    Agent, Node, TempDir, bins,
    containerd::{self, Containerd, DISTRO_CNI_BIN, Run, Running, busybox_rootfs, copy_executable},
    require_root,
    services::{Cluster, Ep, SourceKind, node_object, port, service, slice},
    underlay::Underlay,
    unique,
};

const VIP: &str = "10.96.0.88";

/// A lab node as a cluster node: its conflist directory (written by the
/// agent), its IPAM store (what the plugin sees as `/var/lib/weir`).
struct ClusterNode {
    agent: Agent,
    net_d: PathBuf,
    var_lib_weir: PathBuf,
    node: Node,
}

impl ClusterNode {
    fn run(&self, id: &str, rootfs: &Path, cni_bin: &Path, script: String) -> Run {
        Run {
            id: id.to_owned(),
            rootfs: Some(rootfs.to_owned()),
            net_d: Some(self.net_d.clone()),
            cni_bin: Some(cni_bin.to_owned()),
            netns: Some(self.node.name().to_owned()),
            binds: vec![(self.var_lib_weir.clone(), PathBuf::from("/var/lib/weir"))],
            args: vec!["/bin/sh".into(), "-c".into(), script],
            ..Run::default()
        }
    }
}

/// Waits for `path` to hold a line; its content.
fn wait_file(path: &Path, running: &Running) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return s.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{} never written; the container said:\n{}",
            path.display(),
            running.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn root_kube_two_nodes_come_up_as_a_cluster_and_run_containers() {
    require_root();
    containerd::require_tools();
    let dir = TempDir::new("weir-cluster-");
    let cluster = Cluster::new(SourceKind::Kube);
    let underlay = Underlay::new(88);
    let mut nodes = vec![Node::new("10.88.1.0/24"), Node::new("10.88.2.0/24")];
    let ips = underlay.join(&nodes.iter().collect::<Vec<_>>());
    // What the controller manager (podCIDRs) and the kubelets (addresses) leave.
    let objects: Vec<Value> = nodes
        .iter()
        .zip(&ips)
        .map(|(n, ip)| node_object(n.name(), &[&n.pod_cidr()], &[*ip]))
        .collect();
    cluster.write("nodes", &objects);

    // The node's CNI plugin directory: weir-cni (as the DaemonSet's init
    // container installs it) beside the reference plugins.
    let cni_bin = dir.join("cni-bin");
    std::fs::create_dir_all(&cni_bin).expect("cni-bin");
    for plugin in ["portmap", "loopback"] {
        copy_executable(&Path::new(DISTRO_CNI_BIN).join(plugin), &cni_bin.join(plugin));
    }
    let install = std::process::Command::new(bins::path("weir-agent"))
        .args(["install-cni", "--from"])
        .arg(bins::path("weir-cni"))
        .arg("--to")
        .arg(&cni_bin)
        .output()
        .expect("weir-agent install-cni");
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );

    let cluster_nodes: Vec<ClusterNode> = nodes
        .drain(..)
        .enumerate()
        .map(|(i, mut node)| {
            let net_d = dir.join(format!("node{i}/net.d"));
            let var_lib_weir = dir.join(format!("node{i}/var-lib-weir"));
            std::fs::create_dir_all(&net_d).expect("net.d");
            std::fs::create_dir_all(&var_lib_weir).expect("var/lib/weir");
            let agent = node.start_agent_for_with(
                &cluster,
                vec![
                    format!("--cni-conf-file={}", net_d.join("05-weir.conflist").display()),
                    format!("--cni-bin-dir={}", cni_bin.display()),
                ],
            );
            ClusterNode {
                agent,
                net_d,
                var_lib_weir,
                node,
            }
        })
        .collect();
    for (i, n) in cluster_nodes.iter().enumerate() {
        n.agent.wait_ready();
        let conflist: Value =
            serde_json::from_slice(&std::fs::read(n.net_d.join("05-weir.conflist")).expect("conflist"))
                .expect("JSON");
        let types: Vec<&str> = conflist["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .filter_map(|p| p["type"].as_str())
            .collect();
        assert_eq!(types, ["weir-cni", "portmap"], "node {i}: {conflist}");
        assert_eq!(
            conflist["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            n.node.pod_cidr()
        );
    }

    let rootfs = busybox_rootfs(&dir.join("rootfs"));
    let runtime = Containerd::start(dir.path());

    // A web server on node 0, until told to stop.
    let srv = unique("srv");
    std::fs::create_dir_all(rootfs.join(format!("www-{srv}"))).expect("www");
    std::fs::write(
        rootfs.join(format!("www-{srv}/index.html")),
        "hello from the server\n",
    )
    .expect("index");
    let server = runtime.start_run(&cluster_nodes[0].run(
        &srv,
        &rootfs,
        &cni_bin,
        format!(
            "set -e
ip -4 -o addr show dev eth0 | sed 's/.* inet \\([0-9.]*\\).*/\\1/' > /tmp/ip-{srv}.tmp
mv /tmp/ip-{srv}.tmp /ip-{srv}
httpd -p 8080 -h /www-{srv}
while [ ! -e /stop-{srv} ]; do sleep 0.2; done
echo stopped"
        ),
    ));
    let srv_ip: Ipv4Addr = wait_file(&rootfs.join(format!("ip-{srv}")), &server)
        .parse()
        .expect("server address");
    assert!(
        srv_ip.to_string().starts_with("10.88.1."),
        "node 0's pod CIDR: {srv_ip}"
    );
    cluster.write(
        "web",
        &[
            service("web", VIP, &[port("http", 80, "8080", "TCP")]),
            slice(
                "web-x",
                "web",
                cluster_nodes[0].node.name(),
                &[("http", 8080, "TCP")],
                &[Ep::ready(IpAddr::V4(srv_ip))],
            ),
        ],
    );
    for n in &cluster_nodes {
        n.agent
            .wait_backends(&format!("{VIP}:80/TCP"), &[format!("{srv_ip}:8080")]);
    }

    // Clients on both nodes: the server directly (across the underlay from
    // node 1) and through its Service.
    for (i, n) in cluster_nodes.iter().enumerate() {
        let id = unique("cli");
        let out = runtime.run(
            &n.run(
                &id,
                &rootfs,
                &cni_bin,
                format!(
                    "set -e
echo \"### ip $(ip -4 -o addr show dev eth0)\"
get() {{ printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 \"$1\" \"$2\" | tail -n 1; }}
echo \"### direct $(get {srv_ip} 8080)\"
echo \"### service $(get {VIP} 80)\""
                ),
            ),
            Duration::from_secs(60),
        );
        assert_eq!(
            out.exit_code,
            Some(0),
            "client on node {i}: {}\n{}\n{}",
            out.stdout,
            out.stderr,
            runtime.log()
        );
        assert!(
            out.stdout
                .contains(&format!("inet {}", n.node.pod_cidr().trim_end_matches("0/24"))),
            "node {i}'s pod CIDR: {}",
            out.stdout
        );
        for how in ["direct", "service"] {
            assert!(
                out.stdout.contains(&format!("### {how} hello from the server")),
                "client on node {i}, {how}: {}",
                out.stdout
            );
        }
    }

    // The server stops: DEL (by ctr, after the task ends) releases its address.
    std::fs::write(rootfs.join(format!("stop-{srv}")), "").expect("stop");
    let out = server.wait(Duration::from_secs(30));
    assert_eq!(out.exit_code, Some(0), "{}\n{}", out.stdout, out.stderr);
    let store = cluster_nodes[0].var_lib_weir.join("ipam");
    let left: Vec<String> = walk(&store)
        .into_iter()
        .filter(|f| f.contains(&srv_ip.to_string()))
        .collect();
    assert!(
        left.is_empty(),
        "DEL left the server's address reserved: {left:?}"
    );
    let endpoints = cluster_nodes[0].agent.weirctl(&["endpoints"]);
    assert!(
        !endpoints.to_string().contains(&srv_ip.to_string()),
        "DEL left the server registered with the agent: {endpoints}"
    );
}

/// Every file under `dir` (paths).
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path.display().to_string());
            }
        }
    }
    out
}
