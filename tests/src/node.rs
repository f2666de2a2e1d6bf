//! A lab node (a network namespace playing the host, with its own IPAM state and
//! CNI configuration) and the pods `weir-cni` wires into it.

use std::{
    collections::HashSet,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

use crate::{Agent, CniCall, CniOutcome, Netns, agent::AgentSource, bins, services::Cluster, unique};

pub struct Node {
    pub ns: Netns,
    /// This node's own bpffs pin root (bpffs is shared by all namespaces).
    pub bpffs_root: PathBuf,
    /// Per-node state (IPAM store): removed on drop.
    pub state_dir: PathBuf,
    /// The network configuration handed to `weir-cni` on stdin.
    pub conf: Value,
}

impl Node {
    /// A node with a single IPv4 pod CIDR and the plugin's defaults.
    pub fn new(pod_cidr: &str) -> Self {
        Self::with_ranges(json!([[{ "subnet": pod_cidr }]]))
    }

    /// A node whose IPAM `ranges` are given verbatim (e.g. dual-stack).
    pub fn with_ranges(ranges: Value) -> Self {
        crate::require_root();
        let ns = Netns::new(&unique("wn"));
        ns.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1");
        let state_dir = std::env::temp_dir().join(unique("weir-lab-"));
        std::fs::create_dir_all(&state_dir).expect("state dir");
        let conf = json!({
            "cniVersion": "1.1.0",
            "name": "weir-lab",
            "type": "weir-cni",
            "ipam": { "ranges": ranges, "dataDir": state_dir.join("ipam") },
        });
        let bpffs_root = PathBuf::from("/sys/fs/bpf/weir-lab").join(ns.name());
        Self {
            ns,
            bpffs_root,
            state_dir,
            conf,
        }
    }

    /// Starts `weir-agent` on this node and points the CNI config at its socket,
    /// so that pods added from now on are registered with it.
    pub fn start_agent(&mut self) -> Agent {
        self.start_agent_inner(None)
    }

    /// Like [`Node::start_agent`], the agent reading Services and their endpoints
    /// from the manifests in `dir` (`--source dir:DIR`).
    pub fn start_agent_with_source(&mut self, dir: &Path) -> Agent {
        self.start_agent_inner(Some(dir.to_owned()))
    }

    /// [`Node::start_agent_with_source`] with more flags (or `env:NAME=VALUE`
    /// items, see [`Agent::start_full`]).
    pub fn start_agent_with_source_and(&mut self, dir: &Path, extra: Vec<String>) -> Agent {
        self.start_agent_full(Some(AgentSource::Dir(dir.to_owned())), extra)
    }

    fn start_agent_inner(&mut self, source: Option<PathBuf>) -> Agent {
        self.start_agent_full(source.map(AgentSource::Dir), Vec::new())
    }

    /// Starts `weir-agent` on this node reading `cluster` (a manifest directory
    /// or the lab's API server).
    pub fn start_agent_for(&mut self, cluster: &Cluster) -> Agent {
        self.start_agent_for_with(cluster, Vec::new())
    }

    /// [`Node::start_agent_for`] with more flags.
    pub fn start_agent_for_with(&mut self, cluster: &Cluster, extra: Vec<String>) -> Agent {
        let source = match cluster {
            Cluster::Dir(dir) => AgentSource::Dir(dir.path().to_owned()),
            Cluster::Api(api) => AgentSource::Kube(api.listen_in(&self.ns)),
        };
        self.start_agent_full(Some(source), extra)
    }

    fn start_agent_full(&mut self, source: Option<AgentSource>, extra: Vec<String>) -> Agent {
        let socket = self.state_dir.join("cni.sock");
        let agent = Agent::start_full(
            self.ns.name(),
            self.name(),
            self.bpffs_root.clone(),
            socket.clone(),
            self.state_dir.join("agent.log"),
            source,
            extra,
        );
        self.conf["agentSocket"] = json!(socket);
        agent
    }

    /// The node's name as its agent knows it (EndpointSlices' `nodeName`).
    pub fn name(&self) -> &str {
        self.ns.name()
    }

    /// The node's first pod CIDR (its first IPAM range).
    pub fn pod_cidr(&self) -> String {
        self.conf["ipam"]["ranges"][0][0]["subnet"]
            .as_str()
            .expect("ranges[0][0].subnet")
            .to_owned()
    }

    /// A `weir-cni` call that runs on this node, for `pod`'s attachment.
    pub fn call(&self, command: &str, pod: &PodSpec) -> CniCall {
        CniCall {
            container_id: Some(pod.container_id.clone()),
            netns: Some(pod.netns_path.display().to_string()),
            ifname: Some(pod.ifname.clone()),
            args: Some(format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={}",
                pod.name
            )),
            path: Some(cni_path()),
            in_netns: Some(self.ns.name().to_owned()),
            ..CniCall::new(bins::path("weir-cni"), command)
        }
        .config(&self.conf)
    }

    /// Like [`Node::call`], with configuration `conf` instead of the node's.
    pub fn call_with(&self, command: &str, pod: &PodSpec, conf: &Value) -> CniCall {
        self.call(command, pod).config(conf)
    }

    /// A call without any per-attachment variable (STATUS, GC, VERSION).
    pub fn call_plain(&self, command: &str, conf: &Value) -> CniCall {
        CniCall {
            path: Some(cni_path()),
            in_netns: Some(self.ns.name().to_owned()),
            ..CniCall::new(bins::path("weir-cni"), command)
        }
        .config(conf)
    }

    /// The IPAM store of the node's network (`weir-lab`).
    pub fn ipam_dir(&self) -> PathBuf {
        self.state_dir.join("ipam").join("weir-lab")
    }

    /// Addresses currently allocated in the node's built-in IPAM store.
    pub fn allocated(&self) -> HashSet<IpAddr> {
        self.store_files()
            .iter()
            .filter_map(|n| n.parse::<IpAddr>().ok())
            .collect()
    }

    /// Every file of the node's IPAM store, by name.
    pub fn store_files(&self) -> Vec<String> {
        match std::fs::read_dir(self.ipam_dir()) {
            Ok(entries) => entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Names of the node's links that look like our host veths.
    pub fn weir_links(&self) -> Vec<String> {
        self.ns
            .sh("ip -o link show")
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .filter(|n| n.starts_with("weir") || n.starts_with("wtmp"))
            .collect()
    }

    /// Runs a conflist as libcni does: each plugin gets the list's name and version
    /// (1.0.0: what the reference plugins speak), its own config, and the previous
    /// result as `prevResult`; `DEL` runs the plugins in reverse. `plugins` names
    /// `weir-cni` or a reference plugin of /usr/lib/cni. Returns the last result.
    pub fn run_chain(
        &self,
        spec: &PodSpec,
        command: &str,
        plugins: &[Value],
        cached: Option<&Value>,
    ) -> Value {
        let mut prev = cached.cloned();
        let order: Vec<&Value> = if command == "DEL" {
            plugins.iter().rev().collect()
        } else {
            plugins.iter().collect()
        };
        for plugin in order {
            let mut conf = plugin.clone();
            conf["name"] = json!("weir-lab");
            conf["cniVersion"] = json!("1.0.0");
            if let Some(p) = &prev {
                conf["prevResult"] = p.clone();
            }
            let kind = conf["type"].as_str().expect("type").to_owned();
            let bin = if kind == "weir-cni" {
                bins::path("weir-cni")
            } else {
                PathBuf::from("/usr/lib/cni").join(&kind)
            };
            let out = CniCall {
                plugin: bin,
                args: Some(spec.cni_args()),
                ..self.call(command, spec)
            }
            .config(&conf)
            .run();
            assert_eq!(
                out.exit_code, 0,
                "{kind} {command} failed: {} {}",
                out.stdout, out.stderr
            );
            if command == "ADD" {
                prev = Some(out.json());
            }
        }
        prev.unwrap_or(Value::Null)
    }

    /// Creates a pod namespace and runs `ADD` for it; panics if the plugin fails.
    pub fn add_pod(&self, name: &str) -> Pod {
        let (ns, spec) = PodSpec::with_netns(name);
        let result = self.call("ADD", &spec).run().ok();
        Pod {
            ips: result_ips(&result),
            result,
            spec,
            ns,
        }
    }

    /// Runs `DEL` for a pod.
    pub fn del_pod(&self, pod: &Pod) -> CniOutcome {
        self.call("DEL", &pod.spec).run()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Unpinning the links detaches the programs; the netns goes after this.
        let _ = std::fs::remove_dir_all(&self.bpffs_root);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// What the runtime knows of a pod attachment.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub container_id: String,
    pub netns_path: PathBuf,
    pub ifname: String,
}

impl PodSpec {
    /// A fresh pod namespace and what a runtime would know of it, before ADD.
    pub fn with_netns(name: &str) -> (Netns, Self) {
        let ns = Netns::new(&unique("wp"));
        let spec = Self {
            name: name.to_owned(),
            container_id: unique(&format!("ctr-{name}-")),
            netns_path: ns.path(),
            ifname: "eth0".to_owned(),
        };
        (ns, spec)
    }

    /// `CNI_ARGS` as kubelet's runtimes pass them (the reference plugins reject
    /// unknown arguments without `IgnoreUnknown=1`).
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={}",
            self.name
        )
    }
}

pub struct Pod {
    pub spec: PodSpec,
    /// The ADD result, as the plugin printed it.
    pub result: Value,
    /// The pod's addresses, from the result.
    pub ips: Vec<IpAddr>,
    pub ns: Netns,
}

impl Pod {
    pub fn ipv4(&self) -> IpAddr {
        *self
            .ips
            .iter()
            .find(|ip| ip.is_ipv4())
            .expect("pod has no IPv4 address")
    }

    pub fn ipv6(&self) -> IpAddr {
        *self
            .ips
            .iter()
            .find(|ip| ip.is_ipv6())
            .expect("pod has no IPv6 address")
    }
}

/// The addresses of a CNI result's `ips` (without prefix length).
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("result without ips: {result}"))
        .iter()
        .map(|ip| {
            let cidr = ip["address"].as_str().expect("ips[].address");
            cidr.split('/')
                .next()
                .and_then(|a| a.parse().ok())
                .expect("address/prefix")
        })
        .collect()
}

/// `CNI_PATH`: our binaries first, then the reference plugins.
pub fn cni_path() -> String {
    let ours = bins::path("weir-cni");
    let ours = ours.parent().unwrap_or(Path::new("."));
    format!("{}:/usr/lib/cni:/opt/cni/bin", ours.display())
}
