//! The ABI between Weir's eBPF programs and user space: map names and the
//! `#[repr(C)]` key/value types, defined once and used by both sides, one
//! module per area of the datapath.
//!
//! Rules (see STYLE.md): integers only, explicit `_pad`, `/* BE */` on every
//! network-order field, a size assertion per type. Any layout change bumps the
//! version suffix of the map name that carries it ([`maps`]).
#![no_std]

pub mod conntrack;
pub mod events;
pub mod lb;
pub mod maps;
pub mod metrics;
pub mod names;
pub mod net;
pub mod nodes;
pub mod overlay;
pub mod policy;
pub mod programs;

pub use conntrack::*;
pub use events::*;
pub use lb::*;
pub use metrics::*;
pub use names::*;
pub use net::*;
pub use nodes::*;
pub use overlay::*;
pub use policy::*;

/// `unsafe impl aya::Pod` for ABI types, with user space's `user` feature.
macro_rules! pod {
    ($($ty:ty),* $(,)?) => {
        $(
            // SAFETY: every type given here is `#[repr(C)]`, made of integers
            // (and arrays of them) with explicit padding fields: every bit
            // pattern is a valid value and no byte is uninitialised.
            #[cfg(feature = "user")]
            unsafe impl aya::Pod for $ty {}
        )*
    };
}
pub(crate) use pod;
