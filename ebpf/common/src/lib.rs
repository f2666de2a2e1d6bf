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
    pub const METRICS: &str = "weir_metrics_v1";
    pub const ENDPOINTS: &str = "weir_endp_v1";

    /// Entries of [`METRICS`]: one slot per (direction, reason).
    pub const METRICS_ENTRIES: u32 = 2 * 256;
    pub const ENDPOINTS_ENTRIES: u32 = 65_536;
}

pub mod programs {
    //! Program names in the object, as user space looks them up.
    pub const FROM_POD: &str = "from_pod";
    pub const TO_POD: &str = "to_pod";
}

/// Direction of a packet relative to the pod, as seen on the host side of its veth.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// TC ingress on the host veth: the pod sent it.
    FromPod = 0,
    /// TC egress on the host veth: on its way into the pod.
    ToPod = 1,
}

/// Why a packet was passed or dropped. `Forwarded` is the only pass reason;
/// every drop has its own code so that it can be counted and reported.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Forwarded = 0,
    Malformed = 1,
}

impl Reason {
    pub const fn name(code: u8) -> &'static str {
        match code {
            0 => "forwarded",
            1 => "malformed packet",
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
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
        Self { addr: a, family: AF_INET, _pad: [0; 3] }
    }
    pub const fn v6(addr: [u8; 16]) -> Self {
        Self { addr, family: AF_INET6, _pad: [0; 3] }
    }
}

/// Value of [`maps::ENDPOINTS`]: where a local pod lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Host-side veth of the pod.
    pub ifindex: u32,
    /// Policy identity of the pod (0 until policy lands).
    pub identity: u32,
    /// Reserved for per-endpoint policy flags.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 16);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C) structs of integers with explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for MetricValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointInfo {}
}
