//! Delivery straight into a local pod's namespace.
//!
//! `bpf_redirect_peer` (TC ingress only; to a veth or netkit whose peer lives
//! in another namespace) hands the packet to the pod's end of its veth as if it
//! had arrived there: the host veth's transmit path is skipped, and with it the
//! backlog queue the packet would wait in and the `to_pod` program on that
//! veth's TC egress. So a packet goes this way only from a program that has
//! done `to_pod`'s work itself (`try_into_pod` in `main`, the one place both
//! share), and only when nothing else must see it on the host veth (the host's
//! stack in `NODE_F_HOST_STACK`, a pod's hairpinned packet: those go by the
//! veth as before).
//!
//! The frame arrives as it is, so it is addressed here as the neighbour
//! subsystem would address it on the veth: from the host's end to the pod's,
//! both MACs registered by `weir-cni` in the endpoints map (an endpoint
//! without them goes by the veth). The helper scrubs the packet as crossing
//! namespaces does (Linux 6.15 and later: `PACKET_HOST`, no route, no
//! conntrack), but keeps its mark, which a veth clears: cleared here.

use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::{bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use weir_common::{Dir, Reason};

use crate::{
    endpoints,
    metrics::{self, Action},
    packet::Family,
};

/// Hands the packet, judged and translated for the local pod at `daddr`,
/// into that pod's namespace; through its veth when its MACs are not known
/// (then its `to_pod` runs again, and finds the flow known).
#[inline(always)]
pub fn deliver<F: Family>(ctx: &TcContext, daddr: &F::Addr) -> Result<Action, Reason> {
    let Some(ep) = endpoints::get(&endpoints::key::<F>(daddr)) else {
        // Unregistered since the caller looked: the host's routing decides.
        return Ok(Action::forward(TC_ACT_OK));
    };
    let ifindex = ep.ifindex;
    if !endpoints::peer_ready(ep) {
        return Ok(by_veth(ifindex));
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&ep.mac);
    macs[6..].copy_from_slice(&ep.host_mac);
    ctx.store(0, &macs, 0).map_err(|_| Reason::RewriteFailed)?;
    // SAFETY: the context's skb pointer is valid for this run; TC programs
    // may write the mark.
    unsafe { (*ctx.skb.skb).mark = 0 };
    // SAFETY: no preconditions; the verdict says where the packet goes.
    let tc = unsafe { bpf_redirect_peer(ifindex, 0) } as i32;
    metrics::note(ctx.len(), Dir::ToPod, Reason::Peer);
    Ok(Action::forward(tc))
}

/// To the pod's host veth, whose `to_pod` judges it (today's path).
#[inline(always)]
pub fn by_veth(ifindex: u32) -> Action {
    // SAFETY: no preconditions; the verdict says where the packet goes.
    Action::forward(unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) } as i32)
}
