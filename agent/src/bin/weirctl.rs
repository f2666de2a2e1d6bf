//! `weirctl`: read-only views of Weir's pinned maps, in human terms.

use std::{net::IpAddr, path::PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use weir_agent::datapath::{
    PinLayout,
    maps::{self, Endpoints, Metrics},
    pins::DEFAULT_ROOT,
};
use weir_common::{AF_INET, EndpointKey, Reason};

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let pins = PinLayout::new(&cli.bpffs_root);
    let rows = match cli.command {
        Command::Endpoints => endpoints(&pins)?,
        Command::Metrics => metrics(&pins)?,
    };
    match cli.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => print_table(&rows),
    }
    Ok(())
}

fn endpoints(pins: &PinLayout) -> anyhow::Result<Vec<serde_json::Value>> {
    let map: Endpoints = maps::open_pinned(pins, &maps::ENDPOINTS)?;
    let mut rows = Vec::new();
    for entry in map.iter() {
        let (key, info) = entry.context("reading endpoints")?;
        rows.push(json!({
            "ip": addr(&key).to_string(),
            "ifindex": info.ifindex,
            "identity": info.identity,
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
            json!({
                "direction": if slot >> 8 == 0 { "from-pod" } else { "to-pod" },
                "reason": Reason::name((slot & 0xff) as u8),
                "packets": v.packets,
                "bytes": v.bytes,
            })
        })
        .collect())
}

fn addr(key: &EndpointKey) -> IpAddr {
    if key.family == AF_INET {
        IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]])
    } else {
        IpAddr::from(key.addr)
    }
}

/// Columns in the order of the first row's keys.
fn print_table(rows: &[serde_json::Value]) {
    let Some(first) = rows.first().and_then(|r| r.as_object()) else {
        println!("(none)");
        return;
    };
    let cols: Vec<&String> = first.keys().collect();
    let cell = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let widths: Vec<usize> = cols
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| cell(&r[c.as_str()]).len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(cols.iter().map(|c| c.to_uppercase()).collect()));
    for r in rows {
        println!("{}", line(cols.iter().map(|c| cell(&r[c.as_str()])).collect()));
    }
}
