#![no_std]
// The programs live in the `weir` binary (src/main.rs); this stub lets tools that
// walk the workspace treat the crate as a library.
