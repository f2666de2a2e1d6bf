//! The load balancer: Service frontends and their backend slots, backends,
//! reverse NAT, Maglev tables, session affinity, the socket hooks' reverse
//! map, and the per-CPU scratch a new flow is built in.

use crate::conntrack::{CtKey, CtValue};

/// Key of [`crate::maps::SERVICES`], in the layout Cilium's LB maps proved: slot 0 is the
/// service entry itself (its value carries the backend count and flags), slots
/// 1..=count hold the backend ids. One lookup finds the service; a second, with the
/// chosen slot, finds the backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Frontend address (ClusterIP, node address for NodePort, external/LB IP).
    pub addr: [u8; 16], /* BE */
    pub port: u16, /* BE */
    /// 0 = the service entry; 1..=count = backend slots.
    pub slot: u16,
    pub proto: u8,
    pub family: u8,
    /// [`SCOPE_EXTERNAL`] or [`SCOPE_INTERNAL`]: for services whose traffic policy
    /// differs by client, the same frontend has two entries with different backends.
    pub scope: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 24);

/// Scopes of [`ServiceKey::scope`].
pub const SCOPE_EXTERNAL: u8 = 0;
pub const SCOPE_INTERNAL: u8 = 1;

/// Value of [`crate::maps::SERVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Slot 0: unused. Slots >= 1: the backend id.
    pub backend_id: u32,
    /// Identifies the frontend for reverse NAT and affinity ([`crate::maps::REVNAT`]).
    pub rev_nat_id: u32,
    /// Slot 0: number of backend slots (0 = no usable endpoint: reject).
    pub count: u16,
    pub _pad: u16,
    /// `SVC_F_*` bits.
    pub flags: u32,
    /// Session affinity timeout in seconds (with [`SVC_F_AFFINITY`]).
    pub affinity_timeout: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 20);

/// `sessionAffinity: ClientIP`.
pub const SVC_F_AFFINITY: u32 = 1 << 0;
/// The service has a scope-internal twin (traffic policies differ by client).
pub const SVC_F_TWO_SCOPES: u32 = 1 << 1;
/// NodePort frontend (matched on every node address).
pub const SVC_F_NODEPORT: u32 = 1 << 2;
/// externalTrafficPolicy: Local (no SNAT, local backends only).
pub const SVC_F_EXT_LOCAL: u32 = 1 << 3;
/// internalTrafficPolicy: Local.
pub const SVC_F_INT_LOCAL: u32 = 1 << 4;
/// Backends chosen by Maglev consistent hashing instead of at random.
pub const SVC_F_MAGLEV: u32 = 1 << 5;
/// No slot, yet the Service has endpoints elsewhere (a `Local` traffic policy):
/// new flows are dropped, as kube-proxy does, not rejected (which a Service
/// without any endpoint gets).
pub const SVC_F_DROP_EMPTY: u32 = 1 << 6;
/// `spec.loadBalancerSourceRanges`: a new flow is admitted only from a source
/// in the frontend's ranges ([`crate::maps::SOURCE_RANGES`]); others are
/// dropped, as kube-proxy's firewall chain drops them.
pub const SVC_F_SOURCE_RANGE: u32 = 1 << 7;

/// The `SVC_F_*` bits by name, for views (`weirctl`, the model's frontend view).
pub const SVC_FLAG_NAMES: [(u32, &str); 8] = [
    (SVC_F_AFFINITY, "affinity"),
    (SVC_F_TWO_SCOPES, "two-scopes"),
    (SVC_F_NODEPORT, "nodeport"),
    (SVC_F_EXT_LOCAL, "ext-local"),
    (SVC_F_INT_LOCAL, "int-local"),
    (SVC_F_MAGLEV, "maglev"),
    (SVC_F_DROP_EMPTY, "drop-empty"),
    (SVC_F_SOURCE_RANGE, "source-range"),
];

/// Data of a [`crate::maps::SOURCE_RANGES`] key, an LPM trie: the prefix
/// covers the frontend's reverse-NAT id and the family (all of both:
/// [`SOURCE_RANGE_PREFIX_BITS`]), then the source range. The family keeps a
/// range readable without its frontend, and `0.0.0.0/0` apart from `::/0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeKey {
    pub rev_nat_id: u32,
    pub family: u8,
    /// IPv4 in the first 4 bytes.
    pub addr: [u8; 16], /* BE */
    /// Past every prefix: never compared.
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<SourceRangeKey>() == 24);

/// Bits of [`SourceRangeKey`] before the address.
pub const SOURCE_RANGE_PREFIX_BITS: u32 = 40;

/// Value of [`crate::maps::BACKENDS`] (key: backend id, u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: [u8; 16], /* BE */
    pub port: u16,      /* BE */
    pub proto: u8,
    pub family: u8,
    /// `BACKEND_*`.
    pub state: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<Backend>() == 24);

/// Ready: takes new connections.
pub const BACKEND_ACTIVE: u8 = 0;
/// Serving but terminating: takes new connections only when no backend is ready.
pub const BACKEND_TERMINATING: u8 = 1;

/// Value of [`crate::maps::REVNAT`] (key: rev-NAT id, u16 widened to u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNat {
    pub addr: [u8; 16], /* BE */
    pub port: u16,      /* BE */
    pub family: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<RevNat>() == 20);

/// Entries of a Maglev table: prime, as the algorithm needs; Cilium's default.
pub const MAGLEV_TABLE_SIZE: usize = 16_381;

/// Value of [`crate::maps::MAGLEV`]: backend ids, indexed by flow hash % size.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MaglevTable(pub [u32; MAGLEV_TABLE_SIZE]);
const _: () = assert!(core::mem::size_of::<MaglevTable>() == 4 * MAGLEV_TABLE_SIZE);

/// Source address of hairpinned service traffic (link-local, like Cilium's
/// `169.254.42.1`): the pod answers it through its default route, back to us.
pub const HAIRPIN_V4: [u8; 4] = [169, 254, 42, 1];
/// The IPv6 hairpin source: `100::42`, from the discard-only prefix (RFC 6666),
/// which no real peer can have and which a pod reaches through its default route.
pub const HAIRPIN_V6: [u8; 16] = [0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42];

/// Value of [`crate::maps::SCRATCH`]. Fields used as `bpf_csum_diff` buffers sit at
/// offsets that are multiples of 4, as the helper wants.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Scratch {
    /// A new flow's conntrack pair.
    pub out_key: CtKey,
    pub in_key: CtKey,
    pub out: CtValue,
    pub back: CtValue,
    /// A rejection's IP header.
    pub ip: [u8; 40],
    /// A rejection's ICMP message (after ICMPv6's pseudo-header).
    pub icmp: [u8; 96],
    /// A packet's tuple kept for a later step of the same program run.
    pub kept: KeptFlow,
}
const _: () = assert!(core::mem::size_of::<Scratch>() == 368);

/// A packet's tuple, kept in [`Scratch`] for a later step of the same program
/// run, in another BPF function's frame: XDP keeps the one a packet came with,
/// to put back a packet it translated and cannot send on itself; a pod's veth
/// the one it leaves a packet for a local pod with, which the delivery
/// straight into that pod would otherwise read from the packet again.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KeptFlow {
    /// Addresses in the maps' form.
    pub saddr: [u8; 16], /* BE */
    pub daddr: [u8; 16], /* BE */
    pub sport: u16,      /* BE */
    pub dport: u16,      /* BE */
    pub proto: u8,
    pub tcp_flags: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<KeptFlow>() == 40);
const _: () =
    assert!(core::mem::offset_of!(Scratch, ip) % 4 == 0 && core::mem::offset_of!(Scratch, icmp) % 4 == 0);

/// Key of [`crate::maps::SOCK_REV`]: a UDP socket and the backend it sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevKey {
    pub cookie: u64,
    pub addr: [u8; 16], /* BE */
    pub port: u16,      /* BE */
    pub family: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<SockRevKey>() == 32);

/// Value of [`crate::maps::SOCK_REV`]: the frontend the socket addressed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevValue {
    pub addr: [u8; 16], /* BE */
    pub port: u16,      /* BE */
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<SockRevValue>() == 24);

/// Key of [`crate::maps::AFFINITY`] (an LRU map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client: [u8; 16], /* BE */
    pub rev_nat_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 24);

/// Value of [`crate::maps::AFFINITY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` of the last use.
    pub last_used_ns: u64,
}
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);

crate::pod!(
    ServiceKey,
    ServiceValue,
    SourceRangeKey,
    Backend,
    RevNat,
    MaglevTable,
    Scratch,
    SockRevKey,
    SockRevValue,
    AffinityKey,
    AffinityValue
);
