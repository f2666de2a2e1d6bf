//! `weir-cni`: Weir's CNI 1.1.0 plugin. Wires pods to the node with a veth pair,
//! allocates their addresses from the node's pod CIDRs (or delegates to another
//! IPAM plugin), and registers them with the node agent when one is configured.
//!
//! Layers: [`spec`] (the wire format, no I/O), [`ipam`] (allocator, stores,
//! delegation), [`netns`]/[`netlink`] (the kernel), [`commands`] (the verbs).

pub mod commands;
pub mod error;
pub mod ipam;
pub mod naming;
pub mod netlink;
pub mod netns;
pub mod spec;

pub use error::Error;
