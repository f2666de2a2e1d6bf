//! Every map: its name, once, and its size.
//!
//! Names are a contract with `weirctl` and with the pinned maps of older
//! agents: at most 15 bytes (the kernel truncates), versioned. The eBPF side's
//! `#[map(name = ...)]` needs a literal, so the table below is a macro: it
//! defines the constants user space reads and [`with_map_name!`](crate::with_map_name), which hands
//! the same literal to the eBPF crate's map declarations.

/// Defines each name's constant, and `with_map_name!(ID, then, tokens...)`,
/// which expands to `then!("name", tokens...)`. `$d` is a `$` passed in, so
/// that the generated macro can have metavariables of its own.
macro_rules! map_names {
    ($d:tt $( $(#[$doc:meta])* $id:ident = $name:tt; )*) => {
        $( $(#[$doc])* pub const $id: &str = $name; )*

        /// `with_map_name!(SERVICES, declare, tokens...)` expands to
        /// `declare!("weir_svc_v2", tokens...)`: the name as a literal, as
        /// attributes want it.
        #[macro_export]
        macro_rules! with_map_name {
            $( ($id, $d then:ident, $d ($d rest:tt)*) => { $d then! { $name, $d ($d rest)* } }; )*
        }
    };
}

map_names! { $
    /// Packets and bytes per (direction, reason), per CPU ([`crate::MetricValue`]).
    METRICS = "weir_metrics_v3";
    /// The node's pods, by address: where each one's veth is
    /// ([`crate::EndpointKey`] -> [`crate::EndpointInfo`]).
    ENDPOINTS = "weir_endp_v1";
    /// Service frontends and their backend slots ([`crate::ServiceKey`] -> [`crate::ServiceValue`]).
    SERVICES = "weir_svc_v2";
    /// Backend id -> address ([`crate::Backend`]).
    BACKENDS = "weir_backend_v2";
    /// Reverse-NAT id -> the frontend replies must appear to come from ([`crate::RevNat`]).
    REVNAT = "weir_revnat_v2";
    /// Session affinity: (client, service) -> backend ([`crate::AffinityKey`] -> [`crate::AffinityValue`]).
    AFFINITY = "weir_affin_v2";
    /// Connection tracking of translated flows ([`crate::CtKey`] -> [`crate::CtValue`]).
    /// Flows in it must survive upgrades: its layout, and so its name, changes
    /// only with a migration of the entries.
    CONNTRACK = "weir_ct_v2";
    /// Maglev lookup tables: rev-NAT id -> [`crate::MaglevTable`].
    MAGLEV = "weir_maglev_v1";
    /// Per-CPU scratch space of the datapath (one [`crate::Scratch`]): what is
    /// too big for the 512-byte BPF stack beside the hot path (a new flow's
    /// conntrack pair, a rejection's headers). Never read by user space.
    SCRATCH = "weir_scratch_v3";
    /// Per CPU, the theoretical arrival time (ns, coarse clock) of the next
    /// rejection within the rate (a GCRA token bucket): rejections answered
    /// with ICMP are limited as the kernel limits its ICMP errors.
    REJECT_BUDGET = "weir_rejbudg_v1";
    /// Each frontend's `loadBalancerSourceRanges` that has them: an LPM trie
    /// ([`crate::SourceRangeKey`] -> 1), read for a new flow to a frontend
    /// flagged [`crate::SVC_F_SOURCE_RANGE`].
    SOURCE_RANGES = "weir_srcrng_v1";
    /// The node's own addresses ([`crate::NodeAddrs`], one entry), written by the agent.
    NODE = "weir_node_v2";
    /// Each node device's own addresses, by ifindex ([`crate::DeviceAddrs`]):
    /// the masquerade source of what leaves by it.
    DEVICE_ADDRS = "weir_devaddr_v1";
    /// Every address of the node's own namespace ([`crate::EndpointKey`] -> 1):
    /// endpoints there (hostNetwork) are local whatever the address.
    NODE_IPS = "weir_nodeip_v1";
    /// Sockets of the node translated at connect or send: (socket, backend) ->
    /// frontend, so that replies and `getpeername` show the frontend (an LRU map).
    SOCK_REV = "weir_sockrev_v1";
    /// Local pods some NetworkPolicy isolates ([`crate::EndpointKey`] ->
    /// [`crate::PolicyEndpoint`]); a pod not in it is not isolated at all.
    POLICY_ENDPOINTS = "weir_polep_v1";
    /// The ipcache: address or CIDR -> identity of the peer, an LPM trie
    /// ([`crate::IpcacheKey`] -> u32).
    IPCACHE = "weir_ipcache_v1";
    /// What each isolated endpoint admits, an LPM trie over (endpoint, peer
    /// identity, direction, protocol, port prefix) ([`crate::PolicyKey`] -> u32).
    POLICY = "weir_policy_v1";
    /// Verdicts of isolated endpoints' flows, so that established flows and their
    /// replies pay one lookup ([`crate::CtKey`] -> [`crate::PolicyCtValue`], LRU).
    POLICY_CT = "weir_polct_v1";
    /// Each isolated endpoint's share of [`POLICY_CT`] for flows other than TCP
    /// (endpoint number -> [`crate::PolicyShare`]), so that one pod opening
    /// datagram flows as fast as it can cannot evict everyone else's.
    POLICY_SHARES = "weir_polshr_v1";
    /// `--routing vxlan`: other nodes' pod CIDRs -> the node to tunnel to, an
    /// LPM trie ([`crate::IpcacheKey`] -> [`crate::TunnelEndpoint`]).
    TUNNELS = "weir_tunnel_v1";
    /// Destinations pods reach with their own address: the cluster's pod
    /// CIDRs, the Nodes' addresses, `--non-masquerade-cidrs`; an LPM trie
    /// ([`crate::NomasqKey`] -> `NOMASQ_F_*`).
    NOMASQ = "weir_nomasq_v1";
    /// What the datapath reports as it happens ([`crate::Event`]s in a ring
    /// buffer): every drop, and with tracing on every new flow's decisions.
    EVENTS = "weir_events_v2";
    /// Per CPU, the theoretical arrival time (ns) of the next drop event
    /// within the rate (a GCRA token bucket, as [`REJECT_BUDGET`]): a flood
    /// of drops costs a count each, not an event each.
    EVENT_BUDGET = "weir_evbudg_v1";
    /// Kubernetes names of frontends and pods ([`crate::NameKey`] ->
    /// [`crate::Name`]): for `weirctl`, read by no program, created by the
    /// agent.
    NAMES = "weir_names_v1";
}

/// Maps of earlier layouts, no longer used by any program of this version:
/// their pins are removed once this version's datapath is loaded (the programs
/// of an older agent still attached keep them alive until they are replaced).
pub const RETIRED: [&str; 4] = [
    // Policy drops only, 48-byte records.
    "weir_events_v1",
    // Four directions; the socket hooks' counters came with v3.
    "weir_metrics_v2",
    // Without the overlay's VNI.
    "weir_node_v1",
    // Without the tuple XDP keeps.
    "weir_scratch_v2",
];

// Sizes. Hash maps of the load balancer are allocated as used; the rest are
// preallocated by the kernel.

pub const NODE_IPS_ENTRIES: u32 = 256;
/// Source ranges of every frontend together.
pub const SOURCE_RANGES_ENTRIES: u32 = 65_536;
pub const DEVICE_ADDRS_ENTRIES: u32 = 256;
pub const SOCK_REV_ENTRIES: u32 = 65_536;

pub const IPCACHE_ENTRIES: u32 = 262_144;
/// Two addresses per Node of a 5,000-node cluster, its pod CIDRs and room.
pub const NOMASQ_ENTRIES: u32 = 65_536;
pub const POLICY_ENTRIES: u32 = 1_048_576;
pub const POLICY_CT_ENTRIES: u32 = 262_144;
/// What one endpoint may hold of [`POLICY_CT`] in flows other than TCP.
pub const POLICY_SHARE: u32 = POLICY_CT_ENTRIES / 4;
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

/// Entries of [`METRICS`]: one slot per (direction, reason), room for 8
/// directions.
pub const METRICS_ENTRIES: u32 = 8 * 256;
pub const ENDPOINTS_ENTRIES: u32 = 65_536;
/// Pod CIDRs of other nodes (one or two per node).
pub const TUNNELS_ENTRIES: u32 = 16_384;
/// A name per frontend and per local pod address; allocated as used.
pub const NAMES_ENTRIES: u32 = REVNAT_ENTRIES + ENDPOINTS_ENTRIES;
