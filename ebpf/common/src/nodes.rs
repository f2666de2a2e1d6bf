//! The node and its local endpoints: the pods whose veths are here, the
//! node's own addresses, and how pod traffic is delivered.

use crate::net::{AF_INET, AF_INET6};

/// Key of [`crate::maps::ENDPOINTS`]: a local pod address. IPv4 uses the first 4 bytes of
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

/// Value of [`crate::maps::ENDPOINTS`]: where a local pod lives, and the MAC
/// addresses of both ends of its veth, with which the datapath hands it a
/// packet straight into its namespace (`bpf_redirect_peer`: the frame arrives
/// as it is, so it must already be addressed from the host veth to the pod).
///
/// The MACs took the place of three reserved fields that were always written
/// as zeros, and all-zero MACs mean "unknown" (the packet then goes by the
/// host veth, as before): an entry written under the old layout reads the
/// same under this one, so the map keeps its name.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Host-side veth of the pod.
    pub ifindex: u32,
    /// The pod's end of the veth (its `eth0`); all zero: unknown.
    pub mac: [u8; 6],
    /// The host's end of the veth; all zero: unknown.
    pub host_mac: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 16);

/// Value of [`crate::maps::NODE`]: the addresses external flows to remote endpoints are
/// source-NATed to, one per family (all zero: none), the node's network
/// namespace (its cookie), the only one the socket hooks act in, how pod
/// traffic is delivered (`NODE_F_*`), and the overlay's VNI.
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
    /// `--routing vxlan`: the VXLAN network identifier the overlay sends with
    /// and accepts (one collect-metadata device carries any VNI).
    pub vni: u32,
    /// `--routing vxlan`: the overlay's UDP port (0: no overlay). Its packets
    /// on the node's devices are the node's own, nothing the node programs
    /// translate: they pass at a glance.
    pub tunnel_port: u16, /* BE */
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<NodeAddrs>() == 56);

/// [`NodeAddrs::flags`]: deliver pods' packets to pods of the node through
/// the host's stack (routing, netfilter) instead of straight to their veth,
/// and leave the reverse translation of local backends' replies to the
/// client's veth. Netfilter then sees both directions of every flow, so the
/// flows it translates itself (kube-proxy's rules still in place, hostPorts
/// of the chained `portmap`) get their replies translated back. Cilium calls
/// this legacy host routing.
pub const NODE_F_HOST_STACK: u32 = 1;
/// [`NodeAddrs::flags`]: pods' flows to destinations outside the cluster
/// (not in [`crate::maps::NOMASQ`]) leave from the node's address
/// (`--masquerade`).
pub const NODE_F_MASQUERADE: u32 = 2;

/// [`NodeAddrs::flags`]: report every new flow's decisions in
/// [`crate::maps::EVENTS`] ([`crate::EVENT_TRANSLATE`],
/// [`crate::EVENT_POLICY`]). Set by the agent while some `weirctl monitor
/// --trace` follows its events, cleared when the last one goes: off, it costs
/// a new flow one test of a flag already read.
pub const NODE_F_TRACE: u32 = 4;

/// Key of [`crate::maps::NOMASQ`], an LPM trie: the same layout as the
/// ipcache's (family, then the address; the prefix counts
/// [`crate::IPCACHE_PREFIX_BITS`] for the family).
pub type NomasqKey = crate::IpcacheKey;

/// Value bits of [`crate::maps::NOMASQ`]. Every entry is a destination pods
/// reach with their own address (never masqueraded); this one marks the
/// cluster's pod CIDRs: a source there is inside the cluster (a NodePort of
/// externalTrafficPolicy Local reached from another node's pod uses every
/// endpoint, as kube-proxy does with a cluster CIDR).
pub const NOMASQ_F_CLUSTER: u32 = 1;

/// Value of [`crate::maps::DEVICE_ADDRS`]: a node device's own address of
/// each family (all zero: none), which pods' flows leaving by that device are
/// masqueraded to, as Cilium and iptables `MASQUERADE` do: replies to it come
/// back by the same device, whatever the node's first address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceAddrs {
    pub v4: [u8; 16], /* BE, IPv4 in the first 4 bytes */
    pub v6: [u8; 16], /* BE */
}

crate::pod!(EndpointKey, EndpointInfo, NodeAddrs, DeviceAddrs);
