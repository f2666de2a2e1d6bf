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
    datapath::{Datapath, PinLayout, pins::DEFAULT_ROOT},
};

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
    },
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
        } => run(&node, PinLayout::new(bpffs_root), &cni_socket),
    }
}

fn run(node: &str, pins: PinLayout, cni_socket: &std::path::Path) -> anyhow::Result<()> {
    let mut dp = Datapath::load(pins.clone())
        .with_context(|| format!("loading the datapath under {}", pins.root().display()))?;
    let adopted = dp.adopt_links().context("adopting pinned links")?;
    let forgotten = cni_server::forget_ifindexes(&mut dp, &adopted.stale)?;
    info!(node, root = %pins.root().display(), adopted = adopted.adopted, forgotten, "datapath loaded");
    // Bind last: a plugin that can connect finds a datapath ready to take its pod.
    let listener = cni_server::bind(cni_socket)?;
    info!(socket = %cni_socket.display(), "serving CNI registrations");
    cni_server::serve(listener, Arc::new(Mutex::new(dp)));
    Ok(())
}
