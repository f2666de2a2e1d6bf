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
    /// Packets NetworkPolicy dropped since the last `drops` (reading consumes them).
    Drops,
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
        Command::Drops => render(&ctl::drops(&pins)?, out)?,
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

fn render<R: Row>(rows: &[R], output: Output) -> anyhow::Result<String> {
    Ok(match output {
        Output::Json => ctl::to_json(rows)?,
        Output::Table => ctl::to_table(rows),
    })
}
