//! `weir-lab`: the main job. Builds a node of network namespaces, runs `weir-agent`
//! on it, wires pods with `weir-cni` and shows them talking, with what the
//! datapath saw, as `weirctl` reports it.

use std::{net::SocketAddr, process::Command};

use anyhow::{Context as _, ensure};
use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use weir_lab::{
    Node, Pod, bins,
    traffic::{EchoServer, tcp_roundtrip, udp_roundtrip},
};

#[derive(Parser)]
#[command(name = "weir-lab", about = "A local lab of namespaces running Weir")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the lab, show pods talking, tear it down (or keep it with --keep).
    Demo {
        /// Keep the lab up until Ctrl-C, to explore it with `ip netns exec` and weirctl.
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let Cmd::Demo { keep } = Cli::parse().command;
    weir_lab::require_root();
    // Block Ctrl-C before any thread starts (threads inherit the mask), so that it
    // reaches our sigwait and the lab is torn down instead of the process dying.
    let signals = termination_signals();
    if keep {
        signals.thread_block().context("blocking SIGINT/SIGTERM")?;
    }
    let mut node = Node::new("10.244.1.0/24");
    println!(
        "== node {} (pod CIDR 10.244.1.0/24), pins under {}",
        node.ns.name(),
        node.bpffs_root.display()
    );
    let agent = node.start_agent();
    println!("== weir-agent running, CNI socket {}", agent.socket.display());

    let pods: Vec<Pod> = ["a", "b", "c"].iter().map(|name| node.add_pod(name)).collect();
    println!("\n== pods wired by weir-cni");
    for pod in &pods {
        let host_if = pod.result["interfaces"][0]["name"].as_str().unwrap_or("?");
        println!(
            "  pod {:<2} netns {:<12} ip {:<12} host veth {}",
            pod.spec.name,
            pod.ns.name(),
            pod.ipv4(),
            host_if
        );
    }

    let servers: Vec<EchoServer> = pods
        .iter()
        .map(|p| EchoServer::start(&p.ns, SocketAddr::new(p.ipv4(), 8080)))
        .collect();
    println!("\n== pod-to-pod traffic (TCP and UDP echo on :8080)");
    let mut failures = 0;
    for from in &pods {
        for (to, server) in pods.iter().zip(&servers) {
            if from.spec.name == to.spec.name {
                continue;
            }
            let msg = format!("hi {} from {}", to.spec.name, from.spec.name);
            let tcp = tcp_roundtrip(&from.ns, server.addr, msg.as_bytes()).is_ok_and(|b| b == msg.as_bytes());
            let udp = udp_roundtrip(&from.ns, server.addr, msg.as_bytes()).is_ok_and(|b| b == msg.as_bytes());
            failures += usize::from(!tcp) + usize::from(!udp);
            println!(
                "  {} -> {} ({}): TCP {}  UDP {}",
                from.spec.name,
                to.spec.name,
                server.addr,
                if tcp { "ok" } else { "FAILED" },
                if udp { "ok" } else { "FAILED" }
            );
        }
    }

    for view in ["endpoints", "metrics"] {
        println!("\n== weirctl {view}");
        let status = Command::new(bins::path("weirctl"))
            .arg("--bpffs-root")
            .arg(&node.bpffs_root)
            .arg(view)
            .status()
            .context("running weirctl")?;
        ensure!(status.success(), "weirctl {view} failed");
    }

    if keep {
        println!(
            "\nLab is up. Try:\n  ip netns exec {} ping {}\n  {} --bpffs-root {} metrics\nCtrl-C tears it down.",
            pods[0].ns.name(),
            pods[1].ipv4(),
            bins::path("weirctl").display(),
            node.bpffs_root.display()
        );
        signals.wait().context("waiting for Ctrl-C")?;
    }
    ensure!(failures == 0, "{failures} probes failed");
    println!("\nAll pods reached each other. Tearing the lab down.");
    Ok(())
}

fn termination_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set
}
