//! The eBPF object, built by build.rs from ebpf/programs and embedded in the binary.

/// The ELF object of Weir's eBPF programs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weir"));

/// A digest of [`OBJECT`] (FNV-1a, 64 bits, hex): which programs a binary
/// carries, so that `weirctl status` can tell an agent of another build.
pub fn digest() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in OBJECT {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
