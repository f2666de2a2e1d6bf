//! `weir-agent`: the per-node agent.

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use clap::Parser as _;
use tracing::{info, warn};
use weir_agent::{
    cli::{Acceleration, Cli, Command, LogFormat, Output, Routing, RunArgs},
    cni_conf::ConfOptions,
    cni_server,
    conntrack::Hygiene,
    datapath::{self, Datapath, PinLayout},
    host_routing,
    http::{self, Endpoints},
    masquerade::Masquerade,
    metrics::Metrics,
    netlink::Netlink,
    node::NodeWatch,
    node_net::{self, NodeNet},
    node_routes::NodeRouting,
    overlay::{self, Overlay},
    source::{KubeOptions, SourceSpec},
    status::Status,
    supervise,
    sync::{PolicySyncer, ServiceSyncer, SharedDatapath},
    sync_loop::{self, SyncLoop},
};
use weir_model::{NodeContext, masquerade::MasqConfig};

#[global_allocator]
static ALLOCATOR: weir_agent::memory::Allocator = weir_agent::memory::Allocator {};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match dispatch(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Said as a log line like every other (one JSON object with
        // `--log-format json`), with its causes.
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
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
        Command::Compile {
            source,
            node,
            node_ips,
            output,
        } => {
            let SourceSpec::Dir(dir) = source else {
                anyhow::bail!(
                    "compile reads a directory of manifests (--source dir:PATH), not the API server"
                );
            };
            let compiled = weir_agent::compile::compile(&dir, &node, &node_ips)
                .with_context(|| format!("reading {}", dir.display()))?;
            let mut text = match output {
                Output::Json => serde_json::to_string_pretty(&compiled)?,
                Output::Table => compiled.to_table(),
            };
            if !text.ends_with('\n') {
                text.push('\n');
            }
            use std::io::Write as _;
            match std::io::stdout().lock().write_all(text.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
        Command::MountBpffs { path } => {
            weir_agent::datapath::bpffs::mount_if_missing(&path)?;
            info!(path = %path.display(), "bpffs mounted");
            Ok(())
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logging(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // Fields beside the message at the top level, as shippers index them.
        LogFormat::Json => logs.json().flatten_event(true).init(),
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

/// `--nodeport-acceleration` on one node device: XDP attached, or (disabled,
/// or best-effort where the driver has none) not, an earlier agent's removed.
fn accelerate(dp: &mut Datapath, mode: Acceleration, name: &str, ifindex: u32) -> anyhow::Result<()> {
    let attached = match mode {
        Acceleration::Disabled => false,
        Acceleration::Native => {
            dp.attach_xdp(name, ifindex)
                .with_context(|| format!("attaching XDP to {name} (--nodeport-acceleration native)"))?;
            true
        }
        Acceleration::BestEffort => match dp.attach_xdp(name, ifindex) {
            Ok(()) => true,
            Err(e) => {
                warn!(device = name, error = %e, "no XDP on this device: TC alone serves it");
                false
            }
        },
    };
    if !attached {
        dp.detach_xdp(ifindex)?;
    }
    info!(device = name, xdp = attached, "nodeport acceleration");
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
    let metrics = Metrics::new(Some(pins.clone()));
    let status = Status::default();
    status.identify(&node, args.source.as_ref().map(ToString::to_string));
    let mut failures = supervise::install().context("installing the thread supervisor")?;

    let options = datapath::LoadOptions {
        preallocate_maps: args.preallocate_bpf_maps,
    };
    let mut dp = Datapath::load_with(pins.clone(), options)
        .with_context(|| format!("loading the datapath under {}", pins.root().display()))?;
    let adopted = dp.adopt_links().context("adopting pinned links")?;
    let forgotten = datapath::forget_ifindexes(&mut dp, &adopted.stale)?;
    info!(node, root = %pins.root().display(), adopted = adopted.adopted, forgotten, "datapath loaded");
    let tunnel_port = if args.routing == Routing::Vxlan {
        args.vxlan_port
    } else {
        0
    };
    write_node(&mut dp, &net, args.vxlan_vni, tunnel_port)?;
    // The switch follows once the cluster's pod CIDRs are known (`update`);
    // until then it stays as an earlier agent left it.
    let masq = Masquerade::new(
        MasqConfig {
            cluster_cidrs: args.cluster_cidr.clone(),
            own_pod_cidrs: args.pod_cidrs.clone(),
            non_masquerade: args.non_masquerade_cidrs.clone(),
            own_addresses: net.all_addresses.clone(),
        },
        args.masquerade,
    );
    dp.attach_cgroup(&cgroup)
        .with_context(|| format!("attaching the socket hooks to {}", cgroup.display()))?;
    for (name, ifindex) in &net.devices {
        dp.attach_device(name, *ifindex)
            .with_context(|| format!("attaching the node program to {name}"))?;
        accelerate(&mut dp, args.nodeport_acceleration, name, *ifindex)?;
    }
    info!(
        devices = ?net.devices.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        nodeport_addresses = ?net.nodeport_addresses,
        "node devices"
    );
    let overlay = overlay_device(&mut dp, &net, &args)?;
    // The events: read here, served to every monitor (a failure costs the
    // event stream, not the datapath).
    let monitor_socket = args
        .monitor_socket
        .clone()
        .unwrap_or_else(|| weir_agent::monitor::default_socket(&args.cni_socket));
    let dp = Arc::new(Mutex::new(dp));
    match weir_agent::monitor::start(&pins, &monitor_socket, SharedDatapath(dp.clone())) {
        Ok(()) => {
            if let Err(e) = SharedDatapath(dp.clone())
                .lock()
                .names
                .set_monitor_socket(&monitor_socket)
            {
                warn!(error = %e, "recording the monitor socket for weirctl");
            }
        }
        Err(e) => warn!(socket = %monitor_socket.display(), error = %e, "datapath events not served"),
    }
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
                mtu: overlay.map(|d| d.mtu),
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
            let overlay = overlay.map(|device| Overlay {
                device,
                sources: node_sources(&net),
                maps: SharedDatapath(dp.clone()),
            });
            let routes = (args.routing != Routing::Off)
                .then(|| NodeRouting::new(&node, overlay))
                .transpose()
                .context("opening netlink for the routes to other nodes")?;
            let services = Services {
                node: context,
                routes,
                pins: &pins,
                spec,
                kube: KubeOptions {
                    kubeconfig: args.kubeconfig.clone(),
                    streaming_lists: args.streaming_lists,
                },
                maps: SharedDatapath(dp.clone()),
                metrics: metrics.clone(),
                status: status.clone(),
                watch,
                masq,
            };
            start_services(services)?;
        }
        None => {
            // No Nodes to read: the exceptions come from the flags alone.
            let mut masq = masq;
            masq.update(
                &Default::default(),
                &Default::default(),
                &SharedDatapath(dp.clone()),
            );
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
        http::spawn(args.metrics_address.0, Endpoints::Metrics(metrics.clone()));
        http::spawn(args.health_address.0, Endpoints::Health(status.clone()));
        http::spawn(
            args.kube_proxy_healthz_address.0,
            Endpoints::KubeProxy(status.clone()),
        );
        // Bind last: a plugin that can connect finds a datapath ready to take its pod.
        let listener = cni_server::bind(&args.cni_socket)?;
        info!(socket = %args.cni_socket.display(), "serving CNI registrations");
        status.cni_serving();
        // A supervised thread's panic ends the agent (see `supervise`): the
        // DaemonSet restarts it, and the pinned datapath forwards meanwhile.
        tokio::select! {
            served = cni_server::serve(listener, dp, metrics) => served.context("serving the CNI socket"),
            failure = failures.next() => Err(anyhow::anyhow!(
                "{failure}: exiting so that the agent is restarted (the datapath stays pinned and keeps forwarding)"
            )),
        }
    })
}

/// `--routing vxlan`: the overlay's device, made as the flags say, its programs
/// attached; otherwise, a device left by an earlier agent is removed.
fn overlay_device(
    dp: &mut Datapath,
    net: &NodeNet,
    args: &RunArgs,
) -> anyhow::Result<Option<overlay::Device>> {
    let netlink = Netlink::open().context("opening netlink for the overlay")?;
    if args.routing != Routing::Vxlan {
        overlay::remove_device(&netlink).context("removing the overlay's device")?;
        return Ok(None);
    }
    let underlay_mtu = match net.devices.first() {
        Some((_, ifindex)) => overlay::link_mtu(&netlink, *ifindex)?,
        None => None,
    }
    .unwrap_or(1500);
    let ipv6_underlay = net.snat.v4 == [0; 16] && net.snat.v6 != [0; 16];
    let mtu = overlay::pod_mtu(underlay_mtu, ipv6_underlay);
    let device = overlay::ensure_device(&netlink, args.vxlan_port, mtu)
        .with_context(|| format!("creating the overlay's device {}", overlay::DEVICE))?;
    dp.attach_overlay(overlay::DEVICE, device.ifindex)
        .with_context(|| format!("attaching the overlay's programs to {}", overlay::DEVICE))?;
    info!(
        device = overlay::DEVICE,
        port = args.vxlan_port,
        vni = args.vxlan_vni,
        mtu,
        underlay_mtu,
        "overlay ready"
    );
    Ok(Some(device))
}

/// The node's own addresses, one per family: the source of what the node
/// itself sends to other nodes' pods.
fn node_sources(net: &NodeNet) -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    if net.snat.v4 != [0; 16] {
        let a = &net.snat.v4;
        out.push(std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).into());
    }
    if net.snat.v6 != [0; 16] {
        out.push(std::net::Ipv6Addr::from(net.snat.v6).into());
    }
    out
}

/// The node's addresses in the maps: what external flows to remote endpoints
/// are source-NATed to, this namespace's cookie and ephemeral ports, every
/// address of the node's own namespace, each device's own addresses (what
/// pods' flows leaving by it are masqueraded to), and the overlay's VNI and
/// port.
fn write_node(dp: &mut Datapath, net: &NodeNet, vni: u32, tunnel_port: u16) -> anyhow::Result<()> {
    let node_addrs = weir_common::NodeAddrs {
        netns_cookie: node_net::netns_cookie().context("reading this network namespace's cookie")?,
        ephemeral: node_net::ephemeral_ports().context("reading the node's ephemeral port range")?,
        // The delivery mode stays as the last agent left it until
        // `host_routing` decides again: a restart never flips it meanwhile.
        flags: dp.node.get(&0, 0).map_or(0, |n| n.flags),
        vni,
        tunnel_port: tunnel_port.to_be(),
        ..net.snat
    };
    dp.node
        .set(0, node_addrs, 0)
        .context("writing the node's addresses")?;
    for ip in &net.all_addresses {
        dp.node_ips
            .insert(datapath::endpoint_key(*ip), 1, 0)
            .context("writing the node's addresses")?;
    }
    // The devices of this start only: a device an earlier agent served and
    // this one does not (or an ifindex reused since) keeps no address here.
    let stale: Vec<u32> = dp
        .device_addrs
        .keys()
        .filter_map(Result::ok)
        .filter(|i| !net.device_addrs.iter().any(|(d, _)| d == i))
        .collect();
    for ifindex in stale {
        let _ = dp.device_addrs.remove(&ifindex);
    }
    for (ifindex, addrs) in &net.device_addrs {
        dp.device_addrs
            .insert(ifindex, addrs, 0)
            .context("writing the devices' addresses")?;
    }
    Ok(())
}

/// What the sync and GC threads start from.
struct Services<'a> {
    node: NodeContext,
    routes: Option<NodeRouting>,
    pins: &'a PinLayout,
    spec: &'a SourceSpec,
    kube: KubeOptions,
    maps: SharedDatapath,
    metrics: Arc<Metrics>,
    status: Status,
    watch: NodeWatch,
    masq: Masquerade,
}

/// Reads back what the service maps hold (never flushing them), then starts the
/// sync and conntrack GC threads.
fn start_services(s: Services<'_>) -> anyhow::Result<()> {
    let syncer = ServiceSyncer::new(&s.maps).context("reading the service maps back")?;
    let policy = PolicySyncer::new(&s.node.node_name, &s.maps).context("reading the policy maps back")?;
    let compiler = syncer.compiler(s.node);
    let (frontends, backends) = syncer.read_back().map_or((0, 0), |held| {
        (
            held.services.keys().filter(|k| k.slot == 0).count(),
            held.backends.len(),
        )
    });
    let source = s.spec.open(s.kube).context("opening the source")?;
    info!(
        source = source.describe(),
        frontends, backends, "service maps read back; watching the source"
    );
    let hygiene = Hygiene::open(s.pins)
        .inspect_err(|e| tracing::warn!(error = %e, "UDP conntrack flush disabled"))
        .ok();
    let timeouts = sync_loop::AffinityTimeouts::default();
    sync_loop::spawn_gc(s.pins, timeouts.clone(), s.metrics.clone())
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
        routes: s.routes,
        masquerade: s.masq,
        source_ranges: Default::default(),
        triggers: Vec::new(),
        started: std::time::SystemTime::now(),
    }
    .spawn()
    .context("spawning the sync thread")?;
    Ok(())
}
