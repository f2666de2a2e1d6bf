//! Connection tracking of translated flows: one entry per direction, the
//! forward one (`CT_OUT`) deciding the pair's life; flags, lifetimes and the
//! source-NAT port range.

/// Direction of a conntrack entry's tuple.
pub const CT_OUT: u8 = 0;
/// The reply direction (backend -> client, as the backend sends it).
pub const CT_IN: u8 = 1;

/// Key of [`crate::maps::CONNTRACK`]: a flow's tuple as it appears on the wire at the
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

/// Value of [`crate::maps::CONNTRACK`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// OUT: the backend (new destination). IN: the frontend (new source).
    pub nat_addr: [u8; 16], /* BE */
    /// Hairpin or source NAT only: OUT: the new source ([`HAIRPIN_V4`](crate::HAIRPIN_V4),
    /// [`HAIRPIN_V6`](crate::HAIRPIN_V6), the node's address); IN: the client (new destination).
    pub nat2_addr: [u8; 16], /* BE */
    /// OUT: the backend port. IN: the frontend port.
    pub nat_port: u16, /* BE */
    /// Hairpin or source NAT only: OUT: the new source port (hairpin: the
    /// client's own); IN: the client's port.
    pub nat2_port: u16, /* BE */
    /// `CT_F_*`.
    pub flags: u8,
    /// `CT_OUT`, TCP: `CT_FIN_*`, who has closed its side.
    pub fins: u8,
    pub _pad: [u8; 2],
    pub rev_nat_id: u32,
    /// The backend's id. A masqueraded flow ([`CT_F_MASQ`]), which has no
    /// backend: `CT_OUT`, TCP: the client's latest TCP timestamp (TSval, host
    /// order; 0: none seen), what the peer's TIME_WAIT will remember of it.
    pub backend_id: u32,
    /// `bpf_ktime_get_ns()` after which the entry is dead (the agent's GC removes it).
    pub expires_ns: u64,
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 56);

/// The client is its own backend: the source is rewritten to [`HAIRPIN_V4`](crate::HAIRPIN_V4) so the
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
/// A pod's flow leaving the cluster, masqueraded to the node's address on the
/// node device it leaves by (`nat2_*`: the node's address and port; `nat_*`:
/// the destination itself, unchanged). Always with [`CT_F_SNAT`], so that its
/// replies are found and translated back as a source-NATed flow's.
pub const CT_F_MASQ: u8 = 1 << 6;

/// The flow's client (the sender of its first packet) has sent a FIN.
pub const CT_FIN_CLIENT: u8 = 1 << 0;
/// The flow's peer (its backend, or a masqueraded flow's destination) has sent a FIN.
pub const CT_FIN_PEER: u8 = 1 << 1;
/// Both sides have closed: the connection is over, and one side of it may
/// hold its tuple in TIME_WAIT.
pub const CT_FIN_BOTH: u8 = CT_FIN_CLIENT | CT_FIN_PEER;

/// Source ports of source-NATed external flows and masqueraded pod flows (one
/// allocator: their reply entries share the key space): 1024-65535 outside the node's
/// ephemeral range ([`NodeAddrs::ephemeral`](crate::NodeAddrs::ephemeral)), so that they never meet the
/// node's own outgoing connections.
pub const SNAT_PORT_FIRST: u16 = 1_024;
/// Linux's default `ip_local_port_range`.
pub const DEFAULT_EPHEMERAL: [u16; 2] = [32_768, 60_999];

/// Conntrack lifetimes, in seconds (as Cilium's defaults: long-lived established
/// TCP, short after a close or for an unanswered SYN).
pub const CT_LIFETIME_TCP_SYN: u64 = 60;
pub const CT_LIFETIME_TCP: u64 = 21_600;
pub const CT_LIFETIME_TCP_CLOSING: u64 = 10;
/// A source-NATed TCP flow closed both ways keeps its port this long from
/// other clients: Linux's TIME_WAIT (`TCP_TIMEWAIT_LEN`), which the peer may
/// hold on the node's (address, port). Another client's SYN on that tuple
/// would carry timestamps of another offset, and the peer would refuse it
/// (PAWS) until its retransmission; the same client's are newer and pass.
pub const CT_LIFETIME_TCP_TIME_WAIT: u64 = 60;
pub const CT_LIFETIME_DATAGRAM: u64 = 60;

crate::pod!(CtKey, CtValue);
