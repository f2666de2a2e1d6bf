//! A lab that comes up the way a cluster does: the lab's API server holds a
//! Node object per node (its pod CIDR, its address); each node's agent
//! (`--source kube`) reads its own, writes the node's conflist (weir-cni, then
//! the chained portmap it finds in the plugin directory) and becomes ready; a
//! container runtime (containerd, `ctr run --cni` in the node's network
//! namespace, reading that conflist as the kubelet's runtime does) starts
//! containers. Used by `tests/tests/root_kube_cluster.rs` and the main job's
//! second act.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    Agent, Node, TempDir, bins,
    containerd::{Containerd, DISTRO_CNI_BIN, Run, RunOutput, Running, busybox_rootfs, copy_executable},
    services::{Cluster, SourceKind, node_object},
    underlay::{Routing, Underlay},
};

/// A lab node as a cluster node. Field order is drop order: the agent before
/// its node.
pub struct ClusterNode {
    pub agent: Agent,
    /// The node's `/etc/cni/net.d`, where its agent writes the conflist.
    pub net_d: PathBuf,
    /// What the plugin sees as `/var/lib/weir` (its IPAM store) on this node.
    pub var_lib_weir: PathBuf,
    /// The node's address on the underlay (its Node's InternalIP).
    pub ip: IpAddr,
    pub node: Node,
}

impl ClusterNode {
    /// The conflist the agent wrote.
    pub fn conflist(&self) -> Value {
        let path = self.net_d.join("05-weir.conflist");
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .expect("the conflist is JSON")
    }
}

/// Field order is drop order: containers' runtime first, then the agents and
/// nodes, the API, the directories.
pub struct KubeLab {
    pub runtime: Containerd,
    pub nodes: Vec<ClusterNode>,
    pub cluster: Cluster,
    pub underlay: Underlay,
    /// The nodes' CNI plugin directory (weir-cni beside portmap and loopback).
    pub cni_bin: PathBuf,
    /// The containers' busybox root filesystem (shared: they talk to the test
    /// through files in it).
    pub rootfs: PathBuf,
    pub dir: TempDir,
}

impl KubeLab {
    /// Nodes with these pod CIDRs on underlay `n`, their Node objects in the
    /// API, their agents ready: routing between nodes by the harness
    /// (`routing` `None`), or by the agents, from the Node objects.
    pub fn new(n: u8, pod_cidrs: &[&str], routing: Option<Routing>) -> Self {
        crate::containerd::require_tools();
        let dir = TempDir::new("weir-kube-lab-");
        let cluster = Cluster::new(SourceKind::Kube);
        let underlay = Underlay::new(n);
        let mut nodes: Vec<Node> = pod_cidrs.iter().map(|c| Node::new(c)).collect();
        let ips = underlay.connect(&nodes.iter().collect::<Vec<_>>(), routing);
        // What the controller manager (podCIDRs) and the kubelets (addresses) leave.
        let objects: Vec<Value> = nodes
            .iter()
            .zip(&ips)
            .map(|(n, ip)| node_object(n.name(), &[&n.pod_cidr()], &[*ip]))
            .collect();
        cluster.write("nodes", &objects);

        // weir-cni installed as the DaemonSet's init container does, beside the
        // reference plugins.
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

        let nodes: Vec<ClusterNode> = nodes
            .drain(..)
            .zip(ips)
            .enumerate()
            .map(|(i, (mut node, ip))| {
                let net_d = dir.join(format!("node{i}/net.d"));
                let var_lib_weir = dir.join(format!("node{i}/var-lib-weir"));
                std::fs::create_dir_all(&net_d).expect("net.d");
                std::fs::create_dir_all(&var_lib_weir).expect("var/lib/weir");
                let mut flags = vec![
                    format!("--cni-conf-file={}", net_d.join("05-weir.conflist").display()),
                    format!("--cni-bin-dir={}", cni_bin.display()),
                ];
                flags.extend(routing.map(Routing::flags).unwrap_or_default());
                let agent = node.start_agent_for_with(&cluster, flags);
                ClusterNode {
                    agent,
                    net_d,
                    var_lib_weir,
                    ip,
                    node,
                }
            })
            .collect();
        for n in &nodes {
            n.agent.wait_ready();
        }
        let rootfs = busybox_rootfs(&dir.join("rootfs"));
        let runtime = Containerd::start(dir.path());
        Self {
            runtime,
            nodes,
            cluster,
            underlay,
            cni_bin,
            rootfs,
            dir,
        }
    }

    /// A `ctr run` of `script` (busybox sh) on node `i`.
    fn run_spec(&self, i: usize, id: &str, script: String) -> Run {
        let n = &self.nodes[i];
        Run {
            id: id.to_owned(),
            rootfs: Some(self.rootfs.clone()),
            net_d: Some(n.net_d.clone()),
            cni_bin: Some(self.cni_bin.clone()),
            netns: Some(n.node.name().to_owned()),
            binds: vec![(n.var_lib_weir.clone(), PathBuf::from("/var/lib/weir"))],
            args: vec!["/bin/sh".into(), "-c".into(), script],
            ..Run::default()
        }
    }

    /// Starts a web server container on node `i` (busybox httpd on :8080,
    /// serving `body`) until [`KubeLab::stop`]; its address.
    pub fn start_server(&self, i: usize, id: &str, body: &str) -> (Running, IpAddr) {
        let www = self.rootfs.join(format!("www-{id}"));
        std::fs::create_dir_all(&www).expect("www");
        std::fs::write(www.join("index.html"), format!("{body}\n")).expect("index");
        let running = self.runtime.start_run(&self.run_spec(
            i,
            id,
            format!(
                "set -e
ip -4 -o addr show dev eth0 | sed 's/.* inet \\([0-9.]*\\).*/\\1/' > /tmp/ip-{id}.tmp
mv /tmp/ip-{id}.tmp /ip-{id}
httpd -p 8080 -h /www-{id}
while [ ! -e /stop-{id} ]; do sleep 0.2; done
echo stopped"
            ),
        ));
        let path = self.rootfs.join(format!("ip-{id}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let ip = loop {
            if let Ok(s) = std::fs::read_to_string(&path)
                && let Ok(ip) = s.trim().parse()
            {
                break ip;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} never got an address:\n{}",
                running.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        (running, ip)
    }

    /// Tells server `id` to stop; what it printed and how it ended (after
    /// `ctr` ran DEL).
    pub fn stop(&self, server: Running) -> RunOutput {
        std::fs::write(self.rootfs.join(format!("stop-{}", server.id)), "").expect("stop");
        server.wait(Duration::from_secs(30))
    }

    /// Runs a client container on node `i` that fetches each of `targets`
    /// (`ip:port`, HTTP GET /); its output, a line `### <target> <last line
    /// of the answer>` each, after `### ip <its address>`.
    pub fn fetch(&self, i: usize, id: &str, targets: &[String]) -> RunOutput {
        let mut script = String::from(
            "set -e
get() { printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 \"$1\" \"$2\" | tail -n 1; }
echo \"### ip $(ip -4 -o addr show dev eth0 | sed 's/.* inet \\([0-9.]*\\).*/\\1/')\"
",
        );
        for t in targets {
            let (host, port) = t.rsplit_once(':').expect("ip:port");
            script.push_str(&format!("echo \"### {t} $(get {host} {port})\"\n"));
        }
        self.runtime
            .run(&self.run_spec(i, id, script), Duration::from_secs(60))
    }
}

/// The answer line for `target` in [`KubeLab::fetch`]'s output.
pub fn answer<'a>(output: &'a str, target: &str) -> Option<&'a str> {
    let marker = format!("### {target} ");
    output.lines().find_map(|l| l.strip_prefix(&marker))
}
