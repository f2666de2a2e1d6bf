//! Masquerade: a pod's flow to a destination outside the cluster leaves the
//! node from the node's address (TC egress of the node's devices, where pods'
//! forwarded packets leave), as ip-masq-agent's or Cilium's masquerade does,
//! with conntrack and ports of its own: no netfilter involved. TCP, UDP and
//! ICMP echo (a ping's identifier is its port, as netfilter treats it).
//!
//! A flow is a conntrack pair like an external flow source-NATed to a remote
//! backend (`CT_F_SNAT`, plus `CT_F_MASQ`): `CT_OUT` keyed by the pod's tuple,
//! `CT_IN` by the destination's reply to the node's address and a port from
//! the allocator NodePorts' source NAT uses (`port`), the destination itself
//! as the pair's "backend" (no destination NAT). Replies arrive on the node
//! device's ingress, where `lb::reply` translates them back (`external`).
//!
//! Inside the cluster (never masqueraded) is what the agent writes in
//! [`NOMASQ`]: the cluster's pod CIDRs, every Node's addresses,
//! `--non-masquerade-cidrs`.

use aya_ebpf::{
    bindings::TC_ACT_OK,
    maps::{LpmTrie, lpm_trie::Key},
    programs::TcContext,
};
use weir_common::{
    CT_F_CLOSING, CT_F_MASQ, CT_F_RESET, CT_F_SNAT, CT_OUT, IPCACHE_PREFIX_BITS, IPPROTO_TCP,
    NODE_F_MASQUERADE, NOMASQ_F_CLUSTER, NomasqKey, Reason, maps,
};

use super::{
    Lb, Snat, Target,
    ct::{self, Sender, Tuple},
    frontend,
    maps::{CONNTRACK, DEVICE_ADDRS, NODE},
    nat, port, scratch, track,
};
use crate::{
    endpoints,
    metrics::Action,
    packet::{Family, Flow, TCP_ACK, TCP_SYN, tcp_tsval},
};

bpf_map! {
    static NOMASQ: LpmTrie<NomasqKey, u32> = LpmTrie::with_max_entries(maps::NOMASQ_ENTRIES, 0);
}

/// The `NOMASQ_F_*` flags of `addr`'s longest prefix in [`NOMASQ`]; `None`:
/// outside the cluster.
#[inline(always)]
fn nomasq<F: Family>(addr: &F::Addr) -> Option<u32> {
    let mut key = Key::new(
        IPCACHE_PREFIX_BITS + F::BITS,
        NomasqKey {
            family: F::AF,
            addr: [0; 16],
        },
    );
    F::widen(addr, &mut key.data.addr);
    NOMASQ.get(&key).copied()
}

/// Whether `addr` is in the cluster's pod CIDRs: a client there is inside
/// the cluster (another node's pod).
#[inline(always)]
pub fn inside<F: Family>(addr: &F::Addr) -> bool {
    let flags = nomasq::<F>(addr).unwrap_or(0);
    // Through memory: LLVM would fold the lookup's test into a later one on
    // a pointer (`R2 bitwise operator &= on pointer`), which the verifier refuses.
    // SAFETY: reading a live local.
    unsafe { core::ptr::read_volatile(&flags) & NOMASQ_F_CLUSTER != 0 }
}

/// A packet leaving by a node device that came in elsewhere: a local pod's
/// packet to a destination outside the cluster now comes from the node's
/// address and the flow's port.
#[inline(always)]
pub fn to_netdev<F: Lb>(ctx: &TcContext, flow: &mut Flow<F>) -> Result<Action, Reason> {
    let pass = Ok(Action::forward(TC_ACT_OK));
    let Some(node) = NODE.get(0) else {
        return pass;
    };
    if node.flags & NODE_F_MASQUERADE == 0
        || endpoints::veth(&endpoints::key::<F>(&flow.saddr)).is_none()
        || nomasq::<F>(&flow.daddr).is_some()
    {
        return pass;
    }
    let now = crate::clock::now();
    let s = scratch()?;

    // A known flow keeps its port. Expired but not collected yet, its port is
    // still this tuple's (taking a port removes the forward entry of its
    // previous flow), and the pair is written anew below.
    ct::fill_key(&mut s.out_key, flow, Tuple::AsSent, CT_OUT);
    let mut port = 0;
    if let Some(entry) = CONNTRACK.get_ptr_mut(&s.out_key) {
        // SAFETY: a pointer into the map's value, valid for this run.
        let e = unsafe { &mut *entry };
        if e.flags & CT_F_MASQ != 0 {
            if e.expires_ns > now {
                // A new connection on a closed flow's tuple: the same flow to
                // the destination, alive again.
                if ct::is_reuse(entry, flow) {
                    e.flags &= !(CT_F_CLOSING | CT_F_RESET);
                    e.fins = 0;
                }
                ct::refresh(entry, flow, now, Sender::Client);
                // The timestamp the peer's TIME_WAIT will remember is the
                // client's last: from its FIN on, or after the peer's. Data
                // packets before the close are not parsed for it.
                if flow.proto == IPPROTO_TCP
                    && e.flags & CT_F_CLOSING != 0
                    && let Some(ts) = tcp_tsval::<F, _>(ctx)
                {
                    e.backend_id = ts;
                }
                nat::snat(ctx, flow, &e.nat2_addr, e.nat2_port)?;
                return pass;
            }
            port = e.nat2_port;
        }
    }
    // Only what opens a flow is masqueraded: a TCP segment of no flow known
    // here belongs to a connection opened from outside (to the pod's own
    // address), which the pod answers from that address; so does an echo
    // reply (its identifier is the destination port).
    if port == 0
        && (flow.proto == IPPROTO_TCP && flow.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN
            || flow.proto == F::ICMP && flow.dport != 0)
    {
        return pass;
    }
    // The address of the device it leaves by (where replies come back), or
    // the node's of the family.
    // SAFETY: the context's skb pointer is valid for this run (TC egress: the
    // device it leaves by).
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let addr = device_addr::<F>(ifindex).unwrap_or(frontend::node_addr::<F>(node));
    // No node address of this family: nothing to masquerade to.
    if addr.iter().all(|b| *b == 0) {
        return pass;
    }
    let mut peer = [0u8; 16];
    F::widen(&flow.daddr, &mut peer);
    // The client's TCP timestamp: which ports another client left the peer
    // in TIME_WAIT on can take this SYN (`port::free`).
    let tsval = if flow.proto == IPPROTO_TCP {
        tcp_tsval::<F, _>(ctx).unwrap_or(0)
    } else {
        0
    };
    if port == 0 {
        port = port::free(s, flow, &peer, flow.dport, node, addr, tsval, now)?;
    }
    let to = Target {
        addr: &peer,
        port: flow.dport,
        rev_nat_id: 0,
        backend_id: tsval,
    };
    track(
        flow,
        s,
        &to,
        Some(&Snat { addr, port }),
        CT_F_SNAT | CT_F_MASQ,
        now,
    )?;
    nat::snat(ctx, flow, addr, port)?;
    if crate::events::tracing() {
        crate::events::translated(s, weir_common::Dir::ToNetdev, ifindex);
    }
    pass
}

/// The address of family `F` of device `ifindex`, if the agent wrote one.
#[inline(always)]
pub fn device_addr<F: Lb>(ifindex: u32) -> Option<&'static [u8; 16]> {
    // SAFETY: a pointer into the map's value, valid for this run.
    let device = unsafe { DEVICE_ADDRS.get(&ifindex) }?;
    let addr = frontend::node_addr_of::<F>(&device.v4, &device.v6);
    addr.iter().any(|b| *b != 0).then_some(addr)
}
