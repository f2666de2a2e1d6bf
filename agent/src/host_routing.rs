//! How packets from pods reach pods of the same node: straight to their veth
//! (`ebpf`, the fast path), or through the host's stack (`legacy`), where
//! netfilter sees both directions of every flow.
//!
//! The fast path skips netfilter. That is right once Weir does all the
//! translating, and wrong while netfilter still translates flows itself:
//! kube-proxy's rules during a migration, the hostPorts of the chained
//! `portmap` plugin. Their replies, handed straight to the client's veth,
//! never get their reverse translation and the client resets the connection.
//! So `auto` delivers through the host's stack while this node's netfilter has
//! such rules (kube-proxy's table or its `KUBE-SERVICES` rules, portmap's
//! `CNI-HOSTPORT-DNAT` rules), and switches to the fast path once they are
//! gone, rechecked every [`RECHECK`].

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::Arc,
    time::Duration,
};

use tracing::{info, warn};
use weir_common::NODE_F_HOST_STACK;

use crate::{metrics::Metrics, sync::SharedDatapath};

/// `--host-routing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HostRouting {
    /// The host's stack while netfilter translates pod traffic itself, eBPF
    /// otherwise.
    Auto,
    /// Straight to the destination pod's veth.
    Ebpf,
    /// Through the host's stack (routing, netfilter).
    Legacy,
}

/// How often `auto` looks at netfilter again.
pub const RECHECK: Duration = Duration::from_secs(10);

/// kube-proxy's nftables mode keeps its rules in a table of its own (in the
/// `ip` and `ip6` families), which its cleanup deletes.
const KUBE_PROXY_TABLE: &str = "kube-proxy";
/// The `nat` chains that translate pod traffic while they hold rules:
/// kube-proxy's iptables mode (every Service is reached from `KUBE-SERVICES`)
/// and portmap's hostPorts (one rule per pod with a hostPort; the chain stays,
/// empty, after the last one).
const TRANSLATING_CHAINS: [&str; 2] = ["KUBE-SERVICES", "CNI-HOSTPORT-DNAT"];

/// Why pod traffic must go through the host's stack, if it must: what of
/// netfilter translates it. `iptables-legacy` tables cannot be read without
/// its tool; a `nat` table there is taken as translating.
pub fn netfilter_translates() -> io::Result<Option<String>> {
    for table in nft_dump(NFT_MSG_GETTABLE, libc::AF_UNSPEC as u8, &[])? {
        if attribute(&table, NFTA_TABLE_NAME).is_some_and(|n| n == KUBE_PROXY_TABLE) {
            return Ok(Some(format!(
                "nftables table {KUBE_PROXY_TABLE} (kube-proxy, nftables mode)"
            )));
        }
    }
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        for chain in TRANSLATING_CHAINS {
            let filter = [(NFTA_RULE_TABLE, "nat"), (NFTA_RULE_CHAIN, chain)];
            let rules = nft_dump(NFT_MSG_GETRULE, family, &filter)?.len();
            if rules > 0 {
                let table = if family == libc::AF_INET as u8 {
                    "ip nat"
                } else {
                    "ip6 nat"
                };
                return Ok(Some(format!(
                    "{rules} rules in chain {chain} of nftables table {table}"
                )));
            }
        }
    }
    for (file, tool) in [
        ("/proc/net/ip_tables_names", "iptables"),
        ("/proc/net/ip6_tables_names", "ip6tables"),
    ] {
        match std::fs::read_to_string(file) {
            Ok(names) if names.lines().any(|t| t.trim() == "nat") => {
                return Ok(Some(format!("a {tool}-legacy nat table")));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// A netlink message's attributes: (type, payload).
type Attributes = Vec<(u16, Vec<u8>)>;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETRULE: u16 = 7;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;

/// One nftables dump of `msg` in `family`, filtered by the string attributes
/// `filter` (the kernel narrows rule dumps to a table and chain): each answer's
/// attributes. Nothing to dump (no such table or chain, no nf_tables) is an
/// empty answer.
fn nft_dump(msg: u16, family: u8, filter: &[(u16, &str)]) -> io::Result<Vec<Attributes>> {
    const NLMSG_HDR: usize = 16;
    const NFGENMSG: usize = 4;

    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: a valid option value of its declared size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as u32,
        );
    }
    // nlmsghdr (len, type, flags, seq, pid), nfgenmsg (family, version,
    // res_id), then the filter's attributes (NUL-terminated strings).
    let mut req = vec![0u8; NLMSG_HDR];
    req.extend_from_slice(&[family, 0, 0, 0]);
    for (kind, value) in filter {
        let len = 4 + value.len() + 1;
        req.extend_from_slice(&(len as u16).to_ne_bytes());
        req.extend_from_slice(&kind.to_ne_bytes());
        req.extend_from_slice(value.as_bytes());
        req.push(0);
        req.resize(req.len().next_multiple_of(4), 0);
    }
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: `req` is a valid buffer of its length.
    if unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is a valid buffer of its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= NLMSG_HDR {
            let len = u32::from_ne_bytes([msgs[0], msgs[1], msgs[2], msgs[3]]) as usize;
            let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
            if len < NLMSG_HDR || len > msgs.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink message",
                ));
            }
            match i32::from(kind) {
                libc::NLMSG_DONE => return Ok(answers),
                libc::NLMSG_ERROR => {
                    let errno = msgs
                        .get(NLMSG_HDR..NLMSG_HDR + 4)
                        .map_or(0, |e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]));
                    return match -errno {
                        0 | libc::ENOENT | libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT => Ok(answers),
                        e => Err(io::Error::from_raw_os_error(e)),
                    };
                }
                _ => {
                    let attrs = msgs.get(NLMSG_HDR + NFGENMSG..len).unwrap_or_default();
                    answers.push(attributes(attrs).map(|(k, v)| (k, v.to_vec())).collect());
                }
            }
            msgs = &msgs[len.next_multiple_of(4).min(msgs.len())..];
        }
    }
}

/// The string attribute `kind` of `attrs`, without its NUL.
fn attribute(attrs: &Attributes, kind: u16) -> Option<String> {
    let (_, value) = attrs.iter().find(|(k, _)| *k == kind)?;
    let text = value.split(|b| *b == 0).next().unwrap_or_default();
    Some(String::from_utf8_lossy(text).into_owned())
}

/// The netlink attributes (type, payload) of `bytes`.
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16::from_ne_bytes([*bytes.first()?, *bytes.get(1)?]) as usize;
        let kind = u16::from_ne_bytes([*bytes.get(2)?, *bytes.get(3)?]) & 0x3fff;
        let value = bytes.get(4..len)?;
        bytes = bytes.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, value))
    })
}

/// Whether `mode` means the host's stack now (and why).
fn decide(mode: HostRouting) -> (bool, String) {
    match mode {
        HostRouting::Ebpf => (false, "--host-routing=ebpf".into()),
        HostRouting::Legacy => (true, "--host-routing=legacy".into()),
        HostRouting::Auto => match netfilter_translates() {
            Ok(Some(why)) => (true, format!("netfilter translates pod traffic: {why}")),
            Ok(None) => (false, "netfilter translates no pod traffic".into()),
            // Unknown: the stack is right either way, only slower.
            Err(e) => (true, format!("netfilter could not be read ({e})")),
        },
    }
}

/// Sets the datapath's delivery for `mode` now, and for `auto` keeps it
/// following netfilter from a thread of its own.
pub fn start(mode: HostRouting, maps: SharedDatapath, metrics: Arc<Metrics>) {
    let mut current = None;
    let mut apply = move |maps: &SharedDatapath| {
        let (host_stack, why) = decide(mode);
        if current == Some(host_stack) {
            return;
        }
        let mut dp = maps.lock();
        match dp.set_node_flag(NODE_F_HOST_STACK, host_stack) {
            Ok(()) => {
                info!(
                    routing = if host_stack { "legacy" } else { "ebpf" },
                    reason = why,
                    "pod-to-pod delivery"
                );
                metrics.host_stack.set(i64::from(host_stack));
                current = Some(host_stack);
            }
            Err(e) => warn!(error = %e, "writing the delivery mode to the node map"),
        }
    };
    apply(&maps);
    if mode != HostRouting::Auto {
        return;
    }
    let spawned = crate::supervise::spawn("weir-routing", move || {
        loop {
            std::thread::sleep(RECHECK);
            apply(&maps);
        }
    });
    if let Err(e) = spawned {
        warn!(error = %e, "no thread to follow netfilter: the delivery mode stays as it is");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_walked_with_padding() {
        // NFTA_CHAIN_TABLE "nat\0" (len 8), NFTA_CHAIN_NAME "KUBE-SERVICES\0"
        // (len 18, padded to 20), then a nested attribute flag on type 4.
        let mut bytes = vec![8, 0, 1, 0, b'n', b'a', b't', 0];
        bytes.extend_from_slice(&[18, 0, 3, 0]);
        bytes.extend_from_slice(b"KUBE-SERVICES\0");
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&[8, 0, 4, 0x80, 1, 2, 3, 4]);
        let got: Vec<(u16, Vec<u8>)> = attributes(&bytes).map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (1, b"nat\0".to_vec()),
                (3, b"KUBE-SERVICES\0".to_vec()),
                (4, vec![1, 2, 3, 4])
            ]
        );
        // Truncated: stops, no panic.
        assert_eq!(attributes(&bytes[..10]).count(), 1);
    }
}
