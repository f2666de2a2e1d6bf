//! `weirctl`: read-only views of Weir's pinned maps, in human terms.

use std::{io::Write as _, path::PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use weir_agent::{
    ctl::{self, View},
    datapath::{
        PinLayout,
        maps::{self, Endpoints, Metrics},
        pins::DEFAULT_ROOT,
    },
};
use weir_common::{Dir, Reason, metrics_slot};

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
    /// Packets NetworkPolicy dropped since the last `drops` (reading consumes them).
    Drops,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let pins = PinLayout::new(weir_agent::datapath::bpffs::resolve(&cli.bpffs_root, false)?);
    let view = match cli.command {
        Command::Endpoints => View::flat(endpoints(&pins)?, vec!["ip", "ifindex"]),
        Command::Metrics => View::flat(metrics(&pins)?, vec!["direction", "reason", "packets", "bytes"]),
        Command::Services => ctl::services(&pins)?,
        Command::Backends => ctl::backends(&pins)?,
        Command::Conntrack => ctl::conntrack(&pins)?,
        Command::Affinity => ctl::affinity(&pins)?,
        Command::Policy => ctl::policy(&pins)?,
        Command::Ipcache => ctl::ipcache(&pins)?,
        Command::Drops => ctl::drops(&pins)?,
    };
    let mut text = match cli.output {
        Output::Json => view.to_json(),
        Output::Table => view.to_table(),
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

fn endpoints(pins: &PinLayout) -> anyhow::Result<Vec<serde_json::Value>> {
    let map: Endpoints = maps::open_pinned(pins, &maps::ENDPOINTS)?;
    let mut rows = Vec::new();
    for entry in map.iter() {
        let (key, info) = entry.context("reading endpoints")?;
        rows.push(json!({
            "ip": ctl::ip_text(key.addr, key.family),
            "ifindex": info.ifindex,
        }));
    }
    rows.sort_by(|a, b| a["ip"].as_str().cmp(&b["ip"].as_str()));
    Ok(rows)
}

fn metrics(pins: &PinLayout) -> anyhow::Result<Vec<serde_json::Value>> {
    let map: Metrics = maps::open_pinned(pins, &maps::METRICS)?;
    Ok(maps::sum_metrics(&map)?
        .into_iter()
        .map(|(slot, v)| {
            let (dir, reason) = metrics_slot(slot);
            json!({
                "direction": Dir::try_from(dir).map_or("unknown", Dir::name),
                "reason": Reason::describe_code(reason),
                "packets": v.packets,
                "bytes": v.bytes,
            })
        })
        .collect())
}
