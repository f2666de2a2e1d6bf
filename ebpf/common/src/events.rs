//! What the datapath reports as it happens, in the ring buffer
//! [`crate::maps::EVENTS`]: every dropped packet (always, within a rate), and,
//! while tracing is on ([`crate::NODE_F_TRACE`], set by the agent while a
//! `weirctl monitor --trace` follows), every new flow's decisions: the load
//! balancer's translation and the policy verdicts that admitted it.

/// [`Event::kind`]: a packet dropped (or a flow rejected); `reason` says why.
pub const EVENT_DROP: u8 = 0;
/// [`Event::kind`]: a new flow translated: to a backend (`nat_*`, the
/// Service's `rev_nat_id`), from a new source (`nat2_*`: the hairpin
/// address, a node's for source NAT and masquerade); `ct_flags` says which
/// (`CT_F_*`).
pub const EVENT_TRANSLATE: u8 = 1;
/// [`Event::kind`]: a new flow admitted by the policies of an isolated
/// endpoint (`endpoint`), for its peer (`identity`); `dir` says on which side
/// (`from-pod`: egress, `to-pod`: ingress).
pub const EVENT_POLICY: u8 = 2;

/// [`Event::dir`] where the hook does not know it.
pub const EVENT_DIR_UNKNOWN: u8 = 0xff;

/// An entry of [`crate::maps::EVENTS`]. The tuple is the packet's as the hook
/// saw it (a translation's: as the client sent it, to the frontend); fields a
/// kind does not use are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub saddr: [u8; 16], /* BE */
    pub daddr: [u8; 16], /* BE */
    pub sport: u16,      /* BE */
    pub dport: u16,      /* BE */
    pub proto: u8,
    /// `AF_INET`, `AF_INET6`; 0: the packet's headers could not be read.
    pub family: u8,
    /// A [`Reason`](crate::Reason) code.
    pub reason: u8,
    /// `EVENT_*`.
    pub kind: u8,
    /// The isolated endpoint ([`crate::PolicyEndpoint::id`]) and the peer's
    /// identity, for policy's drops and verdicts.
    pub endpoint: u32,
    pub identity: u32,
    /// A [`Dir`](crate::Dir) code: where the hook saw it.
    pub dir: u8,
    /// A translation's `CT_F_*`.
    pub ct_flags: u8,
    pub nat_port: u16, /* BE */
    /// The device the packet came in on (TC egress: leaves by); 0 for a
    /// socket hook.
    pub ifindex: u32,
    pub nat_addr: [u8; 16],  /* BE */
    pub nat2_addr: [u8; 16], /* BE */
    pub nat2_port: u16,      /* BE */
    pub _pad: u16,
    /// The frontend's reverse-NAT id (its Service), 0: none.
    pub rev_nat_id: u32,
}
const _: () = assert!(core::mem::size_of::<Event>() == 96);

crate::pod!(Event);
