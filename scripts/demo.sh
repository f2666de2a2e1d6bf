#!/usr/bin/env bash
# The main job: installs what is missing, builds, and runs Weir on a local lab of
# network namespaces (see README). Pass --keep to leave the lab up until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --bins --locked
exec target/debug/weir-lab demo "$@"
