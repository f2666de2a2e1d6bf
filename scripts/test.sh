#!/usr/bin/env bash
# Runs every test: unit tests (no root), eBPF load tests (root + kernel) and the
# lab's end-to-end tests (root + namespaces, real packets). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ "$(id -u)" = 0 ] || { echo "tests need root (namespaces, eBPF): run as root" >&2; exit 1; }
# Formatting and clippy (warnings are errors) first: they fail in seconds.
bash scripts/lint.sh
# Integration tests find the binaries next to themselves: build them first. Plain
# `cargo build` covers the default members, which leave out the eBPF crate (it is
# built by agent/build.rs for its own target; see Cargo.toml).
cargo build --bins --locked
# The image (static release binaries, FROM scratch) that tests/tests/root_image.rs
# runs as the DaemonSet does.
bash scripts/image.sh
cargo test --locked "$@"
# A short run of every fuzz target under libFuzzer (the tests above replayed
# their corpora already); scripts/fuzz.sh runs them for longer.
if [ $# -eq 0 ]; then
    bash scripts/fuzz.sh --smoke
fi
