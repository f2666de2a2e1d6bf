//! Node devices' XDP program (`--nodeport-acceleration`): the load balancer's
//! external steps (`lb::from_netdev`, the same code TC runs) on the frame as the
//! driver hands it over, before a socket buffer exists.
//!
//! XDP finishes what it can alone: a packet translated for a remote backend,
//! or a remote backend's reply translated back to its client, leaves by the
//! device it came in on (`XDP_TX`) when the FIB says so and the next hop is
//! resolved. Everything else is passed on to TC as it came: untouched (no
//! frontend, a fragment, IP options, ICMP, a rejection to answer) or, once
//! translated, put back as it came ([`HANDED`], `lb::untranslate`): TC finds the conntrack
//! entries XDP made and translates it again, then sends it on (to a local
//! pod, by route, or to the host's stack for a hostNetwork endpoint). A mark
//! in the frame's metadata would spare TC that second translation, but the
//! kernel of our lab (6.18.44) refuses `bpf_xdp_adjust_meta` to XDP programs
//! ("program of this type cannot use helper", even to a two-instruction
//! program that calls nothing else), and a translated packet passed on without
//! one would be dropped by the host's stack as a martian (its source is now
//! the node's own address).

use weir_common::Reason;

/// The verdict of a packet XDP translated and cannot send on itself (see the
/// module's note): never returned to the kernel, distinct from every XDP action.
pub const HANDED: i32 = i32::MIN + 2;

/// Hands a packet XDP translated to TC (see the module's note).
#[inline(always)]
pub fn hand_to_tc() -> Result<i32, Reason> {
    Ok(HANDED)
}
