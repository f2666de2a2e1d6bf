//! Node devices' XDP program (`--nodeport-acceleration`): the load balancer's
//! external steps (`lb::from_netdev`, the same code TC runs) on the frame as the
//! driver hands it over, before a socket buffer exists.
//!
//! XDP finishes what it can alone: a packet translated for a remote backend,
//! or a remote backend's reply translated back to its client, leaves by the
//! device it came in on (`XDP_TX`) when the FIB says so and the next hop is
//! resolved. Everything else is passed on to TC as it came: untouched (no
//! frontend, a fragment, IP options, ICMP, a rejection to answer) or, once
//! translated, put back as it came ([`handed`]): TC finds the conntrack
//! entries XDP made and translates it again, then sends it on (to a local
//! pod, by route, or to the host's stack for a hostNetwork endpoint). A mark
//! in the frame's metadata would spare TC that second translation, but the
//! kernel of our lab (6.18.44) refuses `bpf_xdp_adjust_meta` to XDP programs
//! ("program of this type cannot use helper", even to a two-instruction
//! program that calls nothing else), and a translated packet passed on without
//! one would be dropped by the host's stack as a martian (its source is now
//! the node's own address).

use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_DROP, XDP_PASS},
        xdp_md,
    },
    programs::XdpContext,
};
use weir_common::{Dir, Reason};

use crate::{
    HANDED,
    lb::{self, Lb},
    metrics,
    packet::{self, Seen},
};

/// XDP's `verdict`: a packet its load balancer translated and cannot send on
/// itself ([`HANDED`]) is put back as it came and passed to TC. Called from
/// the entry point: `from_netdev_xdp_family`'s frame has no room left for
/// the rewrite's.
#[inline(always)]
pub fn handed<F: Lb>(md: *mut xdp_md, verdict: i32) -> i32 {
    if verdict != HANDED {
        verdict
    } else if untranslate::<F>(md) {
        XDP_PASS as i32
    } else {
        XDP_DROP as i32
    }
}

/// [`lb::untranslate`] on the packet as translated, in a frame of its own;
/// whether it was put back. `from_netdev_xdp_family` counted the packet as
/// forwarded (translated); one that cannot be put back (it was just
/// rewritten the other way: never seen) is counted as dropped too, `rewrite
/// failed`, rather than dropped uncounted.
#[inline(never)]
fn untranslate<F: Lb>(md: *mut xdp_md) -> bool {
    let ctx = XdpContext::new(md);
    let put_back = match packet::parse::<F, _>(&ctx) {
        Ok(Seen::Flow(mut flow)) => lb::untranslate(&ctx, &mut flow).is_ok(),
        _ => false,
    };
    if !put_back {
        metrics::verdict(&ctx, Dir::Xdp, Err(Reason::RewriteFailed));
    }
    put_back
}
