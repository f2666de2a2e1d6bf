//! The ABI between Weir's eBPF programs and user space: map names and the
//! `#[repr(C)]` key/value types, defined once and used by both sides.
//!
//! Rules (see STYLE.md): integers only, explicit `_pad`, `/* BE */` on every
//! network-order field, a size assertion per type. Any layout change bumps the
//! version suffix of the map name that carries it.
#![no_std]

pub mod maps {
    //! Map names are a contract with `weirctl` and with pinned maps of older
    //! agents: at most 15 bytes (the kernel truncates), versioned.
    pub const METRICS: &str = "weir_metrics_v2";
    pub const ENDPOINTS: &str = "weir_endp_v1";
    /// Service frontends and their backend slots ([`crate::ServiceKey`] -> [`crate::ServiceValue`]).
    pub const SERVICES: &str = "weir_svc_v2";
    /// Backend id -> address ([`crate::Backend`]).
    pub const BACKENDS: &str = "weir_backend_v2";
    /// Reverse-NAT id -> the frontend replies must appear to come from ([`crate::RevNat`]).
    pub const REVNAT: &str = "weir_revnat_v2";
    /// Session affinity: (client, service) -> backend ([`crate::AffinityKey`] -> [`crate::AffinityValue`]).
    pub const AFFINITY: &str = "weir_affin_v2";
    /// Connection tracking of translated flows ([`crate::CtKey`] -> [`crate::CtValue`]).
    /// Its name never changes across releases: flows must survive upgrades.
    pub const CONNTRACK: &str = "weir_ct_v2";
    /// Maglev lookup tables: rev-NAT id -> [`crate::MaglevTable`].
    pub const MAGLEV: &str = "weir_maglev_v1";
    /// Per-CPU scratch space of the datapath (one [`crate::Scratch`]): what is
    /// too big for the 512-byte BPF stack beside the hot path (a new flow's
    /// conntrack pair, a rejection's headers). Never read by user space.
    pub const SCRATCH: &str = "weir_scratch_v2";
    /// The node's own addresses ([`crate::NodeAddrs`], one entry), written by the agent.
    pub const NODE: &str = "weir_node_v1";
    /// Every address of the node's own namespace ([`crate::EndpointKey`] -> 1):
    /// endpoints there (hostNetwork) are local whatever the address.
    pub const NODE_IPS: &str = "weir_nodeip_v1";
    pub const NODE_IPS_ENTRIES: u32 = 256;
    /// Sockets of the node translated at connect or send: (socket, backend) ->
    /// frontend, so that replies and `getpeername` show the frontend (an LRU map).
    pub const SOCK_REV: &str = "weir_sockrev_v1";
    pub const SOCK_REV_ENTRIES: u32 = 65_536;

    /// Local pods some NetworkPolicy isolates ([`crate::EndpointKey`] ->
    /// [`crate::PolicyEndpoint`]); a pod not in it is not isolated at all.
    pub const POLICY_ENDPOINTS: &str = "weir_polep_v1";
    /// The ipcache: address or CIDR -> identity of the peer, an LPM trie
    /// ([`crate::IpcacheKey`] -> u32).
    pub const IPCACHE: &str = "weir_ipcache_v1";
    pub const IPCACHE_ENTRIES: u32 = 262_144;
    /// What each isolated endpoint admits, an LPM trie over (endpoint, peer
    /// identity, direction, protocol, port prefix) ([`crate::PolicyKey`] -> u32).
    pub const POLICY: &str = "weir_policy_v1";
    pub const POLICY_ENTRIES: u32 = 1_048_576;
    /// Verdicts of isolated endpoints' flows, so that established flows and their
    /// replies pay one lookup ([`crate::CtKey`] -> [`crate::PolicyCtValue`], LRU).
    pub const POLICY_CT: &str = "weir_polct_v1";
    pub const POLICY_CT_ENTRIES: u32 = 262_144;
    /// Each isolated endpoint's share of [`POLICY_CT`] for flows other than TCP
    /// (endpoint number -> [`crate::PolicyShare`]), so that one pod opening
    /// datagram flows as fast as it can cannot evict everyone else's.
    pub const POLICY_SHARES: &str = "weir_polshr_v1";
    /// What one endpoint may hold of [`POLICY_CT`] in flows other than TCP.
    pub const POLICY_SHARE: u32 = POLICY_CT_ENTRIES / 4;
    /// Policy drops as they happen ([`crate::DropEvent`]s in a ring buffer).
    pub const EVENTS: &str = "weir_events_v1";
    pub const EVENTS_BYTES: u32 = 256 * 1024;

    /// Sized for 100,000 Services of 10 endpoints (a frontend takes 1 + its
    /// backends' entries); allocated as used (`BPF_F_NO_PREALLOC`).
    pub const SERVICES_ENTRIES: u32 = 2_097_152;
    pub const BACKENDS_ENTRIES: u32 = 1_048_576;
    pub const REVNAT_ENTRIES: u32 = 262_144;
    pub const AFFINITY_ENTRIES: u32 = 262_144;
    pub const CONNTRACK_ENTRIES: u32 = 524_288;
    /// Frontends using Maglev (each table is 64 KiB; the map is not preallocated).
    pub const MAGLEV_ENTRIES: u32 = 4_096;

    /// Entries of [`METRICS`]: one slot per (direction, reason).
    pub const METRICS_ENTRIES: u32 = 4 * 256;
    pub const ENDPOINTS_ENTRIES: u32 = 65_536;
}

pub mod programs {
    //! Program names in the object, as user space looks them up.
    pub const FROM_POD: &str = "from_pod";
    pub const TO_POD: &str = "to_pod";
    pub const FROM_NETDEV: &str = "from_netdev";
    pub const TO_NETDEV: &str = "to_netdev";
    /// Every TC program: on pod veths and node devices.
    pub const CLASSIFIERS: [&str; 4] = [FROM_POD, TO_POD, FROM_NETDEV, TO_NETDEV];
    /// The socket hooks of the node's own processes (cgroup/connect4, ...).
    pub const SOCK_HOOKS: [&str; 8] = [
        "sock_connect4",
        "sock_connect6",
        "sock_sendmsg4",
        "sock_sendmsg6",
        "sock_recvmsg4",
        "sock_recvmsg6",
        "sock_peer4",
        "sock_peer6",
    ];
}

/// Direction of a packet relative to the pod, as seen on the host side of its veth.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// TC ingress on the host veth: the pod sent it.
    FromPod = 0,
    /// TC egress on the host veth: on its way into the pod.
    ToPod = 1,
    /// TC ingress on a node device: from outside the node.
    FromNetdev = 2,
    /// TC egress on a node device: leaving the node.
    ToNetdev = 3,
}

impl Dir {
    /// The direction a metrics index counts (see [`metrics_index`]).
    pub const fn name(index: u32) -> &'static str {
        match index >> 8 {
            0 => "from-pod",
            1 => "to-pod",
            2 => "from-netdev",
            3 => "to-netdev",
            _ => "unknown",
        }
    }
}

/// Why a packet was passed or dropped. `Forwarded` is the only pass reason;
/// every drop has its own code so that it can be counted and reported.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Forwarded = 0,
    Malformed = 1,
    /// The service has no usable endpoint: the client gets ICMP port unreachable
    /// (TCP: connection refused), never silence.
    NoBackend = 2,
    /// A slot points at a backend id that is not in the backends map (a sync race).
    BackendMissing = 3,
    CtFull = 4,
    RewriteFailed = 5,
    /// An external flow to a remote endpoint needs a node address to come from,
    /// and the node has none of the family (or no free source port).
    NoSnat = 6,
    /// A `Local` traffic policy and no endpoint on this node, though there are
    /// some elsewhere: dropped, as kube-proxy does (load balancers, told by the
    /// health check, go elsewhere).
    NoLocalBackend = 7,
    /// No NetworkPolicy admits this new flow into the destination pod.
    PolicyIngress = 8,
    /// No NetworkPolicy admits this new flow out of the source pod.
    PolicyEgress = 9,
    /// A pod sent from an address that is not its own: dropped, or it could
    /// pass for another pod in others' policies.
    SpoofedSource = 10,
    /// An ICMP error to or from an isolated pod that quotes a packet of no flow
    /// its policies admitted: it would be a way out (a covert channel) or in.
    IcmpUnrelated = 11,
    /// Not a drop: a new flow other than TCP, admitted but not recorded in the
    /// policy conntrack, as its endpoint holds its whole share of it. Counted
    /// beside the packet's own verdict, once per such flow judged.
    Untracked = 12,
}

impl Reason {
    pub const fn name(code: u8) -> &'static str {
        match code {
            0 => "forwarded",
            1 => "malformed packet",
            2 => "service without endpoints (rejected)",
            3 => "backend missing from the backends map",
            4 => "conntrack map full",
            5 => "packet rewrite failed",
            6 => "no node address or port to source-NAT from",
            7 => "Local traffic policy without a local endpoint (dropped)",
            8 => "denied by NetworkPolicy (ingress)",
            9 => "denied by NetworkPolicy (egress)",
            10 => "source address not the pod's own (spoofed)",
            11 => "ICMP error of no admitted flow (NetworkPolicy)",
            12 => "admitted, not tracked: endpoint at its policy conntrack share",
            _ => "unknown",
        }
    }
}

/// Index into the per-CPU [`maps::METRICS`] array.
pub const fn metrics_index(dir: Dir, reason: Reason) -> u32 {
    ((dir as u32) << 8) | reason as u32
}

/// Value of [`maps::METRICS`] (per CPU; user space sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricValue {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<MetricValue>() == 16);

/// Address families, as in `AF_INET`/`AF_INET6`.
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Key of [`maps::ENDPOINTS`]: a local pod address. IPv4 uses the first 4 bytes of
/// `addr` and zeroes the rest, so one map serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub addr: [u8; 16], /* BE */
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 20);

impl EndpointKey {
    pub const fn v4(addr: [u8; 4]) -> Self {
        let mut a = [0u8; 16];
        a[0] = addr[0];
        a[1] = addr[1];
        a[2] = addr[2];
        a[3] = addr[3];
        Self {
            addr: a,
            family: AF_INET,
            _pad: [0; 3],
        }
    }
    pub const fn v6(addr: [u8; 16]) -> Self {
        Self {
            addr,
            family: AF_INET6,
            _pad: [0; 3],
        }
    }
}

/// Value of [`maps::ENDPOINTS`]: where a local pod lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Host-side veth of the pod.
    pub ifindex: u32,
    /// Reserved (0): policy keeps its own per-endpoint map ([`maps::POLICY_ENDPOINTS`]),
    /// written from the cluster's Pods, not from CNI registrations.
    pub identity: u32,
    /// Reserved (0).
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 16);

/// Value of [`maps::POLICY_ENDPOINTS`]: a local pod some NetworkPolicy isolates.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyEndpoint {
    /// The endpoint's number in [`PolicyKey::endpoint`] (per node, never 0).
    pub id: u32,
    /// `POLICY_F_*`: the directions it is isolated in.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyEndpoint>() == 8);

/// Isolated for ingress: only what [`maps::POLICY`] admits comes in.
pub const POLICY_F_INGRESS: u32 = 1 << 0;
/// Isolated for egress.
pub const POLICY_F_EGRESS: u32 = 1 << 1;

/// Data of an [`maps::IPCACHE`] key: the LPM prefix covers `family` (8 bits)
/// then the address, so that IPv4 and IPv6 prefixes never meet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpcacheKey {
    pub family: u8,
    /// IPv4 in the first 4 bytes.
    pub addr: [u8; 16], /* BE */
}
const _: () = assert!(core::mem::size_of::<IpcacheKey>() == 17);

/// Bits of [`IpcacheKey`] before the address.
pub const IPCACHE_PREFIX_BITS: u32 = 8;

/// Identities that are not label sets. A rule admitting every peer is written
/// for [`IDENTITY_ANY`]; an address the ipcache does not know is
/// [`IDENTITY_WORLD`] (no selector or `ipBlock` names it).
pub const IDENTITY_ANY: u32 = 0;
pub const IDENTITY_WORLD: u32 = 2;
/// The first identity number of a class of addresses.
pub const IDENTITY_FIRST: u32 = 256;

/// Data of a [`maps::POLICY`] key. The fields that are always matched whole come
/// first; a rule for every protocol stops its prefix after `egress`
/// ([`POLICY_PREFIX_ANY_PROTO`]), one for every port of a protocol after `proto`,
/// and a port range is a few prefixes of `port` (which is why it is big-endian).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub endpoint: u32,
    pub identity: u32,
    /// 1: the endpoint sends (egress); 0: it receives.
    pub egress: u8,
    pub proto: u8,
    pub port: u16, /* BE */
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 12);

pub const POLICY_PREFIX_ANY_PROTO: u32 = 72;
pub const POLICY_PREFIX_ANY_PORT: u32 = 80;
pub const POLICY_PREFIX_FULL: u32 = 96;

/// Value of [`maps::POLICY_CT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyCtValue {
    /// `bpf_ktime_get_ns()` after which the entry is dead.
    pub expires_ns: u64,
    /// `PCT_F_*`.
    pub flags: u8,
    pub _pad: [u8; 3],
    /// The endpoint whose judgement created the entry, charged for it in
    /// [`maps::POLICY_SHARES`] (0: none; entries of agents before it).
    pub owner: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyCtValue>() == 16);

/// Value of [`maps::POLICY_SHARES`]: how many entries other than TCP an
/// endpoint holds in [`maps::POLICY_CT`], and how many it may. The datapath
/// counts up as it creates entries; the agent recounts from the map itself at
/// every GC pass (entries expire and are evicted without telling anyone).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyShare {
    pub entries: u32,
    /// 0: no limit.
    pub limit: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyShare>() == 8);

/// The source pod's egress policy admitted the flow (or it is not isolated).
pub const PCT_F_EGRESS: u8 = 1 << 0;
/// The destination pod's ingress policy admitted it.
pub const PCT_F_INGRESS: u8 = 1 << 1;
/// A FIN or RST was seen.
pub const PCT_F_CLOSING: u8 = 1 << 2;

/// An entry of [`maps::EVENTS`]: a packet dropped by policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    pub saddr: [u8; 16], /* BE */
    pub daddr: [u8; 16], /* BE */
    pub sport: u16,      /* BE */
    pub dport: u16,      /* BE */
    pub proto: u8,
    pub family: u8,
    /// A [`Reason`] code.
    pub reason: u8,
    pub _pad: u8,
    /// The isolated endpoint ([`PolicyEndpoint::id`]) and the peer's identity.
    pub endpoint: u32,
    pub identity: u32,
}
const _: () = assert!(core::mem::size_of::<DropEvent>() == 48);

/// IP protocol numbers used in service keys.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Key of [`maps::SERVICES`], in the layout Cilium's LB maps proved: slot 0 is the
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

/// Value of [`maps::SERVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Slot 0: unused. Slots >= 1: the backend id.
    pub backend_id: u32,
    /// Identifies the frontend for reverse NAT and affinity ([`maps::REVNAT`]).
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

/// The `SVC_F_*` bits by name, for views (`weirctl`, the model's frontend view).
pub const SVC_FLAG_NAMES: [(u32, &str); 7] = [
    (SVC_F_AFFINITY, "affinity"),
    (SVC_F_TWO_SCOPES, "two-scopes"),
    (SVC_F_NODEPORT, "nodeport"),
    (SVC_F_EXT_LOCAL, "ext-local"),
    (SVC_F_INT_LOCAL, "int-local"),
    (SVC_F_MAGLEV, "maglev"),
    (SVC_F_DROP_EMPTY, "drop-empty"),
];

/// Value of [`maps::BACKENDS`] (key: backend id, u32).
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

/// Value of [`maps::REVNAT`] (key: rev-NAT id, u16 widened to u32).
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

/// Value of [`maps::MAGLEV`]: backend ids, indexed by flow hash % size.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MaglevTable(pub [u32; MAGLEV_TABLE_SIZE]);
const _: () = assert!(core::mem::size_of::<MaglevTable>() == 4 * MAGLEV_TABLE_SIZE);

/// Value of [`maps::SCRATCH`]. Fields used as `bpf_csum_diff` buffers sit at
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
}
const _: () = assert!(core::mem::size_of::<Scratch>() == 328);
const _: () =
    assert!(core::mem::offset_of!(Scratch, ip) % 4 == 0 && core::mem::offset_of!(Scratch, icmp) % 4 == 0);

/// Value of [`maps::NODE`]: the addresses external flows to remote endpoints are
/// source-NATed to, one per family (all zero: none), the node's network
/// namespace (its cookie), the only one the socket hooks act in, and how pod
/// traffic is delivered (`NODE_F_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeAddrs {
    pub v4: [u8; 16], /* BE, IPv4 in the first 4 bytes */
    pub v6: [u8; 16], /* BE */
    pub netns_cookie: u64,
    /// The node's `net.ipv4.ip_local_port_range` (its own connections' source
    /// ports), which source NAT keeps out of; `[0, 0]`: Linux's default.
    pub ephemeral: [u16; 2],
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<NodeAddrs>() == 48);

/// [`NodeAddrs::flags`]: deliver pods' packets to pods of the node through
/// the host's stack (routing, netfilter) instead of straight to their veth,
/// and leave the reverse translation of local backends' replies to the
/// client's veth. Netfilter then sees both directions of every flow, so the
/// flows it translates itself (kube-proxy's rules still in place, hostPorts
/// of the chained `portmap`) get their replies translated back. Cilium calls
/// this legacy host routing.
pub const NODE_F_HOST_STACK: u32 = 1;

/// Key of [`maps::SOCK_REV`]: a UDP socket and the backend it sent to.
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

/// Value of [`maps::SOCK_REV`]: the frontend the socket addressed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevValue {
    pub addr: [u8; 16], /* BE */
    pub port: u16,      /* BE */
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<SockRevValue>() == 24);

/// Key of [`maps::AFFINITY`] (an LRU map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client: [u8; 16], /* BE */
    pub rev_nat_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 24);

/// Value of [`maps::AFFINITY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` of the last use.
    pub last_used_ns: u64,
}
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);

/// Direction of a conntrack entry's tuple.
pub const CT_OUT: u8 = 0;
/// The reply direction (backend -> client, as the backend sends it).
pub const CT_IN: u8 = 1;

/// Key of [`maps::CONNTRACK`]: a flow's tuple as it appears on the wire at the
/// point of lookup (before translation for [`CT_OUT`], as sent by the backend for
/// [`CT_IN`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: [u8; 16], /* BE */
    pub daddr: [u8; 16], /* BE */
    pub sport: u16,      /* BE */
    pub dport: u16,      /* BE */
    pub proto: u8,
    pub family: u8,
    /// [`CT_OUT`] or [`CT_IN`].
    pub dir: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 40);

impl CtKey {
    /// The `CT_OUT` key of the flow a `CT_IN` entry (`self`, `value`) answers: the
    /// client (or, hairpinned, the client behind the hairpin address) talking to
    /// the frontend. A pair lives as long as its `CT_OUT` entry: the datapath
    /// refreshes only that one, and the agent's GC judges `CT_IN` entries by it.
    pub fn out_partner(&self, value: &CtValue) -> CtKey {
        let hairpin = value.flags & CT_F_HAIRPIN != 0;
        let snat = value.flags & CT_F_SNAT != 0;
        CtKey {
            saddr: if hairpin || snat {
                value.nat2_addr
            } else {
                self.daddr
            },
            daddr: value.nat_addr,
            sport: if snat { value.nat2_port } else { self.dport },
            dport: value.nat_port,
            proto: self.proto,
            family: self.family,
            dir: CT_OUT,
            _pad: 0,
        }
    }
}

/// Value of [`maps::CONNTRACK`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// OUT: the backend (new destination). IN: the frontend (new source).
    pub nat_addr: [u8; 16], /* BE */
    /// Hairpin or source NAT only: OUT: the new source ([`HAIRPIN_V4`],
    /// [`HAIRPIN_V6`], the node's address); IN: the client (new destination).
    pub nat2_addr: [u8; 16], /* BE */
    /// OUT: the backend port. IN: the frontend port.
    pub nat_port: u16, /* BE */
    /// Source NAT only: OUT: the new source port; IN: the client's port.
    pub nat2_port: u16, /* BE */
    /// `CT_F_*`.
    pub flags: u8,
    pub _pad: [u8; 3],
    pub rev_nat_id: u32,
    pub backend_id: u32,
    /// `bpf_ktime_get_ns()` after which the entry is dead (the agent's GC removes it).
    pub expires_ns: u64,
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 56);

/// The client is its own backend: the source is rewritten to [`HAIRPIN_V4`] so the
/// reply leaves the pod instead of being delivered locally.
pub const CT_F_HAIRPIN: u8 = 1 << 0;
/// A FIN or RST was seen: the entry gets the short closing lifetime.
pub const CT_F_CLOSING: u8 = 1 << 1;
/// The entry is for a UDP (or other connectionless) flow.
pub const CT_F_DATAGRAM: u8 = 1 << 2;
/// A flow from outside the node (through a node device): replies leave the node
/// by a route lookup of their own, since their source is now a node address the
/// host's input path would refuse as martian.
pub const CT_F_EXTERNAL: u8 = 1 << 3;
/// The client's address and port were replaced by the node's (`nat2_*`), so
/// that a remote endpoint's replies come back through this node.
pub const CT_F_SNAT: u8 = 1 << 4;

/// A TCP reset was seen: the flow is over for good, and its source-NAT port free
/// at once (a FIN-closed one waits for its entry to expire: half-closed
/// connections still talk).
pub const CT_F_RESET: u8 = 1 << 5;

/// Source ports of source-NATed external flows: 1024-65535 outside the node's
/// ephemeral range ([`NodeAddrs::ephemeral`]), so that they never meet the
/// node's own outgoing connections.
pub const SNAT_PORT_FIRST: u16 = 1_024;
/// Linux's default `ip_local_port_range`.
pub const DEFAULT_EPHEMERAL: [u16; 2] = [32_768, 60_999];

/// Source address of hairpinned service traffic (link-local, like Cilium's
/// `169.254.42.1`): the pod answers it through its default route, back to us.
pub const HAIRPIN_V4: [u8; 4] = [169, 254, 42, 1];
/// The IPv6 hairpin source: `100::42`, from the discard-only prefix (RFC 6666),
/// which no real peer can have and which a pod reaches through its default route.
pub const HAIRPIN_V6: [u8; 16] = [0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42];

/// Conntrack lifetimes, in seconds (as Cilium's defaults: long-lived established
/// TCP, short after a close or for an unanswered SYN).
pub const CT_LIFETIME_TCP_SYN: u64 = 60;
pub const CT_LIFETIME_TCP: u64 = 21_600;
pub const CT_LIFETIME_TCP_CLOSING: u64 = 10;
pub const CT_LIFETIME_DATAGRAM: u64 = 60;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C) structs of integers with explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for CtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MaglevTable {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Scratch {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NodeAddrs {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockRevKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockRevValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RevNat {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AffinityValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MetricValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyEndpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for IpcacheKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyCtValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyShare {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DropEvent {}
}
