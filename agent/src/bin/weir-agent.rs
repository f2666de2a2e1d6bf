//! `weir-agent`: the per-node agent.

use std::{
    io::IsTerminal as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tracing::info;
use weir_agent::{
    cni_conf::{ConfOptions, Portmap},
    cni_server,
    conntrack::Hygiene,
    datapath::{Datapath, PinLayout, pins::DEFAULT_ROOT},
    host_routing::{self, HostRouting},
    http::{self, Endpoints},
    metrics::Metrics,
    node::NodeWatch,
    node_net::{self, NodeNet},
    service_loop::{self, SyncLoop},
    source::SourceSpec,
    status::Status,
    sync::{PolicySyncer, SharedDatapath, Syncer},
};
use weir_model::NodeContext;

#[derive(Parser)]
#[command(name = "weir-agent", version, about = "Weir's per-node eBPF dataplane agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// Mount bpffs where it is not mounted yet. For the DaemonSet's init
    /// container (the host's `/sys/fs/bpf`, shared back to the host).
    MountBpffs {
        #[arg(long, default_value = "/sys/fs/bpf")]
        path: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// This node's name, as in its Node object (default: the NODE_NAME
    /// environment variable, as the downward API sets it, or WEIR_NODE).
    #[arg(long)]
    node: Option<String>,
    /// Where maps and links are pinned (one root per node sharing a machine).
    #[arg(long, default_value = DEFAULT_ROOT)]
    bpffs_root: PathBuf,
    /// Unix socket on which weir-cni registers pods (CNI config `agentSocket`).
    #[arg(long, default_value = weir_cni::agent_api::DEFAULT_SOCKET)]
    cni_socket: PathBuf,
    /// Where Services, endpoints, Pods, Namespaces, Nodes and NetworkPolicies
    /// come from: `kube`, the API server (in-cluster configuration, KUBECONFIG
    /// or --kubeconfig), or `dir:PATH`, a directory of manifests. Without it
    /// the agent only wires pods.
    #[arg(long, value_name = "kube|dir:PATH")]
    source: Option<SourceSpec>,
    /// The kubeconfig of `--source kube` (default: in-cluster, or KUBECONFIG).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The node's devices, where Service traffic from outside the node arrives
    /// (NodePorts, externalIPs, load-balancer IPs). Default: every Ethernet
    /// interface with a global address.
    #[arg(long, value_delimiter = ',', value_name = "IFACE,...")]
    devices: Vec<String>,
    /// The address ranges whose node addresses serve NodePorts, as kube-proxy's
    /// `--nodeport-addresses`. Default: with `--source kube`, the Node object's
    /// InternalIP and ExternalIP addresses (reread when the Node changes);
    /// otherwise every global address of the devices.
    #[arg(long, value_delimiter = ',', value_name = "CIDR,...")]
    nodeport_addresses: Vec<ipnetwork::IpNetwork>,
    /// The cgroup (v2) whose processes reach Services through the socket hooks.
    /// Default: the root of the cgroup2 hierarchy (mounted at /run/weir/cgroupv2
    /// where there is none).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Where Prometheus metrics are served (`/metrics`); `off` serves none.
    #[arg(long, default_value = "0.0.0.0:9878", value_name = "ADDR:PORT|off")]
    metrics_address: ListenAddress,
    /// Where `/healthz` and `/readyz` are served; `off` serves none.
    #[arg(long, default_value = "127.0.0.1:9879", value_name = "ADDR:PORT|off")]
    health_address: ListenAddress,
    /// Where kube-proxy's health contract (`/healthz`) is served, which cloud
    /// load balancers probe; `off` serves none.
    #[arg(long, default_value = "0.0.0.0:10256", value_name = "ADDR:PORT|off")]
    kube_proxy_healthz_address: ListenAddress,
    /// The CNI configuration the agent writes once it can serve pods (weir-cni
    /// with the node's pod CIDRs, then portmap); `off` writes none. Default:
    /// /etc/cni/net.d/05-weir.conflist with `--source kube`, none otherwise.
    #[arg(long, value_name = "PATH|off")]
    cni_conf_file: Option<String>,
    /// Replace a CNI configuration at --cni-conf-file that weir-agent did not
    /// write (another CNI's).
    #[arg(long)]
    cni_conf_overwrite: bool,
    /// The node's CNI plugin directory (where `portmap` is looked for).
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// Chain the `portmap` plugin (hostPort) after weir-cni: `auto` when it is
    /// installed in --cni-bin-dir.
    #[arg(long, value_enum, default_value = "auto")]
    cni_chain_portmap: Portmap,
    /// The node's pod CIDRs when its Node object gives none (`--source dir:`
    /// only: with `kube`, a Node without podCIDRs is an error, not a guess).
    #[arg(long, value_delimiter = ',', value_name = "CIDR,...")]
    pod_cidrs: Vec<ipnetwork::IpNetwork>,
    /// How pods' packets reach pods of the same node: `ebpf`, straight to
    /// their veth; `legacy`, through the host's stack, where netfilter sees
    /// them (needed while kube-proxy's rules or portmap's hostPorts translate
    /// flows); `auto`, legacy while this node's netfilter has such rules.
    #[arg(long, value_enum, default_value = "auto")]
    host_routing: HostRouting,
}

/// An address to listen on, or `off`.
#[derive(Clone, Debug)]
struct ListenAddress(Option<SocketAddr>);

impl std::str::FromStr for ListenAddress {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(Self(None));
        }
        s.parse().map(|a| Self(Some(a)))
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Run(args) => run(*args),
        Command::InstallCni { from, to } => {
            let from = match from {
                Some(f) => f,
                None => std::env::current_exe()
                    .context("finding this binary")?
                    .with_file_name("weir-cni"),
            };
            install(&from, &to)
        }
        Command::MountBpffs { path } => {
            weir_agent::datapath::bpffs::mount_if_missing(&path)?;
            info!(path = %path.display(), "bpffs mounted");
            Ok(())
        }
    }
}

/// Copies `from` into `dir` under its own name, atomically.
fn install(from: &Path, dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let name = from.file_name().context("the binary has no file name")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::copy(from, &tmp).with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", tmp.display()))?;
    let to = dir.join(name);
    std::fs::rename(&tmp, &to).with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))?;
    info!(from = %from.display(), to = %to.display(), "installed");
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let node = args
        .node
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .or_else(|| std::env::var("WEIR_NODE").ok())
        .filter(|n| !n.is_empty())
        .context("no node name: --node, or the NODE_NAME environment variable")?;
    let cluster = args.source == Some(SourceSpec::Kube);
    let root = weir_agent::datapath::bpffs::resolve(&args.bpffs_root, true)?;
    let pins = PinLayout::new(root);
    let net =
        node_net::discover(&args.devices, &args.nodeport_addresses).context("finding the node's devices")?;
    let cgroup = weir_agent::datapath::cgroup::resolve(args.cgroup_root.as_deref())?;
    let metrics = Metrics::new();
    let status = Status::default();

    let mut dp = Datapath::load(pins.clone())
        .with_context(|| format!("loading the datapath under {}", pins.root().display()))?;
    let adopted = dp.adopt_links().context("adopting pinned links")?;
    let forgotten = cni_server::forget_ifindexes(&mut dp, &adopted.stale)?;
    info!(node, root = %pins.root().display(), adopted = adopted.adopted, forgotten, "datapath loaded");
    write_node(&mut dp, &net)?;
    dp.attach_cgroup(&cgroup)
        .with_context(|| format!("attaching the socket hooks to {}", cgroup.display()))?;
    for (name, ifindex) in &net.devices {
        dp.attach_device(name, *ifindex)
            .with_context(|| format!("attaching the node program to {name}"))?;
    }
    info!(
        devices = ?net.devices.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        nodeport_addresses = ?net.nodeport_addresses,
        "node devices"
    );
    let dp = Arc::new(Mutex::new(dp));
    host_routing::start(args.host_routing, SharedDatapath(dp.clone()), metrics.clone());
    match &args.source {
        Some(spec) => {
            let conf = match args.cni_conf_file.as_deref() {
                Some("off") => None,
                Some(path) => Some(PathBuf::from(path)),
                None if cluster => Some(PathBuf::from("/etc/cni/net.d/05-weir.conflist")),
                None => None,
            }
            .map(|path| ConfOptions {
                path,
                socket: args.cni_socket.clone(),
                portmap: args.cni_chain_portmap.resolve(&args.cni_bin_dir),
                overwrite: args.cni_conf_overwrite,
            });
            let watch = NodeWatch::new(
                &node,
                cluster,
                cluster && args.nodeport_addresses.is_empty(),
                args.pod_cidrs.clone(),
                conf,
            );
            let context = NodeContext {
                node_ips: net.nodeport_addresses.clone(),
                ..NodeContext::new(node.as_str())
            };
            let services = Services {
                node: context,
                pins: &pins,
                spec,
                kubeconfig: args.kubeconfig.clone(),
                maps: SharedDatapath(dp.clone()),
                metrics: metrics.clone(),
                status: status.clone(),
                watch,
            };
            start_services(services)?;
        }
        None => {
            // Pods are wired; nothing else is to be synced.
            status.services_synced();
            status.policy_synced();
        }
    }
    // The async edges (the CNI socket, the HTTP endpoints) share one runtime
    // on this thread; compiling and syncing have threads of their own.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        http::spawn(args.metrics_address.0, Endpoints::Metrics(metrics));
        http::spawn(args.health_address.0, Endpoints::Health(status.clone()));
        http::spawn(
            args.kube_proxy_healthz_address.0,
            Endpoints::KubeProxy(status.clone()),
        );
        // Bind last: a plugin that can connect finds a datapath ready to take its pod.
        let listener = cni_server::bind(&args.cni_socket)?;
        info!(socket = %args.cni_socket.display(), "serving CNI registrations");
        status.cni_serving();
        cni_server::serve(listener, dp)
            .await
            .context("serving the CNI socket")
    })
}

/// The node's addresses in the maps: what external flows to remote endpoints
/// are source-NATed to, this namespace's cookie and ephemeral ports, and every
/// address of the node's own namespace.
fn write_node(dp: &mut Datapath, net: &NodeNet) -> anyhow::Result<()> {
    let node_addrs = weir_common::NodeAddrs {
        netns_cookie: node_net::netns_cookie().context("reading this network namespace's cookie")?,
        ephemeral: node_net::ephemeral_ports().context("reading the node's ephemeral port range")?,
        // The delivery mode stays as the last agent left it until
        // `host_routing` decides again: a restart never flips it meanwhile.
        flags: dp.node.get(&0, 0).map_or(0, |n| n.flags),
        ..net.snat
    };
    dp.node
        .set(0, node_addrs, 0)
        .context("writing the node's addresses")?;
    for ip in &net.all_addresses {
        dp.node_ips
            .insert(cni_server::endpoint_key(*ip), 1, 0)
            .context("writing the node's addresses")?;
    }
    Ok(())
}

/// What the sync and GC threads start from.
struct Services<'a> {
    node: NodeContext,
    pins: &'a PinLayout,
    spec: &'a SourceSpec,
    kubeconfig: Option<PathBuf>,
    maps: SharedDatapath,
    metrics: Arc<Metrics>,
    status: Status,
    watch: NodeWatch,
}

/// Reads back what the service maps hold (never flushing them), then starts the
/// sync and conntrack GC threads.
fn start_services(s: Services<'_>) -> anyhow::Result<()> {
    let syncer = Syncer::new(&s.maps).context("reading the service maps back")?;
    let policy = PolicySyncer::new(&s.node.node_name, &s.maps).context("reading the policy maps back")?;
    let compiler = syncer.compiler(s.node);
    let (frontends, backends) = (
        syncer.current().services.keys().filter(|k| k.slot == 0).count(),
        syncer.current().backends.len(),
    );
    let source = s.spec.open(s.kubeconfig).context("opening the source")?;
    info!(
        source = source.describe(),
        frontends, backends, "service maps read back; watching the source"
    );
    let hygiene = Hygiene::open(s.pins)
        .inspect_err(|e| tracing::warn!(error = %e, "UDP conntrack flush disabled"))
        .ok();
    let timeouts = service_loop::AffinityTimeouts::default();
    service_loop::spawn_gc(s.pins, timeouts.clone(), s.metrics.clone())
        .context("spawning the conntrack GC thread")?;
    SyncLoop {
        source,
        maps: s.maps,
        compiler,
        syncer,
        policy,
        hygiene,
        health: Default::default(),
        timeouts,
        metrics: s.metrics,
        status: s.status,
        node: s.watch,
    }
    .spawn()
    .context("spawning the sync thread")?;
    Ok(())
}
