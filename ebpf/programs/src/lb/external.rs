//! Service traffic entering the node from outside (TC ingress of the node's
//! devices): NodePorts, externalIPs and load-balancer IPs, as kube-proxy's
//! `KUBE-NODEPORTS`/`KUBE-EXT-*` chains serve them.
//!
//! A new flow to a frontend gets a backend from the frontend's external entry
//! (with externalTrafficPolicy Local, this node's endpoints only). A local
//! backend gets the packet straight on its veth, the client's address intact;
//! its replies are translated as they leave it (`lb::reply`) and routed out
//! from there. A remote backend gets the packet from the address of the node
//! device towards it and a free port outside the node's ephemeral range
//! (externalTrafficPolicy Cluster; see `port`), so that its replies come back
//! here, where they are translated back to the client. The replies of pods' masqueraded flows (`masq`) come
//! back here too and go back to the pod. Anything else passes untouched.

use aya_ebpf::helpers::bpf_redirect_neigh;
use weir_common::{CT_F_EXTERNAL, CT_F_MASQ, CT_F_SNAT, Reason, SVC_F_EXT_LOCAL};

use super::{
    Backends, Lb, NewFlow, Reply, Snat, choose, established, frontend, maps::NODE, masq, port, reply,
    scratch, translate_new,
};
use crate::{endpoints, frame::Frame, metrics::Action, packet::Flow, route};

#[inline(always)]
pub fn from_netdev<F: Lb, C: Frame>(ctx: &C, flow: &mut Flow<F>) -> Result<Action, Reason> {
    let now = crate::clock::now();
    let s = scratch()?;
    let pass = Ok(Action::forward(C::PASS));
    if ctx.as_tc().is_none() {
        // XDP may have to put the packet back as it came ([`crate::xdp`]).
        crate::packet::keep(flow, &mut s.kept);
    }

    // 1. A packet of an external flow we translated.
    if established(ctx, flow, s, now, CT_F_EXTERNAL, CT_F_SNAT)? {
        let pod = endpoints::veth(&endpoints::key::<F>(&flow.daddr));
        return deliver(ctx, flow, pod.unwrap_or(0));
    }

    // 2. A remote backend answering a source-NATed flow: back to the client, from
    //    the frontend it dialled. A masqueraded pod flow's answer: back to the pod.
    match reply(ctx, flow, s, now, Backends::Remote)? {
        Reply::None => {}
        Reply::Orphan => return pass,
        Reply::Of(flags) if flags & CT_F_MASQ != 0 => {
            let pod = endpoints::veth(&endpoints::key::<F>(&flow.daddr));
            return deliver(ctx, flow, pod.unwrap_or(0));
        }
        Reply::Of(_) => return route::forward(ctx, flow).map(Action::forward),
    }

    // 3. A new flow: a frontend's external entry (with externalTrafficPolicy
    //    Local, this node's endpoints only), or its cluster-wide one for a
    //    client in the cluster's pod CIDRs (another node's pod).
    let inside = || masq::inside::<F>(&flow.saddr);
    let chosen = match choose(ctx, flow, s, now, inside, C::NETDEV)? {
        NewFlow::NotAFrontend => return pass,
        NewFlow::Answered(action) => return Ok(action),
        NewFlow::Chosen(chosen) => chosen,
    };
    let node = NODE.get(0).ok_or(Reason::NoSnat)?;
    // No source NAT for a pod of this node (straight to its veth), a backend in
    // the node's own namespace (hostNetwork: the host stack takes it from here,
    // its replies are translated as they leave, `to_netdev`), or any backend of
    // externalTrafficPolicy Local (all on this node; the client's address kept).
    let backend = endpoints::key_wide::<F>(&chosen.backend.addr);
    let pod = endpoints::veth(&backend).unwrap_or(0);
    let host = endpoints::is_node(&backend);
    // Through memory: LLVM would fold the tests into one on the map pointer,
    // pointer arithmetic the verifier refuses.
    // SAFETY: reading live locals.
    let (pod, host) = unsafe { (core::ptr::read_volatile(&pod), core::ptr::read_volatile(&host)) };
    if pod != 0 || host || chosen.flags & SVC_F_EXT_LOCAL != 0 {
        translate_new(ctx, flow, s, &chosen, None, CT_F_EXTERNAL, now)?;
        return deliver(ctx, flow, pod);
    }

    // A remote backend: from the address of the device it leaves by (where
    // the backend's replies come back, as masquerade does), else the node's
    // first of the family, on a free port.
    let egress = route::egress::<F>(ctx.raw(), ctx.ifindex(), &chosen.backend.addr);
    let addr = masq::device_addr::<F>(egress).unwrap_or(frontend::node_addr::<F>(node));
    if addr.iter().all(|b| *b == 0) {
        return Err(Reason::NoSnat);
    }
    let port = port::free(
        s,
        flow,
        &chosen.backend.addr,
        chosen.backend.port,
        node,
        addr,
        // Backend ids fill the place a masqueraded flow keeps its client's
        // timestamp in: an external flow's is not recorded.
        0,
        now,
    )?;
    let snat = Snat { addr, port };
    translate_new(ctx, flow, s, &chosen, Some(snat), CT_F_EXTERNAL | CT_F_SNAT, now)?;
    route::forward(ctx, flow).map(Action::forward)
}

/// A translated packet goes to its backend: a local pod (`pod`, its veth)
/// straight on its veth, anything else by route.
#[inline(always)]
pub(super) fn deliver<F: Lb, C: Frame>(ctx: &C, flow: &Flow<F>, pod: u32) -> Result<Action, Reason> {
    if pod != 0 {
        // XDP does not write into a veth: its `to-pod` program would not see
        // the packet. TC, handed it back as it came, translates it again
        // and sends it there.
        if ctx.as_tc().is_none() {
            return Ok(Action::forward(crate::HANDED));
        }
        // SAFETY: no preconditions; the verdict says where the packet goes.
        return Ok(Action::forward(
            unsafe { bpf_redirect_neigh(pod, core::ptr::null_mut(), 0, 0) } as i32,
        ));
    }
    route::forward(ctx, flow).map(Action::forward)
}
