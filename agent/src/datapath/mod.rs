//! The kernel-facing layer: everything that touches bpf(2) for the agent and
//! `weirctl` goes through here.

mod attach;
pub mod batch;
pub mod bpffs;
pub mod cgroup;
mod endpoints;
mod error;
mod load;
pub mod maps;
pub mod names;
pub mod object;
pub mod pins;

pub use attach::AttachedCount;
pub use endpoints::{endpoint_key, forget_ifindexes, is_not_found};
pub use error::DatapathError;
pub use load::{Datapath, LoadOptions};
pub use pins::PinLayout;
