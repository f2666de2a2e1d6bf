//! `weir-agent`'s command line. Every `run` flag can also come from the
//! environment (`WEIR_` and the flag's name in capitals, `-` as `_`): the
//! DaemonSet sets them from the `weir-config` ConfigMap. A flag given on the
//! command line wins over its variable.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::{cni_conf::Portmap, datapath::pins::DEFAULT_ROOT, host_routing::HostRouting, source::SourceSpec};

#[derive(Parser)]
#[command(name = "weir-agent", version, about = "Weir's per-node eBPF dataplane agent")]
pub struct Cli {
    /// How log lines are written: `text` for people, `json` for log shippers
    /// (one object per line: timestamp, level, target, message and fields).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "WEIR_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// `-o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Load and pin the datapath, adopt what an earlier agent left, and serve the
    /// CNI plugin's registrations.
    Run(Box<RunArgs>),
    /// Copy `weir-cni` into the node's CNI bin directory atomically (a temporary
    /// name, then a rename: the kubelet never runs half a binary). For the
    /// DaemonSet's init container.
    InstallCni {
        /// The binary to install (default: `weir-cni` beside this one).
        #[arg(long)]
        from: Option<PathBuf>,
        /// The CNI bin directory.
        #[arg(long, default_value = "/opt/cni/bin")]
        to: PathBuf,
    },
    /// Print what every map of a node would hold for a directory of
    /// manifests (services, backends, reverse NAT, Maglev tables, health
    /// check ports, isolated endpoints, ipcache, policy rules) and what was
    /// skipped, offline: no root, no kernel. Sorted and stable, so that two
    /// runs diff as datapath state.
    Compile {
        /// The manifests, as `run --source dir:PATH` reads them.
        #[arg(long, value_name = "dir:PATH")]
        source: SourceSpec,
        /// The node to compile for: its endpoints are the local ones (Local
        /// traffic policies, health checks), its pods the ones policies
        /// isolate, its Node object's addresses the NodePort addresses.
        /// Default: none of the cluster's nodes (no local endpoints or pods).
        #[arg(long, default_value = "")]
        node: String,
        /// The node's NodePort addresses, instead of its Node object's
        /// InternalIP and ExternalIP addresses (`run` takes its devices').
        #[arg(long, value_delimiter = ',', value_name = "IP,...")]
        node_ips: Vec<std::net::IpAddr>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Mount bpffs where it is not mounted yet. For the DaemonSet's init
    /// container (the host's `/sys/fs/bpf`, shared back to the host).
    MountBpffs {
        #[arg(long, default_value = "/sys/fs/bpf")]
        path: PathBuf,
    },
}

#[derive(Args)]
pub struct RunArgs {
    /// This node's name, as in its Node object (default: the NODE_NAME
    /// environment variable, as the downward API sets it, or WEIR_NODE).
    #[arg(long)]
    pub node: Option<String>,
    /// Where maps and links are pinned (one root per node sharing a machine).
    #[arg(long, env = "WEIR_BPFFS_ROOT", default_value = DEFAULT_ROOT)]
    pub bpffs_root: PathBuf,
    /// Unix socket on which weir-cni registers pods (CNI config `agentSocket`).
    #[arg(long, env = "WEIR_CNI_SOCKET", default_value = weir_agent_api::DEFAULT_SOCKET)]
    pub cni_socket: PathBuf,
    /// Where Services, endpoints, Pods, Namespaces, Nodes and NetworkPolicies
    /// come from: `kube`, the API server (in-cluster configuration, KUBECONFIG
    /// or --kubeconfig), or `dir:PATH`, a directory of manifests. Without it
    /// the agent only wires pods.
    #[arg(long, env = "WEIR_SOURCE", value_name = "kube|dir:PATH")]
    pub source: Option<SourceSpec>,
    /// Where the datapath's events are served to `weirctl monitor` and
    /// `weirctl drops` (default: `monitor.sock` beside the CNI socket).
    #[arg(long, env = "WEIR_MONITOR_SOCKET")]
    pub monitor_socket: Option<PathBuf>,
    /// The kubeconfig of `--source kube` (default: in-cluster, or KUBECONFIG).
    #[arg(long, env = "WEIR_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// `--source kube`: streaming lists (watches that start with the current
    /// state) instead of paged lists. Kubernetes 1.34 serves them by default;
    /// 1.33 refuses them (its WatchList gate is off).
    #[arg(long, env = "WEIR_STREAMING_LISTS", num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, default_value = "false", value_name = "BOOL")]
    pub streaming_lists: bool,
    /// The node's devices, where Service traffic from outside the node arrives
    /// (NodePorts, externalIPs, load-balancer IPs). Default: every Ethernet
    /// interface with a global address.
    #[arg(long, env = "WEIR_DEVICES", value_delimiter = ',', value_name = "IFACE,...")]
    pub devices: Vec<String>,
    /// The address ranges whose node addresses serve NodePorts, as kube-proxy's
    /// `--nodeport-addresses`. Default: with `--source kube`, the Node object's
    /// InternalIP and ExternalIP addresses (reread when the Node changes);
    /// otherwise every global address of the devices.
    #[arg(
        long,
        env = "WEIR_NODEPORT_ADDRESSES",
        value_delimiter = ',',
        value_name = "CIDR,..."
    )]
    pub nodeport_addresses: Vec<ipnetwork::IpNetwork>,
    /// The cgroup (v2) whose processes reach Services through the socket hooks.
    /// Default: the root of the cgroup2 hierarchy (mounted at /run/weir/cgroupv2
    /// where there is none).
    #[arg(long, env = "WEIR_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,
    /// Where Prometheus metrics are served (`/metrics`); `off` serves none.
    #[arg(
        long,
        env = "WEIR_METRICS_ADDRESS",
        default_value = "0.0.0.0:9878",
        value_name = "ADDR:PORT|off"
    )]
    pub metrics_address: ListenAddress,
    /// Where `/healthz` and `/readyz` are served; `off` serves none.
    #[arg(
        long,
        env = "WEIR_HEALTH_ADDRESS",
        default_value = "127.0.0.1:9879",
        value_name = "ADDR:PORT|off"
    )]
    pub health_address: ListenAddress,
    /// Where kube-proxy's health contract (`/healthz`) is served, which cloud
    /// load balancers probe; `off` serves none.
    #[arg(
        long,
        env = "WEIR_KUBE_PROXY_HEALTHZ_ADDRESS",
        default_value = "0.0.0.0:10256",
        value_name = "ADDR:PORT|off"
    )]
    pub kube_proxy_healthz_address: ListenAddress,
    /// The CNI configuration the agent writes once it can serve pods (weir-cni
    /// with the node's pod CIDRs, then portmap); `off` writes none. Default:
    /// /etc/cni/net.d/05-weir.conflist with `--source kube`, none otherwise.
    #[arg(long, env = "WEIR_CNI_CONF_FILE", value_name = "PATH|off")]
    pub cni_conf_file: Option<String>,
    /// Replace a CNI configuration at --cni-conf-file that weir-agent did not
    /// write (another CNI's). `--cni-conf-overwrite=false` says no, as the
    /// variable can.
    #[arg(long, env = "WEIR_CNI_CONF_OVERWRITE", num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, default_value = "false", value_name = "BOOL")]
    pub cni_conf_overwrite: bool,
    /// The node's CNI plugin directory (where `portmap` is looked for).
    #[arg(long, env = "WEIR_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// Chain the `portmap` plugin (hostPort) after weir-cni: `auto` when it is
    /// installed in --cni-bin-dir.
    #[arg(long, env = "WEIR_CNI_CHAIN_PORTMAP", value_enum, default_value = "auto")]
    pub cni_chain_portmap: Portmap,
    /// The node's pod CIDRs when its Node object gives none (`--source dir:`
    /// only: with `kube`, a Node without podCIDRs is an error, not a guess).
    #[arg(long, env = "WEIR_POD_CIDRS", value_delimiter = ',', value_name = "CIDR,...")]
    pub pod_cidrs: Vec<ipnetwork::IpNetwork>,
    /// How pods' packets reach pods of the same node: `ebpf`, straight to
    /// their veth; `legacy`, through the host's stack, where netfilter sees
    /// them (needed while kube-proxy's rules or portmap's hostPorts translate
    /// flows); `auto`, legacy while this node's netfilter has such rules.
    #[arg(long, env = "WEIR_HOST_ROUTING", value_enum, default_value = "auto")]
    pub host_routing: HostRouting,
    /// How pods' packets reach other nodes' pods: `native`, a route to every
    /// other Node's pod CIDRs via its InternalIP, from the Node objects (the
    /// underlay must forward pod addresses between nodes: one L2 segment, or
    /// routers that know the routes); `vxlan`, an overlay: pods' packets to
    /// other nodes are carried in VXLAN between the nodes' InternalIPs, over
    /// any underlay that carries the nodes' own traffic (the agent creates
    /// the device `weir_vxlan`; pods' MTU is the underlay's less 50); `off`,
    /// routes are someone else's.
    #[arg(long, env = "WEIR_ROUTING", value_enum, default_value = "native")]
    pub routing: Routing,
    /// The Services' hash maps (frontends, backends, reverse NAT) made with
    /// every entry allocated up front, as Cilium's option of this name: about
    /// 360 MB of kernel memory held from the start, for an insert at about
    /// half the kernel's cost (a first sync of 100,000 Services x 10
    /// endpoints: 2.4 s of writes -> 1.6 s). Without it they grow as they
    /// hold. Applies to maps made by this agent: maps pinned already stay as
    /// they were made (unlike Cilium, which makes them again, empty) until
    /// their pins are removed.
    #[arg(long, env = "WEIR_PREALLOCATE_BPF_MAPS", num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, default_value = "false", value_name = "BOOL")]
    pub preallocate_bpf_maps: bool,
    /// XDP for Service traffic entering the node's devices (NodePorts,
    /// externalIPs, load-balancer IPs; Cilium's `--bpf-lb-acceleration`):
    /// the load balancer runs in the driver, before the kernel builds a socket
    /// buffer, and sends what goes to a remote endpoint (and its replies)
    /// back out of the device at once; the rest goes on to the TC program as
    /// before. `disabled`; `native`, on every device, or the agent fails (the
    /// driver must support XDP); `best-effort`, on the devices whose driver
    /// supports it.
    #[arg(
        long,
        env = "WEIR_NODEPORT_ACCELERATION",
        value_enum,
        default_value = "disabled"
    )]
    pub nodeport_acceleration: Acceleration,
    /// `--routing vxlan`: the overlay's UDP port (every node must use the
    /// same; another VXLAN device on this port, flannel's or Cilium's, takes
    /// it first).
    #[arg(long, env = "WEIR_VXLAN_PORT", default_value_t = weir_common::VXLAN_PORT)]
    pub vxlan_port: u16,
    /// `--routing vxlan`: the VXLAN network identifier the overlay sends with
    /// and accepts (1..=16777215; every node of the cluster the same).
    #[arg(long, env = "WEIR_VXLAN_VNI", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=0xff_ffff))]
    pub vxlan_vni: u32,
    /// Pods' traffic to destinations outside the cluster (not in the cluster's
    /// pod CIDRs, not a Node's address, not in --non-masquerade-cidrs) leaves
    /// from the node's address, translated in eBPF on the node's devices.
    /// `--masquerade=false`: it keeps the pod's address.
    #[arg(long, env = "WEIR_MASQUERADE", num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, default_value = "true", value_name = "BOOL")]
    pub masquerade: bool,
    /// Destinations pods reach with their own address besides the cluster's
    /// (ip-masq-agent's `nonMasqueradeCIDRs`). Default: none.
    #[arg(
        long,
        env = "WEIR_NON_MASQUERADE_CIDRS",
        value_delimiter = ',',
        value_name = "CIDR,..."
    )]
    pub non_masquerade_cidrs: Vec<ipnetwork::IpNetwork>,
    /// The cluster's pod CIDRs: never masqueraded, and a client there is
    /// inside the cluster (an externalTrafficPolicy Local NodePort reached
    /// from another node's pod uses every endpoint, as kube-proxy's
    /// `--cluster-cidr` does). Default: every Node's podCIDRs (and
    /// --pod-cidrs).
    #[arg(
        long,
        env = "WEIR_CLUSTER_CIDR",
        value_delimiter = ',',
        value_name = "CIDR,..."
    )]
    pub cluster_cidr: Vec<ipnetwork::IpNetwork>,
}

/// `--routing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Routing {
    Native,
    Vxlan,
    Off,
}

/// `--nodeport-acceleration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Acceleration {
    Disabled,
    Native,
    BestEffort,
}

/// An address to listen on, or `off`.
#[derive(Clone, Debug)]
pub struct ListenAddress(pub Option<SocketAddr>);

impl std::str::FromStr for ListenAddress {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(Self(None));
        }
        s.parse().map(|a| Self(Some(a)))
    }
}
