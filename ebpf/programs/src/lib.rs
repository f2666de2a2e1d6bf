#![no_std]
// The programs live in the `weir` binary (src/main.rs), built for
// bpfel-unknown-none by agent/build.rs; this empty library lets tools that walk
// the workspace (cargo metadata, rust-analyzer) treat the crate as any other.
