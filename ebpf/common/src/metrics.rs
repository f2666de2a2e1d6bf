//! What the datapath counts: packets and bytes per direction and reason, in a
//! per-CPU array user space sums (`/metrics`, `weirctl metrics`).

/// Where the datapath saw what it counts: a packet relative to the pod, as seen
/// on the host side of its veth, or on a node device; or a socket call.
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
    /// A socket hook of the node's own processes: one count per call it acts
    /// on (a socket connected, or a datagram sent, to a backend instead of a
    /// frontend; a refusal; a received datagram or `getpeername` made to show
    /// the frontend), no bytes.
    Socket = 4,
    /// TC ingress on the overlay's device: decapsulated, from another node.
    FromOverlay = 5,
    /// TC egress on the overlay's device: to be encapsulated to another node.
    ToOverlay = 6,
    /// XDP on a node device (`--nodeport-acceleration`): from outside the
    /// node, before TC ingress (`from-netdev`) sees it.
    Xdp = 7,
}

impl Dir {
    pub const fn name(self) -> &'static str {
        match self {
            Dir::FromPod => "from-pod",
            Dir::ToPod => "to-pod",
            Dir::FromNetdev => "from-netdev",
            Dir::ToNetdev => "to-netdev",
            Dir::Socket => "socket",
            Dir::FromOverlay => "from-overlay",
            Dir::ToOverlay => "to-overlay",
            Dir::Xdp => "xdp",
        }
    }
}

impl TryFrom<u8> for Dir {
    type Error = u8;

    fn try_from(code: u8) -> Result<Self, u8> {
        Ok(match code {
            0 => Dir::FromPod,
            1 => Dir::ToPod,
            2 => Dir::FromNetdev,
            3 => Dir::ToNetdev,
            4 => Dir::Socket,
            5 => Dir::FromOverlay,
            6 => Dir::ToOverlay,
            7 => Dir::Xdp,
            _ => return Err(code),
        })
    }
}

/// Why a packet was passed or dropped. `Forwarded` is the only pass reason
/// (`Untracked` and `Peer` are counted beside a packet's verdict, not as it);
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
    /// To be tunnelled, but no node has the destination's pod CIDR (or the
    /// tunnel's metadata could not be set): the VXLAN device would drop it.
    NoTunnel = 13,
    /// Decapsulated with a VNI other than the cluster's (`--vxlan-vni`).
    ForeignVni = 14,
    /// Not a drop: a packet for a local pod handed straight into the pod's
    /// namespace (`bpf_redirect_peer`), judged and translated as its veth's
    /// `to-pod` program would have. Counted under `to-pod` beside the packet's
    /// own verdict (`forwarded`), which counts every packet into a pod.
    Peer = 15,
    /// Not a drop: left by XDP (`--nodeport-acceleration`) to the TC program
    /// that runs next, untouched (not a frontend's, or not what XDP handles).
    ToTc = 16,
    /// A rejection (see `NoBackend`) over the rate at which they are
    /// answered (per CPU): dropped unanswered, as the kernel drops the ICMP
    /// errors over its `icmp_msgs_per_sec`, so that a flood to a Service
    /// without endpoints costs a drop, not a reply, per packet.
    RejectLimited = 17,
    /// A new flow to a LoadBalancer IP from a source outside the Service's
    /// `loadBalancerSourceRanges`: dropped, as kube-proxy's firewall does.
    SourceRange = 18,
}

impl Reason {
    /// Every reason, in code order.
    pub const ALL: [Reason; 19] = [
        Reason::Forwarded,
        Reason::Malformed,
        Reason::NoBackend,
        Reason::BackendMissing,
        Reason::CtFull,
        Reason::RewriteFailed,
        Reason::NoSnat,
        Reason::NoLocalBackend,
        Reason::PolicyIngress,
        Reason::PolicyEgress,
        Reason::SpoofedSource,
        Reason::IcmpUnrelated,
        Reason::Untracked,
        Reason::NoTunnel,
        Reason::ForeignVni,
        Reason::Peer,
        Reason::ToTc,
        Reason::RejectLimited,
        Reason::SourceRange,
    ];

    /// What an operator reads (`weirctl`, `/metrics`).
    pub const fn describe(self) -> &'static str {
        match self {
            Reason::Forwarded => "forwarded",
            Reason::Malformed => "malformed packet",
            Reason::NoBackend => "service without endpoints (rejected)",
            Reason::BackendMissing => "backend missing from the backends map",
            Reason::CtFull => "conntrack map full",
            Reason::RewriteFailed => "packet rewrite failed",
            Reason::NoSnat => "no node address or port to source-NAT from",
            Reason::NoLocalBackend => "Local traffic policy without a local endpoint (dropped)",
            Reason::PolicyIngress => "denied by NetworkPolicy (ingress)",
            Reason::PolicyEgress => "denied by NetworkPolicy (egress)",
            Reason::SpoofedSource => "source address not the pod's own (spoofed)",
            Reason::IcmpUnrelated => "ICMP error of no admitted flow (NetworkPolicy)",
            Reason::Untracked => "admitted, not tracked: endpoint at its policy conntrack share",
            Reason::NoTunnel => "no node to tunnel to (overlay)",
            Reason::ForeignVni => "VXLAN packet of another VNI (overlay)",
            Reason::Peer => "delivered into the pod by redirect_peer (host veth skipped)",
            Reason::ToTc => "passed on to TC untouched (XDP)",
            Reason::RejectLimited => "service without endpoints, over the rejection rate (dropped)",
            Reason::SourceRange => "source outside the Service's loadBalancerSourceRanges (dropped)",
        }
    }

    /// The reason as a metric label (`/metrics`): short, stable, snake case.
    pub const fn label(self) -> &'static str {
        match self {
            Reason::Forwarded => "forwarded",
            Reason::Malformed => "malformed",
            Reason::NoBackend => "no_backend",
            Reason::BackendMissing => "backend_missing",
            Reason::CtFull => "conntrack_full",
            Reason::RewriteFailed => "rewrite_failed",
            Reason::NoSnat => "no_snat",
            Reason::NoLocalBackend => "no_local_backend",
            Reason::PolicyIngress => "policy_ingress",
            Reason::PolicyEgress => "policy_egress",
            Reason::SpoofedSource => "spoofed_source",
            Reason::IcmpUnrelated => "icmp_unrelated",
            Reason::Untracked => "untracked",
            Reason::NoTunnel => "no_tunnel",
            Reason::ForeignVni => "foreign_vni",
            Reason::Peer => "redirect_peer",
            Reason::ToTc => "to_tc",
            Reason::RejectLimited => "reject_limited",
            Reason::SourceRange => "source_range",
        }
    }

    /// Whether the packet counted under this reason was dropped (or rejected):
    /// every reason but the pass and the counted-beside ones.
    pub const fn is_drop(self) -> bool {
        !matches!(
            self,
            Reason::Forwarded | Reason::Untracked | Reason::Peer | Reason::ToTc
        )
    }

    /// [`Reason::describe`] of a code read from a map or an event.
    pub fn describe_code(code: u8) -> &'static str {
        Reason::try_from(code).map_or("unknown", Reason::describe)
    }
}

impl TryFrom<u8> for Reason {
    type Error = u8;

    fn try_from(code: u8) -> Result<Self, u8> {
        Reason::ALL.get(usize::from(code)).copied().ok_or(code)
    }
}

/// Index into the per-CPU [`crate::maps::METRICS`] array.
pub const fn metrics_index(dir: Dir, reason: Reason) -> u32 {
    ((dir as u32) << 8) | reason as u32
}

/// The direction and reason codes a [`metrics_index`] counts.
pub const fn metrics_slot(index: u32) -> (u8, u8) {
    ((index >> 8) as u8, index as u8)
}

/// Value of [`crate::maps::METRICS`] (per CPU; user space sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricValue {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<MetricValue>() == 16);

const _: () = {
    let mut i = 0;
    while i < Reason::ALL.len() {
        assert!(Reason::ALL[i] as usize == i);
        i += 1;
    }
};

crate::pod!(MetricValue);
