//! `weir-agent`: the per-node agent.

use std::{
    io::IsTerminal as _,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing::info;
use weir_agent::{
    cni_server,
    conntrack::Hygiene,
    datapath::{Datapath, PinLayout, pins::DEFAULT_ROOT},
    metrics::Metrics,
    node_net::{self, NodeNet},
    service_loop::{self, SyncLoop},
    source::SourceSpec,
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
    Run {
        /// This node's name (as in the Kubernetes Node object).
        #[arg(long, env = "WEIR_NODE")]
        node: String,
        /// Where maps and links are pinned (one root per node sharing a machine).
        #[arg(long, default_value = DEFAULT_ROOT)]
        bpffs_root: PathBuf,
        /// Unix socket on which weir-cni registers pods (CNI config `agentSocket`).
        #[arg(long, default_value = weir_cni::agent_api::DEFAULT_SOCKET)]
        cni_socket: PathBuf,
        /// Where Services and their endpoints come from: `dir:PATH`, a directory of
        /// Kubernetes manifests re-read on change. Without it the agent only wires
        /// pods (no service load balancing).
        #[arg(long, value_name = "dir:PATH")]
        source: Option<SourceSpec>,
        /// The node's devices, where Service traffic from outside the node arrives
        /// (NodePorts, externalIPs, load-balancer IPs). Default: every interface
        /// with a global address but loopback.
        #[arg(long, value_delimiter = ',', value_name = "IFACE,...")]
        devices: Vec<String>,
        /// The address ranges whose node addresses serve NodePorts, as kube-proxy's
        /// `--nodeport-addresses`. Default: every global address of the devices.
        #[arg(long, value_delimiter = ',', value_name = "CIDR,...")]
        nodeport_addresses: Vec<ipnetwork::IpNetwork>,
        /// The cgroup (v2) whose processes reach Services through the socket
        /// hooks; they act only for sockets of the agent's own network namespace.
        /// Default: the root of the cgroup2 hierarchy (/sys/fs/cgroup, or
        /// /sys/fs/cgroup/unified on hybrid hosts; mounted at /run/weir/cgroupv2
        /// where there is none).
        #[arg(long)]
        cgroup_root: Option<PathBuf>,
        /// Where Prometheus metrics are served (`/metrics`); `off` to serve none.
        #[arg(long, default_value = "0.0.0.0:9878", value_name = "ADDR:PORT|off")]
        metrics_address: MetricsAddress,
    },
}

/// `--metrics-address`: an address to listen on, or `off`.
#[derive(Clone, Debug)]
struct MetricsAddress(Option<std::net::SocketAddr>);

impl std::str::FromStr for MetricsAddress {
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
        Command::Run {
            node,
            bpffs_root,
            cni_socket,
            source,
            devices,
            nodeport_addresses,
            cgroup_root,
            metrics_address,
        } => {
            let root = weir_agent::datapath::bpffs::resolve(&bpffs_root, true)?;
            let net =
                node_net::discover(&devices, &nodeport_addresses).context("finding the node's devices")?;
            let cgroup = weir_agent::datapath::cgroup::resolve(cgroup_root.as_deref())?;
            run(
                &node,
                PinLayout::new(root),
                &cni_socket,
                source.as_ref(),
                &net,
                &cgroup,
                metrics_address.0,
            )
        }
    }
}

fn run(
    node: &str,
    pins: PinLayout,
    cni_socket: &std::path::Path,
    source: Option<&SourceSpec>,
    net: &NodeNet,
    cgroup_root: &std::path::Path,
    metrics_address: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let mut dp = Datapath::load(pins.clone())
        .with_context(|| format!("loading the datapath under {}", pins.root().display()))?;
    let adopted = dp.adopt_links().context("adopting pinned links")?;
    let forgotten = cni_server::forget_ifindexes(&mut dp, &adopted.stale)?;
    info!(node, root = %pins.root().display(), adopted = adopted.adopted, forgotten, "datapath loaded");
    let node_addrs = weir_common::NodeAddrs {
        netns_cookie: node_net::netns_cookie().context("reading this network namespace's cookie")?,
        ephemeral: node_net::ephemeral_ports().context("reading the node's ephemeral port range")?,
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
    dp.attach_cgroup(cgroup_root)
        .with_context(|| format!("attaching the socket hooks to {}", cgroup_root.display()))?;
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
    if let Some(spec) = source {
        let context = NodeContext {
            node_ips: net.nodeport_addresses.clone(),
            ..NodeContext::new(node)
        };
        start_services(context, &pins, spec, SharedDatapath(dp.clone()), metrics.clone())?;
    }
    // The async edges (the CNI socket, the metrics endpoint) share one runtime
    // on this thread; compiling and syncing have threads of their own.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        if let Some(addr) = metrics_address {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = weir_agent::http::serve(addr, metrics).await {
                    tracing::error!(%addr, error = %e, "the metrics endpoint stopped");
                }
            });
        }
        // Bind last: a plugin that can connect finds a datapath ready to take its pod.
        let listener = cni_server::bind(cni_socket)?;
        info!(socket = %cni_socket.display(), "serving CNI registrations");
        cni_server::serve(listener, dp)
            .await
            .context("serving the CNI socket")
    })
}

/// Reads back what the service maps hold (never flushing them), then starts the
/// sync and conntrack GC threads.
fn start_services(
    node: NodeContext,
    pins: &PinLayout,
    spec: &SourceSpec,
    maps: SharedDatapath,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let syncer = Syncer::new(&maps).context("reading the service maps back")?;
    let policy = PolicySyncer::new(&node.node_name, &maps).context("reading the policy maps back")?;
    let compiler = syncer.compiler(node);
    let (frontends, backends) = (
        syncer.current().services.keys().filter(|k| k.slot == 0).count(),
        syncer.current().backends.len(),
    );
    let source = spec.open();
    info!(
        source = source.describe(),
        frontends, backends, "service maps read back; watching the source"
    );
    let hygiene = Hygiene::open(pins)
        .inspect_err(|e| tracing::warn!(error = %e, "UDP conntrack flush disabled"))
        .ok();
    let timeouts = service_loop::AffinityTimeouts::default();
    service_loop::spawn_gc(pins, timeouts.clone(), metrics.clone())
        .context("spawning the conntrack GC thread")?;
    SyncLoop {
        source,
        maps,
        compiler,
        syncer,
        policy,
        hygiene,
        health: Default::default(),
        timeouts,
        metrics,
    }
    .spawn()
    .context("spawning the sync thread")?;
    Ok(())
}
