//! Weir's node agent.
//!
//! - [`datapath`]: the thin kernel-facing layer: load the eBPF object, pin maps and
//!   links under one root, attach programs to pod veths, typed map handles.
//! - [`cni_server`]: the unix socket on which `weir-cni` registers pods, so that a
//!   pod's datapath is in force before `ADD` returns.

pub mod cni_server;
pub mod datapath;
