//! Rebuild the object when bpf-linker changes (as aya-template does), and
//! let LLVM expand small `memset`s inline.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    // bpf-linker passes `--bpf-expand-memcpy-in-order` by default, which also
    // sets the BPF backend's store budget for `memset` to zero: every zeroed
    // run of bytes (the 12 bytes after an IPv4 address in a 16-byte key, a
    // key's padding) becomes a call to aya's byte-loop `memset`, four
    // instructions a byte, dozens of times per packet. Without it LLVM writes
    // them as a few plain stores, as clang does for Cilium's C.
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
