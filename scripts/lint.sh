#!/usr/bin/env bash
# The gates every change passes before the tests: formatting, and clippy with
# warnings as errors on every target of the user-space crates and on the eBPF
# crate (for its own target: it cannot be built with the others, see Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --locked --workspace --exclude weir-ebpf --all-targets -- -D warnings
cargo +nightly clippy --locked -p weir-ebpf --bins --release \
    --target bpfel-unknown-none -Z build-std=core -- -D warnings
# The ABI crate's documentation is its contract: its links must resolve.
RUSTDOCFLAGS="-D warnings" cargo doc --locked -p weir-common --no-deps --quiet
