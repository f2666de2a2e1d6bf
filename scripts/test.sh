#!/usr/bin/env bash
# Runs every test: unit tests (no root), eBPF load tests (root + kernel) and the
# lab's end-to-end tests (root + namespaces, real packets). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ "$(id -u)" = 0 ] || { echo "tests need root (namespaces, eBPF): run as root" >&2; exit 1; }
# Integration tests find the binaries next to themselves: build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
