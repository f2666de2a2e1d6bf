//! NetworkPolicy: which local pods are isolated, the ipcache (address ->
//! identity), the rules per endpoint, the policy conntrack and its drops.

/// Value of [`crate::maps::POLICY_ENDPOINTS`]: a local pod some NetworkPolicy isolates.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyEndpoint {
    /// The endpoint's number in [`PolicyKey::endpoint`] (per node, never 0).
    pub id: u32,
    /// `POLICY_F_*`: the directions it is isolated in.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyEndpoint>() == 8);

/// Isolated for ingress: only what [`crate::maps::POLICY`] admits comes in.
pub const POLICY_F_INGRESS: u32 = 1 << 0;
/// Isolated for egress.
pub const POLICY_F_EGRESS: u32 = 1 << 1;

/// Data of an [`crate::maps::IPCACHE`] key: the LPM prefix covers `family` (8 bits)
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

/// Data of a [`crate::maps::POLICY`] key. The fields that are always matched whole come
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

/// Value of [`crate::maps::POLICY_CT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyCtValue {
    /// `bpf_ktime_get_ns()` after which the entry is dead.
    pub expires_ns: u64,
    /// `PCT_F_*`.
    pub flags: u8,
    pub _pad: [u8; 3],
    /// The endpoint whose judgement created the entry, charged for it in
    /// [`crate::maps::POLICY_SHARES`] (0: none; entries of agents before it).
    pub owner: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyCtValue>() == 16);

/// Value of [`crate::maps::POLICY_SHARES`]: how many entries other than TCP an
/// endpoint holds in [`crate::maps::POLICY_CT`], and how many it may. The datapath
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

crate::pod!(PolicyEndpoint, IpcacheKey, PolicyKey, PolicyCtValue, PolicyShare);
