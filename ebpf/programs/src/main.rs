//! Weir's eBPF programs: TC programs on the host side of each pod's veth
//! (`from_pod`, `to_pod`: load balancing, NetworkPolicy, delivery) and on the
//! node's devices (`from_netdev`, `to_netdev`: NodePorts, externalIPs and
//! load-balancer IPs from outside; `from_netdev_xdp` in front of them with
//! `--nodeport-acceleration`, [`xdp`]), and the cgroup socket hooks of the node's
//! own processes ([`sock`]), and on the overlay's VXLAN device (`from_overlay`,
//! `to_overlay`: [`overlay`]). Areas: `lb` (and `lb::frontend`, the steps every
//! hook takes for a new flow), `policy`, `endpoints`, `route`, `peer`
//! (delivery straight into a local pod), `metrics`, `packet` (the one place
//! that reads headers), `frame` (the packet as TC and XDP both offer it).
//!
//! TC entry points are thin: `try_*` computes a verdict or a drop reason, and the
//! entry point counts it in the metrics map before returning it to TC; a drop
//! is reported in the event stream as the hook returns ([`events::after`]).
#![no_std]
#![no_main]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "a map key passed by value is copied onto the 512-byte BPF stack; keys built in the per-CPU scratch value must be passed where they are"
)]

/// Declares a map under the name `weir_common::maps` gives the static's
/// identifier: `#[map]` wants the name as a literal, which
/// `weir_common::with_map_name!` hands over, so every name is written once.
macro_rules! bpf_map {
    ($(#[$m:meta])* $vis:vis static $id:ident: $ty:ty = $init:expr;) => {
        weir_common::with_map_name!($id, declare_bpf_map, $(#[$m])* $vis static $id: $ty = $init;);
    };
}

macro_rules! declare_bpf_map {
    ($name:tt, $(#[$m:meta])* $vis:vis static $id:ident: $ty:ty = $init:expr;) => {
        #[aya_ebpf::macros::map(name = $name)]
        $(#[$m])*
        $vis static $id: $ty = $init;
    };
}

mod clock;
mod endpoints;
mod events;
mod frame;
mod lb;
mod metrics;
mod overlay;
mod packet;
mod peer;
mod policy;
mod rate;
mod route;
mod sock;
mod xdp;

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK, xdp_action::XDP_PASS, xdp_md},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use weir_common::{Dir, MARK_ROUTED, NODE_F_HOST_STACK, Reason};

use crate::{
    lb::Lb,
    metrics::Action,
    packet::{Family, Seen, V4, V6},
    policy::{Known, Origin, Side},
};

/// Hands the packet to `$per_family`'s IPv4 or IPv6 instance; anything else
/// passes, counted under `$dir`. An instance's [`PEER`] hands the packet on to
/// [`into_peer`] (only `from_pod`'s instance returns it); its [`RELATED`] to
/// [`quoted_to_netdev`] (a node device's egress) or, with a policy `Side`, to
/// [`icmp_error`].
macro_rules! by_family {
    ($ctx:ident, $dir:expr, $per_family:ident) => {
        match packet::ethertype(&$ctx) {
            Ok(V4::ETH_P) => match $per_family::<V4>($ctx.skb.skb) {
                RELATED => quoted_to_netdev::<V4>($ctx.skb.skb),
                PEER => into_peer::<V4>($ctx.skb.skb, Came::Pod),
                tc => tc,
            },
            Ok(V6::ETH_P) => match $per_family::<V6>($ctx.skb.skb) {
                RELATED => quoted_to_netdev::<V6>($ctx.skb.skb),
                PEER => into_peer::<V6>($ctx.skb.skb, Came::Pod),
                tc => tc,
            },
            other => metrics::verdict(&$ctx, $dir, other.map(|_| Action::forward(TC_ACT_OK))),
        }
    };
    ($ctx:ident, $dir:expr, $per_family:ident, $side:expr) => {
        match packet::ethertype(&$ctx) {
            Ok(V4::ETH_P) => match $per_family::<V4>($ctx.skb.skb) {
                RELATED => icmp_error::<V4>($ctx.skb.skb, $dir, $side),
                PEER => into_peer::<V4>($ctx.skb.skb, Came::Pod),
                tc => tc,
            },
            Ok(V6::ETH_P) => match $per_family::<V6>($ctx.skb.skb) {
                RELATED => icmp_error::<V6>($ctx.skb.skb, $dir, $side),
                PEER => into_peer::<V6>($ctx.skb.skb, Came::Pod),
                tc => tc,
            },
            other => metrics::verdict(&$ctx, $dir, other.map(|_| Action::forward(TC_ACT_OK))),
        }
    };
}

/// What a per-family instance returns for an ICMP error: not a TC verdict
/// (those are small), but "judge and translate it in [`icmp_error`]" (on a
/// node device, translate it in [`quoted_error`] or [`quoted_to_netdev`]; on
/// the overlay's, in [`quoted_to_overlay`]), which has the stack room that
/// takes (the instance has none left).
const RELATED: i32 = i32::MIN;

/// What a per-family instance returns for a packet to a local pod that may go
/// straight into the pod's namespace (counted as the instance's own verdict):
/// "deliver it in [`into_peer`]", which does the pod's `to_pod` work first,
/// in a frame of its own (the instance has no stack room left for it).
pub(crate) const PEER: i32 = i32::MIN + 1;

/// What XDP's load balancer returns for a packet it translated and cannot
/// send on itself: "put it back as it came and pass it to TC" ([`xdp::handed`]).
pub(crate) const HANDED: i32 = i32::MIN + 2;

// The sentinels are distinct from each other (and, being negative, from
// every TC and XDP verdict).
const _: () = assert!(RELATED != PEER && PEER != HANDED && HANDED != RELATED);

/// TC ingress on the host veth: packets the pod sends.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    let tc = by_family!(ctx, Dir::FromPod, from_pod_family, Side::Egress);
    events::after(&ctx, tc)
}

/// TC ingress on a node device: Service traffic from outside the node. An
/// instance's [`RELATED`]: what the load balancer does not parse, which may
/// be an ICMP error about a flow the node translated ([`quoted_error`]).
#[classifier]
pub fn from_netdev(ctx: TcContext) -> i32 {
    let tc = match packet::ethertype(&ctx) {
        Ok(V4::ETH_P) => match from_netdev_family::<V4>(ctx.skb.skb) {
            PEER => into_peer::<V4>(ctx.skb.skb, Came::Netdev),
            RELATED => quoted_error::<V4>(ctx.skb.skb),
            tc => tc,
        },
        Ok(V6::ETH_P) => match from_netdev_family::<V6>(ctx.skb.skb) {
            PEER => into_peer::<V6>(ctx.skb.skb, Came::Netdev),
            RELATED => quoted_error::<V6>(ctx.skb.skb),
            tc => tc,
        },
        other => metrics::verdict(&ctx, Dir::FromNetdev, other.map(|_| Action::forward(TC_ACT_OK))),
    };
    events::after(&ctx, tc)
}

/// [`lb::quoted::from_netdev`], in a frame of its own: [`from_netdev_family`]
/// has no room left.
#[inline(never)]
fn quoted_error<F: Lb>(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let result =
        packet::parse_any::<F, _>(&ctx).and_then(|p| lb::quoted::from_netdev(&ctx, &p.flow, p.quoted));
    metrics::verdict(&ctx, Dir::FromNetdev, result)
}

/// TC egress on a node device: replies of the node's own processes (hostNetwork
/// endpoints) to external flows are made to come from the frontend; pods'
/// flows leaving the cluster are masqueraded. An instance's [`RELATED`]: what
/// neither parses, which may be an ICMP error about such a flow
/// ([`quoted_to_netdev`]).
#[classifier]
pub fn to_netdev(ctx: TcContext) -> i32 {
    // What our programs routed here themselves needs nothing more.
    // SAFETY: the context's skb pointer is valid for this run.
    if unsafe { (*ctx.skb.skb).mark } == MARK_ROUTED {
        // SAFETY: as above; TC programs may write the mark.
        unsafe { (*ctx.skb.skb).mark = 0 };
        return metrics::verdict(&ctx, Dir::ToNetdev, Ok(Action::forward(TC_ACT_OK)));
    }
    // Only what the node itself sends can be such a reply. A packet that came
    // in somewhere (forwarded from a pod, or translated and redirected here by
    // our programs) can only be a pod's, to masquerade.
    // SAFETY: the context's skb pointer is valid for this run.
    if unsafe { (*ctx.skb.skb).ingress_ifindex } != 0 {
        let tc = by_family!(ctx, Dir::ToNetdev, masquerade_family);
        return events::after(&ctx, tc);
    }
    let tc = by_family!(ctx, Dir::ToNetdev, to_netdev_family);
    events::after(&ctx, tc)
}

/// [`lb::quoted::to_netdev`], in a frame of its own.
#[inline(never)]
fn quoted_to_netdev<F: Lb>(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let result = packet::parse_any::<F, _>(&ctx).and_then(|p| lb::quoted::to_netdev(&ctx, &p.flow, p.quoted));
    metrics::verdict(&ctx, Dir::ToNetdev, result)
}

/// TC ingress on the overlay's device: packets from other nodes' pods.
#[classifier]
pub fn from_overlay(ctx: TcContext) -> i32 {
    let tc = match decapsulated(ctx.skb.skb) {
        PEER => match packet::ethertype(&ctx) {
            Ok(V4::ETH_P) => into_peer::<V4>(ctx.skb.skb, Came::Overlay),
            Ok(V6::ETH_P) => into_peer::<V6>(ctx.skb.skb, Came::Overlay),
            // Not IP: no local pod was found for it.
            _ => TC_ACT_OK,
        },
        tc => tc,
    };
    events::after(&ctx, tc)
}

/// [`from_overlay`]'s work, in a frame of its own: [`into_peer`] may follow.
#[inline(never)]
fn decapsulated(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let result = overlay::decapsulated(&ctx);
    metrics::verdict(&ctx, Dir::FromOverlay, result)
}

/// TC egress on the overlay's device: packets for other nodes' pods, given
/// their tunnel; what the node itself sends translated back first.
#[classifier]
pub fn to_overlay(ctx: TcContext) -> i32 {
    // The encapsulated packet leaves as the node's own, through the host's
    // routing and netfilter: with no mark of ours.
    // SAFETY: the context's skb pointer is valid for this run; TC programs
    // may write the mark.
    let came_in = unsafe {
        if (*ctx.skb.skb).mark == MARK_ROUTED {
            (*ctx.skb.skb).mark = 0;
        }
        (*ctx.skb.skb).ingress_ifindex
    };
    // What the node itself sends to another node's pod (a hostNetwork
    // endpoint's replies and errors about its NodePort flows) is translated
    // back first, as it would be on a node device's egress.
    if came_in == 0 {
        let tc = match packet::ethertype(&ctx) {
            Ok(V4::ETH_P) => match node_to_overlay::<V4>(ctx.skb.skb) {
                RELATED => quoted_to_overlay::<V4>(ctx.skb.skb),
                tc => tc,
            },
            Ok(V6::ETH_P) => match node_to_overlay::<V6>(ctx.skb.skb) {
                RELATED => quoted_to_overlay::<V6>(ctx.skb.skb),
                tc => tc,
            },
            _ => TC_ACT_OK,
        };
        if tc != TC_ACT_OK {
            return events::after(&ctx, tc);
        }
    }
    let tc = encapsulated(ctx.skb.skb);
    events::after(&ctx, tc)
}

/// [`to_overlay`]'s encapsulation, in a frame of its own: the entry point's
/// stays small beside [`node_to_overlay`]'s.
#[inline(never)]
fn encapsulated(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let result = overlay::encapsulate(&ctx);
    metrics::verdict(&ctx, Dir::ToOverlay, result)
}

/// [`to_overlay`]'s reverse translation of what the node sends, as on a
/// node device ([`node_reply`]); counted only when dropped (the tunnel counts
/// what it carries).
#[inline(never)]
fn node_to_overlay<F: Lb>(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let Some(result) = node_reply::<F>(&ctx, false) else {
        return RELATED;
    };
    count_drops(&ctx, Dir::ToOverlay, result)
}

/// [`lb::quoted::to_netdev`] for [`node_to_overlay`], in a frame of its own.
#[inline(never)]
fn quoted_to_overlay<F: Lb>(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let result = packet::parse_any::<F, _>(&ctx)
        .and_then(|p| lb::quoted::to_netdev(&ctx, &p.flow, p.quoted))
        .map(|_| ());
    count_drops(&ctx, Dir::ToOverlay, result)
}

/// `TC_ACT_OK` for a packet that goes on, uncounted; a drop is counted.
#[inline(always)]
fn count_drops(ctx: &TcContext, dir: Dir, result: Result<(), Reason>) -> i32 {
    match result {
        Ok(()) => TC_ACT_OK,
        Err(reason) => metrics::verdict(ctx, dir, Err(reason)),
    }
}

/// TC egress on the host veth: packets on their way into the pod.
#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    let tc = by_family!(ctx, Dir::ToPod, to_pod_family, Side::Ingress);
    events::after(&ctx, tc)
}

// One BPF function per family, each with a stack frame of its own (see
// `packet`). They return the TC verdict, a plain integer: what crosses a BPF call
// must be fully initialised scalars.
#[inline(never)]
fn from_pod_family<F: Lb>(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    counted(&ctx, Dir::FromPod, try_from_pod::<F>(&ctx))
}

/// [`metrics::verdict`], but for [`RELATED`], which is counted once judged.
#[inline(always)]
fn counted(ctx: &TcContext, dir: Dir, result: Result<Action, Reason>) -> i32 {
    match result {
        Ok(Action { tc: RELATED, .. }) => RELATED,
        result => metrics::verdict(ctx, dir, result),
    }
}

/// An ICMP error a pod sends or receives (`side`), on its veth. If the pod
/// is isolated, it passes only if it quotes a packet of a flow admitted
/// before; a received one is judged only when it comes from elsewhere (the
/// node's errors are admitted as all it sends; one from the pod's own veth is
/// the load balancer's rejection of the pod's own packet). Then, if it is
/// about a flow the load balancer translated, it is made to name the
/// frontend ([`lb::quoted::at_pod`]).
#[inline(never)]
fn icmp_error<F: Lb>(skb: *mut __sk_buff, dir: Dir, side: Side) -> i32 {
    let ctx = TcContext::new(skb);
    let result = packet::parse_any::<F, _>(&ctx).and_then(|p| {
        if let Some(ep) = policy::endpoint(&p.flow, side)
            && (side == Side::Egress || veth_origin(&ctx) == Origin::Elsewhere)
        {
            policy::related(&ctx, p.quoted, &p.flow, &ep, side)?;
        }
        lb::quoted::at_pod::<F>(&ctx, &p.flow, p.quoted, side)
    });
    metrics::verdict(&ctx, dir, result)
}

/// Where a packet leaving a host veth for its pod (TC egress) comes from:
/// sent by the node's own stack, it came in on no interface; hairpinned by
/// the pod itself, on the veth it now leaves by.
#[inline(always)]
fn veth_origin(ctx: &TcContext) -> Origin {
    // SAFETY: the context's skb pointer is valid for this run.
    let (came_in, leaves) = unsafe { ((*ctx.skb.skb).ingress_ifindex, (*ctx.skb.skb).ifindex) };
    match came_in {
        0 => Origin::Node,
        i if i == leaves => Origin::Pod,
        _ => Origin::Elsewhere,
    }
}

#[inline(never)]
fn from_netdev_family<F: Lb>(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let result = match packet::parse::<F, _>(&ctx) {
        Ok(Seen::Flow(flow)) if overlay_packet(&flow) => Ok(Action::forward(TC_ACT_OK)),
        Ok(Seen::Flow(flow)) if let Some(ep) = to_local_pod(&flow) => {
            // A pod's packet from another node, to a pod of this one: nothing
            // the load balancer translates here goes to a pod's own address
            // (external flows come to a frontend, their replies to the node's),
            // so it goes straight into the pod ([`into_peer`] judges it as the
            // pod's veth would), or to its veth, whose program judges it,
            // skipping this node's routing and netfilter either way.
            if endpoints::peer_ready(ep) && !flow.fragment {
                // [`into_peer`] takes the flow from here (`Came::Netdev`).
                lb::scratch().map(|s| {
                    packet::keep(&flow, &mut s.kept);
                    Action::forward(PEER)
                })
            } else {
                Ok(peer::by_veth(ep.ifindex))
            }
        }
        Ok(Seen::Flow(mut flow)) => lb::from_netdev(&ctx, &mut flow),
        // Counted where it goes.
        Ok(Seen::Error) => return RELATED,
        // The way the datagram's first fragment went (to a local pod, by its
        // veth: see above).
        Ok(Seen::Fragment(flow)) => {
            Ok(to_local_pod(&flow).map_or(Action::forward(TC_ACT_OK), |ep| peer::by_veth(ep.ifindex)))
        }
        Ok(Seen::Other) => Ok(Action::forward(TC_ACT_OK)),
        Err(reason) => Err(reason),
    };
    metrics::verdict(&ctx, Dir::FromNetdev, result)
}

/// XDP on a node device (`--nodeport-acceleration`): the external steps of
/// `from_netdev` before TC ([`xdp`]). What it leaves alone is passed on to
/// TC, counted under `xdp` as `to-tc`.
#[xdp]
pub fn from_netdev_xdp(ctx: XdpContext) -> u32 {
    let verdict = match packet::ethertype(&ctx) {
        Ok(V4::ETH_P) => xdp::handed::<V4>(ctx.ctx, from_netdev_xdp_family::<V4>(ctx.ctx)),
        Ok(V6::ETH_P) => xdp::handed::<V6>(ctx.ctx, from_netdev_xdp_family::<V6>(ctx.ctx)),
        _ => metrics::verdict(&ctx, Dir::Xdp, Ok(Action::to_tc(XDP_PASS as i32))),
    };
    events::after(&ctx, verdict) as u32
}

#[inline(never)]
fn from_netdev_xdp_family<F: Lb>(md: *mut xdp_md) -> i32 {
    let ctx = XdpContext::new(md);
    let to_tc = Ok(Action::to_tc(XDP_PASS as i32));
    let result = match packet::parse::<F, _>(&ctx) {
        // TC's own cases: the overlay's packets, pods' packets for local pods.
        Ok(Seen::Flow(flow)) if overlay_packet(&flow) || to_local_pod(&flow).is_some() => to_tc,
        // Passed on untranslated, or put back as it came if translated
        // ([`xdp::handed`]; counted as forwarded).
        Ok(Seen::Flow(mut flow)) => match lb::from_netdev(&ctx, &mut flow) {
            Ok(Action { tc, .. }) if tc == XDP_PASS as i32 => to_tc,
            result => result,
        },
        // A fragment, IP options, ICMP, a malformed packet: TC judges them.
        Ok(Seen::Error | Seen::Fragment(_) | Seen::Other) | Err(_) => to_tc,
    };
    metrics::verdict(&ctx, Dir::Xdp, result)
}

/// The overlay's own VXLAN packet (`--routing vxlan`), between node addresses.
#[inline(always)]
fn overlay_packet<F: Lb>(flow: &packet::Flow<F>) -> bool {
    flow.proto == weir_common::IPPROTO_UDP
        && lb::maps::NODE
            .get(0)
            .is_some_and(|n| n.tunnel_port != 0 && n.tunnel_port == flow.dport)
}

/// The local pod `flow` goes to, unless pods' traffic goes through the host's
/// stack (`NODE_F_HOST_STACK`, where netfilter must see it).
#[inline(always)]
fn to_local_pod<F: Lb>(flow: &packet::Flow<F>) -> Option<&'static weir_common::EndpointInfo> {
    let host_stack = lb::maps::NODE
        .get(0)
        .is_none_or(|n| n.flags & NODE_F_HOST_STACK != 0);
    if host_stack {
        return None;
    }
    endpoints::get(&endpoints::key::<F>(&flow.daddr))
}

#[inline(never)]
fn to_pod_family<F: Lb>(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    counted(&ctx, Dir::ToPod, try_into_pod::<F>(&ctx, Via::Veth))
}

/// A packet for a local pod, found so by the program on another pod's veth or
/// on a node device (TC ingress both): judged and translated as the pod's
/// veth's `to_pod` would (the same [`try_into_pod`], without parsing again
/// what the program that found it parsed: [`Came`]), then handed
/// straight into the pod's namespace ([`peer`]), which skips that veth and
/// `to_pod`. Counted under `to-pod`, as there.
#[inline(never)]
fn into_peer<F: Lb>(skb: *mut __sk_buff, came: Came) -> i32 {
    let ctx = TcContext::new(skb);
    match try_into_pod::<F>(&ctx, Via::Peer(came)) {
        // Left to the pod's veth, whose `to_pod` judges and counts it.
        Ok(Action { tc: RELATED, .. }) => match packet::parse_any::<F, _>(&ctx) {
            Ok(p) => endpoints::veth(&endpoints::key::<F>(&p.flow.daddr))
                .map_or(TC_ACT_OK, |v| peer::by_veth(v).tc),
            Err(reason) => metrics::verdict(&ctx, Dir::ToPod, Err(reason)),
        },
        result => metrics::verdict(&ctx, Dir::ToPod, result),
    }
}

#[inline(never)]
fn to_netdev_family<F: Lb>(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let Some(result) = node_reply::<F>(&ctx, true) else {
        return RELATED;
    };
    metrics::verdict(&ctx, Dir::ToNetdev, result.map(|()| Action::forward(TC_ACT_OK)))
}

/// What the node itself sends, translated back as on the way into a pod (a
/// hostNetwork endpoint's replies come from the frontend); `None` for an
/// ICMP error, translated (and counted) where there is room for it.
/// `underlay`: on a node device, where the overlay's own VXLAN packets pass
/// (inside the tunnel there are none to look for).
#[inline(always)]
fn node_reply<F: Lb>(ctx: &TcContext, underlay: bool) -> Option<Result<(), Reason>> {
    Some(match packet::parse::<F, _>(ctx) {
        Ok(Seen::Flow(flow)) if underlay && overlay_packet(&flow) => Ok(()),
        Ok(Seen::Flow(mut flow)) => lb::to_pod(ctx, &mut flow),
        Ok(Seen::Error) => return None,
        Ok(Seen::Fragment(_) | Seen::Other) => Ok(()),
        Err(reason) => Err(reason),
    })
}

#[inline(never)]
fn masquerade_family<F: Lb>(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let result = match packet::parse::<F, _>(&ctx) {
        Ok(Seen::Flow(mut flow)) => lb::masq::to_netdev(&ctx, &mut flow),
        // Counted where it goes.
        Ok(Seen::Error) => return RELATED,
        Ok(Seen::Fragment(_) | Seen::Other) => Ok(Action::forward(TC_ACT_OK)),
        Err(reason) => Err(reason),
    };
    metrics::verdict(&ctx, Dir::ToNetdev, result)
}

/// How a packet reaches the local pod it is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Through the pod's host veth, on whose TC egress (`to_pod`) this runs.
    Veth,
    /// Straight into the pod's namespace ([`peer`]), from the TC ingress of
    /// another pod's veth or of a node device: `to_pod` never sees it.
    Peer(Came),
}

/// Where a packet handed straight into a pod comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Came {
    /// Another local pod's veth, whose `from_pod` has parsed the packet and
    /// kept the flow it leaves it with ([`packet::keep`]): not
    /// parsed again. Nor looked up by `lb::to_pod` (the flow taken says the
    /// load balancer has nothing to do), which reverse-translates a
    /// backend's reply for its client: a local backend's reply has been
    /// translated by this packet's `from_pod` already (the host's stack is
    /// not in the way on this path), so that lookup can only miss here. Both
    /// on every packet between two pods of a node.
    Pod,
    /// A node device, whose `from_netdev` has parsed the packet and kept the
    /// flow as it came ([`packet::keep`]): not parsed again. Remote backends'
    /// replies come this way, for `lb::to_pod` to translate.
    Netdev,
    /// The overlay, whose program reads only the tunnel's metadata: parsed
    /// here.
    Overlay,
}

/// On the way into a pod: its ingress policy judges the packet as it arrives
/// (the real client, translated to the real backend), then replies of remote
/// backends are made to come from their frontend; then `via` delivers it.
/// The one place of this work, whether the pod's veth runs it or the program
/// that hands the packet straight into the pod.
#[inline(always)]
fn try_into_pod<F: Lb>(ctx: &TcContext, via: Via) -> Result<Action, Reason> {
    let packet::Parsed {
        mut flow,
        judge,
        lb,
        quoted,
    } = match via {
        Via::Peer(Came::Pod) => packet::handed::<F>(&lb::scratch()?.kept, false),
        Via::Peer(Came::Netdev) => packet::handed::<F>(&lb::scratch()?.kept, true),
        Via::Peer(Came::Overlay) | Via::Veth => packet::parse_any::<F, _>(ctx)?,
    };
    if quoted != 0 {
        // An ICMP error: judged and translated in [`icmp_error`], which has
        // the stack room it takes. From elsewhere than the veth (the overlay
        // hands any packet over), it goes to the pod's veth for that.
        return Ok(Action::forward(RELATED));
    }
    if !judge {
        return deliver(ctx, &flow, via);
    }
    if let Some(ep) = policy::endpoint(&flow, Side::Ingress) {
        let origin = match via {
            // From another pod's veth or from a node device: neither the
            // node's own stack nor the pod's hairpin (both go by the veth).
            Via::Peer(_) => Origin::Elsewhere,
            Via::Veth => veth_origin(ctx),
        };
        let now = crate::clock::now();
        let key = &mut lb::scratch()?.in_key;
        if policy::known(key, &flow, Side::Ingress, now) == Known::New {
            policy::judge(key, &flow, &ep, Side::Ingress, origin, now)?;
        }
    }
    if lb {
        lb::to_pod(ctx, &mut flow)?;
    }
    deliver(ctx, &flow, via)
}

/// The last step of [`try_into_pod`]: on the veth, the packet goes on (TC
/// egress); from elsewhere, straight into the pod.
#[inline(always)]
fn deliver<F: Lb>(ctx: &TcContext, flow: &packet::Flow<F>, via: Via) -> Result<Action, Reason> {
    match via {
        Via::Veth => Ok(Action::forward(TC_ACT_OK)),
        Via::Peer(_) => peer::deliver::<F>(ctx, &flow.daddr),
    }
}

#[inline(always)]
fn try_from_pod<F: Lb>(ctx: &TcContext) -> Result<Action, Reason> {
    let packet::Parsed {
        mut flow,
        judge,
        lb,
        quoted,
    } = packet::parse_any::<F, _>(ctx)?;
    // A pod sends from its own address: anything else would pass for another
    // pod in everyone's policies (its veth is where that address lives). Its
    // IPv6 link-local address, which stays on the link, is the exception.
    // SAFETY: valid for this run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if !F::link_scope(&flow.saddr) && endpoints::veth(&endpoints::key::<F>(&flow.saddr)) != Some(ifindex) {
        return Err(Reason::SpoofedSource);
    }
    let host_stack = lb::maps::NODE
        .get(0)
        .is_some_and(|n| n.flags & NODE_F_HOST_STACK != 0);
    if !judge {
        // An ICMP error: judged and translated in [`icmp_error`].
        if quoted != 0 {
            return Ok(Action::forward(RELATED));
        }
        // A fragment after the first: its datagram was judged on the first,
        // and it goes the first one's way ([`onward`]). Never through the
        // host's stack when the first went around it: the host's
        // defragmentation (in place whenever anything in its namespace uses
        // netfilter's conntrack: the portmap plugin, a firewall) would hold
        // the rest for a first fragment it never sees.
        if flow.fragment {
            return onward(ctx, &flow, ifindex, host_stack);
        }
        return Ok(Action::forward(TC_ACT_OK));
    }
    // Egress policy judges the real flow: a reply as the pod sends it, before
    // the load balancer makes it come from a frontend; anything else, and
    // whatever the load balancer sends to a backend, once it has picked one.
    let policed = policy::endpoint(&flow, Side::Egress).map(|ep| (ep, crate::clock::now()));
    let mut seen = Known::New;
    if let Some((_, now)) = policed {
        seen = policy::known(&mut lb::scratch()?.in_key, &flow, Side::Egress, now);
    }
    if lb && let Some(answered) = lb::from_pod(ctx, &mut flow, host_stack)? {
        // Rejected (the pod is told, whatever its policy) or the reply of an
        // external flow (judged above).
        return Ok(answered);
    }
    if let Some((ep, now)) = policed {
        let key = &mut lb::scratch()?.in_key;
        if flow.translated {
            seen = policy::known(key, &flow, Side::Egress, now);
        }
        if seen == Known::New {
            policy::judge(key, &flow, &ep, Side::Egress, Origin::Pod, now)?;
        }
    }
    onward(ctx, &flow, ifindex, host_stack)
}

/// Where a pod's packet (from the pod's veth, `ifindex`) goes once judged
/// and translated. Every fragment of a datagram, the first and the rest, goes
/// the same way: never straight into a pod, the one path the rest cannot take.
#[inline(always)]
fn onward<F: Lb>(
    ctx: &TcContext,
    flow: &packet::Flow<F>,
    ifindex: u32,
    host_stack: bool,
) -> Result<Action, Reason> {
    // A local pod: hand the packet straight into it ([`into_peer`] does its
    // veth's `to_pod` work first), or to its veth. Either skips the host's
    // routing and its reverse-path filter, which would refuse a reply whose
    // source is now a frontend address the host has no route for. Through the
    // host's stack instead (`NODE_F_HOST_STACK`), only a hairpinned packet goes
    // straight back: it comes from the hairpin address, which that filter
    // would refuse on the veth it returns by. A hairpinned packet goes by the
    // veth in any case: its `to_pod` knows it as the pod's own.
    if let Some(ep) = endpoints::get(&endpoints::key::<F>(&flow.daddr))
        && (!host_stack || ep.ifindex == ifindex)
    {
        if ep.ifindex != ifindex && endpoints::peer_ready(ep) && !flow.fragment {
            // [`into_peer`] takes the flow as it now is from here rather than
            // parse the packet again (`Came::Pod`): every PEER return of
            // `from_pod` keeps it first.
            packet::keep(flow, &mut lb::scratch()?.kept);
            return Ok(Action::forward(PEER));
        }
        return Ok(peer::by_veth(ep.ifindex));
    }
    // Another node's pod (in the cluster's pod CIDRs, not here): to the
    // device towards it, the underlay's or the overlay's, by a route lookup
    // of our own, skipping this node's routing and netfilter as the receiving
    // node does; what the FIB does not forward goes to the host's stack.
    if !host_stack && lb::masq::inside::<F>(&flow.daddr) {
        return route::forward(ctx, flow).map(Action::forward);
    }
    Ok(Action::forward(TC_ACT_OK))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
