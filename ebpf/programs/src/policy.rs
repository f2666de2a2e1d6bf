//! NetworkPolicy enforcement on the pod veths. The rules' semantics live in
//! the agent's compiler; here are lookups, and the exemptions no rule can
//! express (below: the node, the hairpin source), written here once:
//!
//! - `weir_polep_v1`: is this local pod isolated, and in which directions? Pods
//!   not in it pay this one lookup per packet and nothing else.
//! - `weir_polct_v1`: the flow's verdicts so far (one flag per side). A packet
//!   of a flow admitted before, or a reply to one, passes on one or two lookups,
//!   whatever the policies say about the reverse direction (policy is stateful).
//!   Flows other than TCP count against their endpoint's share of it
//!   (`weir_polshr_v1`): one pod's burst of new datagram flows cannot evict
//!   everyone's. TCP needs no such bound: a connection whose entry was evicted
//!   is recognised mid-stream and judged both ways (see [`judge`]).
//! - a new flow: the peer's identity from the ipcache (LPM on its address), then
//!   the endpoint's rules for that identity and for every peer (LPM on protocol
//!   and port prefixes). Admitted: recorded in `weir_polct_v1`; denied: dropped,
//!   counted under its reason and reported in the event stream ([`events`]),
//!   as, with tracing on, are the verdicts that admit new flows.
//!
//! ICMP errors are not flows of their own: one passes an isolated pod's veth
//! only when the packet it quotes belongs to a flow admitted before
//! ([`related`]), as Cilium checks "related" entries; anything else would be a
//! channel past the pod's policies.
//!
//! Enforcement sees real endpoints: egress after the load balancer has picked a
//! backend (and before a reply is made to come from a frontend), ingress before
//! any reverse translation on the way in.
//!
//! Hard-coded here, not compiled, because they hold whatever the policies say:
//! traffic between a pod and its own node is always admitted, as Kubernetes
//! documents (into the pod what the node's own stack sends, whatever its source
//! address: kubelet probes; out of it what goes to one of the node's addresses,
//! `weir_nodeip_v1`), and a pod's hairpinned service traffic (to itself, from
//! the hairpin address, on its own veth) is its own.

use aya_ebpf::{
    maps::{HashMap, LpmTrie, LruHashMap, lpm_trie::Key},
    programs::TcContext,
};
use weir_common::{
    CT_F_HAIRPIN, CT_OUT, CtKey, Dir, EVENT_DROP, EVENT_POLICY, EndpointKey, IDENTITY_ANY, IDENTITY_WORLD,
    IPCACHE_PREFIX_BITS, IPPROTO_TCP, IpcacheKey, PCT_F_CLOSING, PCT_F_EGRESS, PCT_F_INGRESS,
    POLICY_F_EGRESS, POLICY_F_INGRESS, POLICY_PREFIX_FULL, PolicyCtValue, PolicyEndpoint, PolicyKey,
    PolicyShare, Reason, maps,
};

use crate::{
    endpoints, events,
    lb::ct::{self, Tuple},
    metrics,
    packet::{self, Family, Flow, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

bpf_map! {
    static POLICY_ENDPOINTS: HashMap<EndpointKey, PolicyEndpoint> = HashMap::with_max_entries(maps::ENDPOINTS_ENTRIES, 0);
}

bpf_map! {
    static IPCACHE: LpmTrie<IpcacheKey, u32> = LpmTrie::with_max_entries(maps::IPCACHE_ENTRIES, 0);
}

bpf_map! {
    static POLICY: LpmTrie<PolicyKey, u32> = LpmTrie::with_max_entries(maps::POLICY_ENTRIES, 0);
}

bpf_map! {
    static POLICY_CT: LruHashMap<CtKey, PolicyCtValue> = LruHashMap::with_max_entries(maps::POLICY_CT_ENTRIES, 0);
}

bpf_map! {
    static POLICY_SHARES: HashMap<u32, PolicyShare> = HashMap::with_max_entries(maps::ENDPOINTS_ENTRIES, 0);
}

const NS: u64 = 1_000_000_000;

/// Which side of a flow a check is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The local pod sends (its egress rules).
    Egress,
    /// The local pod receives (its ingress rules).
    Ingress,
}

/// The local pod on `side` of this packet, when some policy isolates it.
#[inline(always)]
pub fn endpoint<F: Family>(flow: &Flow<F>, side: Side) -> Option<PolicyEndpoint> {
    let addr = if side == Side::Egress {
        &flow.saddr
    } else {
        &flow.daddr
    };
    // SAFETY: valid for this run.
    unsafe { POLICY_ENDPOINTS.get(&endpoints::key::<F>(addr)) }.copied()
}

/// What the policy conntrack knows of a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Known {
    New,
    /// A packet of a flow already admitted on this side.
    Admitted,
    /// The reply of a flow admitted before (it passes whatever the rules say).
    Reply,
}

/// Looks the packet up in the policy conntrack. `key` is left holding the
/// reverse tuple.
#[inline(always)]
pub fn known<F: Family>(key: &mut CtKey, flow: &Flow<F>, side: Side, now: u64) -> Known {
    ct::fill_key(key, flow, Tuple::AsSent, CT_OUT);
    if let Some(v) = live(key, now)
        // SAFETY: a pointer into the map's value, valid for this run.
        && unsafe { (*v).flags } & side_flag(side) != 0
        && !reuses(v, flow)
    {
        refresh(v, flow, now);
        return Known::Admitted;
    }
    ct::fill_key(key, flow, Tuple::AsReply, CT_OUT);
    if let Some(v) = live(key, now) {
        refresh(v, flow, now);
        return Known::Reply;
    }
    // The reply of a local backend reaches its client already made to come from
    // the frontend.
    if side == Side::Ingress && via_frontend::<F>(key, now) {
        return Known::Reply;
    }
    Known::New
}

/// Whether `key`, a client's tuple to a frontend (the reverse of a reply
/// made to come from the frontend, or of what an ICMP error quotes of one),
/// is a flow the client's egress admitted: the load balancer's conntrack
/// knows it under the same key, and the policy's the flow to the backend it
/// chose (from the hairpin address when the client is its own backend).
/// `key` is left holding the latter.
#[inline(always)]
fn via_frontend<F: Family>(key: &mut CtKey, now: u64) -> bool {
    let Some(out) = ct::forward(key, now) else {
        return false;
    };
    key.daddr = out.nat_addr;
    key.dport = out.nat_port;
    if out.flags & CT_F_HAIRPIN != 0 {
        key.saddr = F::HAIRPIN;
    }
    // SAFETY: a pointer into the map's value, valid for this run.
    live(key, now).is_some_and(|v| unsafe { (*v).flags } & PCT_F_EGRESS != 0)
}

/// Where a packet comes from, as far as the exemptions care.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The pod itself (its own veth): hairpinned service traffic is its own.
    Pod,
    /// The node's own stack: admitted into any pod.
    Node,
    /// Another pod, or another host.
    Elsewhere,
}

/// Judges a new flow of `ep` ([`known`] said [`Known::New`]), isolated or not
/// on this side: looked up in the rules, recorded when admitted.
///
/// A TCP packet without SYN belongs to a connection already open (its entry
/// was evicted from the table, or it was opened before the policy came): it
/// passes if the connection could have been opened either way, judged by the
/// same rules. So an evicted entry never breaks a connection, and nothing new
/// gets through: a connection starts with a SYN, always judged as what it is,
/// and a stray segment finds no socket to talk to.
#[inline(always)]
pub fn judge<F: Family>(
    key: &mut CtKey,
    flow: &Flow<F>,
    ep: &PolicyEndpoint,
    side: Side,
    origin: Origin,
    now: u64,
) -> Result<(), Reason> {
    if isolated(ep, side)
        && origin != Origin::Node
        && let Err(identity) = admits(flow, ep, side, origin)
        && !(midstream(flow) && admits_reverse(flow, ep, side))
    {
        let reason = if side == Side::Egress {
            Reason::PolicyEgress
        } else {
            Reason::PolicyIngress
        };
        report(flow, ep, identity, side, EVENT_DROP, reason);
        // What the other side admitted dies with the flow here: it must not
        // stand as a flow whose replies pass.
        ct::fill_key(key, flow, Tuple::AsSent, CT_OUT);
        let _ = POLICY_CT.remove(&*key);
        return Err(reason);
    }
    // With tracing on, a new flow admitted by this side's rules (not by the
    // node's exemption, not a connection found mid-stream) is reported once
    // recorded: a datagram flow over its endpoint's share, judged per packet,
    // is not.
    let traced = isolated(ep, side) && origin != Origin::Node && !midstream(flow) && crate::events::tracing();
    // Recorded even where this side is not isolated: the reply must pass the
    // other direction's isolation.
    ct::fill_key(key, flow, Tuple::AsSent, CT_OUT);
    let flag = side_flag(side);
    if let Some(v) = POLICY_CT.get_ptr_mut(&*key) {
        // SAFETY: a pointer into the map's value, valid for this run; a racing
        // writer sets the same flags.
        unsafe {
            if (*v).expires_ns > now && (*v).flags & PCT_F_CLOSING == 0 {
                (*v).flags |= flag;
            } else {
                // A dead entry, or a closed connection's whose tuple a new one reuses.
                (*v).flags = flag;
            }
        }
        refresh(v, flow, now);
        if traced {
            admitted(flow, ep, side);
        }
        return Ok(());
    }
    // Datagram flows count against the endpoint's share (TCP needs no entry to
    // survive: see above). Past it, the flow is admitted all the same, but its
    // packets are judged one by one.
    if flow.proto != IPPROTO_TCP && !take_share(ep.id) {
        let dir = if side == Side::Egress {
            Dir::FromPod
        } else {
            Dir::ToPod
        };
        metrics::note(0, dir, Reason::Untracked);
        return Ok(());
    }
    let value = PolicyCtValue {
        expires_ns: now + ct::lifetime(flow, false) * NS,
        flags: flag,
        _pad: [0; 3],
        owner: ep.id,
    };
    // A full table evicts its oldest entry (LRU): never a reason to drop.
    let _ = POLICY_CT.insert(&*key, &value, 0);
    if traced {
        admitted(flow, ep, side);
    }
    Ok(())
}

/// The event of a new flow `ep`'s rules on `side` admitted (tracing).
#[inline(always)]
fn admitted<F: Family>(flow: &Flow<F>, ep: &PolicyEndpoint, side: Side) {
    let peer = if side == Side::Egress {
        &flow.daddr
    } else {
        &flow.saddr
    };
    report(
        flow,
        ep,
        identity::<F>(peer),
        side,
        EVENT_POLICY,
        Reason::Forwarded,
    );
}

#[inline(always)]
fn isolated(ep: &PolicyEndpoint, side: Side) -> bool {
    ep.flags
        & if side == Side::Egress {
            POLICY_F_EGRESS
        } else {
            POLICY_F_INGRESS
        }
        != 0
}

/// A TCP segment of a connection already open (not a SYN).
#[inline(always)]
fn midstream<F: Family>(flow: &Flow<F>) -> bool {
    flow.proto == IPPROTO_TCP && flow.tcp_flags & TCP_SYN == 0
}

/// Whether `ep`'s rules would admit the flow the other way round: the peer
/// reaching `ep` on its port (egress packets), `ep` reaching the peer on the
/// peer's port (ingress packets). Both are `flow.sport`.
#[inline(always)]
fn admits_reverse<F: Family>(flow: &Flow<F>, ep: &PolicyEndpoint, side: Side) -> bool {
    let (reverse, peer) = if side == Side::Egress {
        (Side::Ingress, &flow.daddr)
    } else {
        (Side::Egress, &flow.saddr)
    };
    if !isolated(ep, reverse) || (reverse == Side::Egress && is_node_address::<F>(peer)) {
        return true;
    }
    rule(ep, identity::<F>(peer), reverse, flow.proto, flow.sport)
}

/// Takes one entry of `ep`'s share; `false` when it holds the whole of it.
#[inline(always)]
fn take_share(ep: u32) -> bool {
    let Some(share) = POLICY_SHARES.get_ptr_mut(&ep) else {
        // Not counted (yet): the agent adds every isolated endpoint.
        return true;
    };
    // SAFETY: a pointer into the map's value, valid for this run.
    unsafe {
        if (*share).limit != 0 && (*share).entries >= (*share).limit {
            return false;
        }
        // Not atomic (the BPF target has no atomic add in Rust's core): CPUs
        // counting at once may lose a count. The share is a bound on damage,
        // not an exact quota, and the agent recounts it from the map anyway.
        (*share).entries += 1;
    }
    true
}

/// Judges an ICMP error `outer` of the endpoint `ep` (which sends it on
/// `Side::Egress`, receives it on `Side::Ingress`), whose quoted packet starts
/// at `quoted`, on a side its policy isolates (any other passes): it passes
/// when that packet's flow, either way round, was admitted and is live (a
/// client's error about a reply from a frontend: its flow to the frontend),
/// or when it goes to the node (always admitted, as any flow is).
#[inline(always)]
pub fn related<F: Family>(
    ctx: &TcContext,
    quoted: usize,
    outer: &Flow<F>,
    ep: &PolicyEndpoint,
    side: Side,
) -> Result<(), Reason> {
    let egress = side == Side::Egress;
    // A side no policy isolates admits everything, errors too.
    if !isolated(ep, side) || egress && is_node_address::<F>(&outer.daddr) {
        return Ok(());
    }
    let now = crate::clock::now();
    let key = &mut crate::lb::scratch()?.in_key;
    for reverse in [false, true] {
        packet::quoted_key::<F, _>(ctx, quoted, key, reverse)?;
        if live(key, now).is_some() {
            return Ok(());
        }
    }
    // A client's own error about a reply made to come from a frontend: the
    // quoted reply, reversed (`key` now), is the client's flow to it.
    if egress && via_frontend::<F>(key, now) {
        return Ok(());
    }
    let peer = if egress { &outer.daddr } else { &outer.saddr };
    report(
        outer,
        ep,
        identity::<F>(peer),
        side,
        EVENT_DROP,
        Reason::IcmpUnrelated,
    );
    Err(Reason::IcmpUnrelated)
}

/// Whether the endpoint's rules admit this new flow; if not, the peer's identity.
#[inline(always)]
fn admits<F: Family>(flow: &Flow<F>, ep: &PolicyEndpoint, side: Side, origin: Origin) -> Result<(), u32> {
    let egress = side == Side::Egress;
    let peer = if egress { &flow.daddr } else { &flow.saddr };
    // Hairpinned service traffic (from the hairpin address to the pod, after
    // translation): the pod reaching itself. Only from the pod's own veth: the
    // address could be forged by anyone else.
    if origin == Origin::Pod && (F::is(&flow.saddr, &F::HAIRPIN) || F::is(&flow.daddr, &F::HAIRPIN)) {
        return Ok(());
    }
    // "Traffic to and from the node where a Pod is running is always allowed"
    // (the Kubernetes documentation): from the node, see `Origin::Node`; to
    // it, here.
    if egress && is_node_address::<F>(peer) {
        return Ok(());
    }
    let identity = identity::<F>(peer);
    if rule(ep, identity, side, flow.proto, flow.dport) {
        Ok(())
    } else {
        Err(identity)
    }
}

/// Whether a rule of `ep` admits `identity` (or every peer) on `side` for this
/// protocol and port.
#[inline(always)]
fn rule(ep: &PolicyEndpoint, identity: u32, side: Side, proto: u8, port: u16) -> bool {
    let mut key = Key::new(
        POLICY_PREFIX_FULL,
        PolicyKey {
            endpoint: ep.id,
            identity,
            egress: u8::from(side == Side::Egress),
            proto,
            port,
        },
    );
    if POLICY.get(&key).is_some() {
        return true;
    }
    key.data.identity = IDENTITY_ANY;
    POLICY.get(&key).is_some()
}

/// The identity of a peer address: the ipcache's longest matching prefix.
#[inline(always)]
fn identity<F: Family>(addr: &F::Addr) -> u32 {
    let mut key = Key::new(
        IPCACHE_PREFIX_BITS + F::BITS,
        IpcacheKey {
            family: F::AF,
            addr: [0; 16],
        },
    );
    F::widen(addr, &mut key.data.addr);
    IPCACHE.get(&key).copied().unwrap_or(IDENTITY_WORLD)
}

#[inline(always)]
fn is_node_address<F: Family>(addr: &F::Addr) -> bool {
    endpoints::is_node(&endpoints::key::<F>(addr))
}

/// A policy event of `ep`'s (a drop, or with tracing on a verdict that
/// admitted a new flow) for its peer `identity`.
#[inline(always)]
fn report<F: Family>(
    flow: &Flow<F>,
    ep: &PolicyEndpoint,
    identity: u32,
    side: Side,
    kind: u8,
    reason: Reason,
) {
    let dir = if side == Side::Egress {
        Dir::FromPod
    } else {
        Dir::ToPod
    };
    let Some(mut entry) = events::of_flow(flow, kind, dir, reason, 0) else {
        // The reader is behind (or drops are over their rate): still counted.
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: the reserved entry is ours until submitted.
    unsafe {
        (*e).endpoint = ep.id;
        (*e).identity = identity;
    }
    entry.submit(0);
}

/// A SYN on a closed connection's entry: a new connection reusing the tuple,
/// judged by the rules in force now.
#[inline(always)]
fn reuses<F: Family>(v: *mut PolicyCtValue, flow: &Flow<F>) -> bool {
    // SAFETY: as in `live`.
    flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && unsafe { (*v).flags } & PCT_F_CLOSING != 0
}

#[inline(always)]
fn side_flag(side: Side) -> u8 {
    if side == Side::Egress {
        PCT_F_EGRESS
    } else {
        PCT_F_INGRESS
    }
}

#[inline(always)]
fn live(key: &CtKey, now: u64) -> Option<*mut PolicyCtValue> {
    let v = POLICY_CT.get_ptr_mut(key)?;
    // SAFETY: a pointer into the map's value, valid for this run.
    (unsafe { (*v).expires_ns } > now).then_some(v)
}

#[inline(always)]
fn refresh<F: Family>(v: *mut PolicyCtValue, flow: &Flow<F>, now: u64) {
    // SAFETY: as in `live`; racing updates of these fields are benign.
    unsafe {
        if flow.tcp_flags & (TCP_FIN | TCP_RST) != 0 && (*v).flags & PCT_F_CLOSING == 0 {
            (*v).flags |= PCT_F_CLOSING;
        }
        let expires = now + ct::lifetime(flow, (*v).flags & PCT_F_CLOSING != 0) * NS;
        // Written when it moves by a second or more, not on every packet: both
        // sides of a flow run on different CPUs, and a store per packet would
        // bounce the entry's cache line between them.
        let old = (*v).expires_ns;
        if expires > old + NS || expires + NS < old {
            (*v).expires_ns = expires;
        }
    }
}
