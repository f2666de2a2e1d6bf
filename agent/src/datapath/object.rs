//! The eBPF object, built by build.rs from ebpf/programs and embedded in the binary.

/// The ELF object of Weir's eBPF programs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weir"));
