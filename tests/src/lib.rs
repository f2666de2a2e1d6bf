//! The lab: "nodes" and "pods" made of network namespaces, wired by the real
//! `weir-cni` invoked exactly as a container runtime does (environment + stdin).
//!
//! Everything here needs root. Every object cleans itself up on drop, so a failing
//! test leaves nothing behind; names are unique per process and call so tests can
//! run in parallel.

pub mod agent;
pub mod apiserver;
pub mod bench;
pub mod bench_json;
pub mod bins;
pub mod cni;
pub mod connrate;
pub mod containerd;
pub mod datagram;
pub mod flood;
pub mod icmp;
pub mod internet;
pub mod kube_lab;
pub mod kube_proxy;
pub mod large_cluster;
pub mod netns;
pub mod netpol;
pub mod node;
pub mod reachability;
pub mod rng;
pub mod services;
pub mod tempdir;
pub mod traffic;
pub mod underlay;
pub mod whoami;
pub mod xdp_pass;

pub use agent::Agent;
pub use cni::{CniCall, CniOutcome};
pub use netns::Netns;
pub use node::{Node, Pod, PodSpec};
pub use tempdir::TempDir;

use std::sync::atomic::{AtomicU32, Ordering};

/// Panics with a clear message unless we are root: the lab cannot run otherwise,
/// and a test that silently skips would report success it never earned.
pub fn require_root() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("this test needs root (network namespaces, veths, eBPF): run it as root");
    }
}

/// A short name unique to this process and call: `{prefix}{pid}x{n}` (kept short
/// because interface names stop at 15 bytes).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// A plain HTTP GET from inside `ns` (`addr` as `ip:port`): the response's body.
pub fn http_get(ns: &Netns, addr: &str, path: &str) -> String {
    http_status(ns, addr, path).1
}

/// `GET path` from inside `ns`: the status code and the body.
pub fn http_status(ns: &Netns, addr: &str, path: &str) -> (u16, String) {
    try_http_status(ns, addr, path).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// [`http_status`], or why nothing accepted the connection (a server not
/// listening yet: a probe tries again).
pub fn try_http_status(ns: &Netns, addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let (addr, path) = (addr.to_owned(), path.to_owned());
    ns.run(move || {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(&addr)?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("response");
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {out:?}"));
        let body = out
            .split_once("\r\n\r\n")
            .map_or(out.clone(), |(_, body)| body.to_owned());
        Ok((code, body))
    })
}

/// Whether link `name` exists in `ns`.
pub fn link_exists(ns: &Netns, name: &str) -> bool {
    ns.exec(&["ip", "link", "show", name]).status.success()
}

/// A benchmark setting from the environment, or its default; panics (naming the
/// variable) on a value that does not parse, rather than running something else.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        Err(_) => default,
    }
}
