//! `weirctl`: read-only views of Weir's pinned maps, in human terms.

use std::{io::Write as _, path::PathBuf};

use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use weir_agent::{
    ctl::{self, Row},
    datapath::{PinLayout, pins::DEFAULT_ROOT},
};

#[derive(Parser)]
#[command(name = "weirctl", version, about = "Inspect Weir's eBPF maps")]
struct Cli {
    /// The agent's pin root (weir-agent --bpffs-root).
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    bpffs_root: PathBuf,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// The agent's event socket (`weir-agent run --monitor-socket`); default:
    /// where the agent of `--bpffs-root` says it is.
    #[arg(long, global = true)]
    monitor_socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Local pods known to the datapath.
    Endpoints,
    /// Packets and bytes seen by the programs, per direction and reason.
    Metrics,
    /// Service frontends (VIP:port/proto), their flags and backends in slot order.
    Services,
    /// Backends: address, protocol, state, and how many slots point at each.
    Backends,
    /// Translated flows: tuples, NAT, flags, seconds left.
    Conntrack,
    /// Session affinity: client, frontend, backend, idle time.
    Affinity,
    /// NetworkPolicy: what each isolated local pod admits, per direction.
    Policy,
    /// Policy identities of peer addresses and prefixes.
    Ipcache,
    /// `--routing vxlan`: other nodes' pod CIDRs and the node each is tunnelled to.
    Tunnels,
    /// The sources each LoadBalancer IP with `loadBalancerSourceRanges`
    /// admits (new flows from elsewhere are dropped).
    SourceRanges,
    /// The latest packets the datapath dropped, of every reason (the agent
    /// keeps the last 1,024; reading takes nothing from other readers).
    Drops,
    /// Datapath events as they happen: drops, with reason, pods, Service and
    /// flow, one per line (`-o json`: one JSON object per line); with
    /// `--trace`, every new flow's decisions too. Any number of monitors at
    /// once, each sees every event it asks for.
    Monitor {
        /// Also one event per new flow: the load balancer's choice (frontend
        /// -> backend, and any new source) and each policy verdict that
        /// admitted it. The datapath reports them only while some monitor
        /// traces.
        #[arg(long)]
        trace: bool,
        /// Only events of this type (`drop`, `translate`, `policy`; the
        /// last two are traces: they imply `--trace`).
        #[arg(long = "type")]
        kind: Option<String>,
        /// Only events of this pod (`namespace/name`).
        #[arg(long)]
        pod: Option<String>,
        /// Only events with this address at either end.
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        /// Only events with this port at either end.
        #[arg(long)]
        port: Option<u16>,
        /// Only events of this protocol (`TCP`, `UDP`, ...).
        #[arg(long)]
        protocol: Option<String>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// What this node's datapath does with a new flow from SRC to DST: the
    /// frontend it matches (and its Service), the candidate backends and which
    /// one the flow gets, each one's egress and ingress policy verdict (peer
    /// identity, rule), the route. From the pinned maps alone.
    Explain {
        /// The source: an address, or `namespace/name` of a pod of this node.
        src: String,
        /// `ADDRESS:PORT[/PROTO]` (`[v6]:PORT`; TCP by default).
        dst: String,
        /// The client's source port, for Maglev's choice.
        #[arg(long)]
        sport: Option<u16>,
    },
    /// The node's datapath at a glance: the agent (up or not, its source and
    /// sync state, its build), the node's addresses and modes, where
    /// programs are attached, each map's fill. Works with the agent down.
    Status {
        /// The agent's health address (`weir-agent run --health-address`).
        #[arg(long, default_value = "127.0.0.1:9879")]
        agent: std::net::SocketAddr,
    },
    /// A completion script for `shell`, on stdout (e.g. `weirctl completions
    /// bash > /etc/bash_completion.d/weirctl`). Needs no maps.
    Completions { shell: clap_complete::Shell },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "weirctl", &mut std::io::stdout());
        return Ok(());
    }
    let pins = PinLayout::new(weir_agent::datapath::bpffs::resolve(&cli.bpffs_root, false)?);
    let out = cli.output;
    let mut text = match cli.command {
        Command::Endpoints => render(&ctl::endpoints(&pins)?, out)?,
        Command::Metrics => render(&ctl::metrics(&pins)?, out)?,
        Command::Services => render(&ctl::services(&pins)?, out)?,
        Command::Backends => render(&ctl::backends(&pins)?, out)?,
        Command::Conntrack => render(&ctl::conntrack(&pins)?, out)?,
        Command::Affinity => render(&ctl::affinity(&pins)?, out)?,
        Command::Policy => render(&ctl::policy(&pins)?, out)?,
        Command::Ipcache => render(&ctl::ipcache(&pins)?, out)?,
        Command::Tunnels => render(&ctl::tunnels(&pins)?, out)?,
        Command::SourceRanges => render(&ctl::source_ranges(&pins)?, out)?,
        Command::Drops => {
            let mut rows = Vec::new();
            weir_agent::monitor::request(
                &monitor_socket(&cli.monitor_socket, &pins),
                "recent",
                || {},
                |row| {
                    rows.push(row);
                    true
                },
            )
            .map_err(anyhow::Error::msg)?;
            render(&rows, out)?
        }
        Command::Monitor {
            trace,
            kind,
            pod,
            ip,
            port,
            protocol,
            count,
        } => {
            let filter = Filter {
                kind,
                pod,
                ip,
                port,
                protocol,
            };
            let mut left = count.unwrap_or(usize::MAX);
            let socket = monitor_socket(&cli.monitor_socket, &pins);
            let mut stdout = std::io::stdout().lock();
            weir_agent::monitor::request(
                &socket,
                if trace || filter.kind.as_deref().is_some_and(|k| k != "drop") {
                    "follow trace"
                } else {
                    "follow"
                },
                || eprintln!("following the datapath's events from {}", socket.display()),
                |row| {
                    if !filter.admits(&row) {
                        return true;
                    }
                    let line = match out {
                        Output::Json => serde_json::to_string(&row).unwrap_or_default(),
                        Output::Table => row.cells().join("  "),
                    };
                    left -= 1;
                    writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_ok() && left > 0
                },
            )
            .map_err(anyhow::Error::msg)?;
            return Ok(());
        }
        Command::Status { agent } => {
            let report = ctl::status(&pins, agent)?;
            match out {
                Output::Json => serde_json::to_string_pretty(&report)?,
                Output::Table => report.to_text(),
            }
        }
        Command::Explain { src, dst, sport } => {
            let flow =
                ctl::Flow::parse(&src, &dst, sport, &ctl::name_table(&pins)).map_err(anyhow::Error::msg)?;
            let explained = ctl::explain(&pins, &flow)?;
            match out {
                Output::Json => serde_json::to_string_pretty(&explained)?,
                Output::Table => explained.to_text(),
            }
        }
        Command::Completions { .. } => unreachable!("answered above"),
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    // `weirctl services | head` closes the pipe early: not an error.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `--monitor-socket`, or where the agent recorded it, or the default.
fn monitor_socket(flag: &Option<PathBuf>, pins: &PinLayout) -> PathBuf {
    flag.clone()
        .or_else(|| ctl::name_table(pins).monitor_socket)
        .unwrap_or_else(|| {
            weir_agent::monitor::default_socket(std::path::Path::new(weir_agent_api::DEFAULT_SOCKET))
        })
}

/// `weirctl monitor`'s filters: every one given must hold.
struct Filter {
    kind: Option<String>,
    pod: Option<String>,
    ip: Option<std::net::IpAddr>,
    port: Option<u16>,
    protocol: Option<String>,
}

impl Filter {
    fn admits(&self, row: &ctl::EventRow) -> bool {
        let ends: Vec<std::net::SocketAddr> = row.ends().collect();
        self.kind.as_ref().is_none_or(|k| *k == row.kind)
            && self.pod.as_ref().is_none_or(|p| row.pods().any(|x| x == p))
            && self.ip.is_none_or(|ip| ends.iter().any(|e| e.ip() == ip))
            && self.port.is_none_or(|port| ends.iter().any(|e| e.port() == port))
            && self
                .protocol
                .as_ref()
                .is_none_or(|p| p.eq_ignore_ascii_case(&row.protocol))
    }
}

fn render<R: Row>(rows: &[R], output: Output) -> anyhow::Result<String> {
    Ok(match output {
        Output::Json => ctl::to_json(rows)?,
        Output::Table => ctl::to_table(rows),
    })
}
