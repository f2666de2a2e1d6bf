#!/usr/bin/env bash
# Draws docs/charts/*.svg from the benchmarks' JSON Lines records (docs/data/*.jsonl,
# the runs published in docs/benchmarks.md). Another data directory, e.g. what a run
# wrote with WEIR_BENCH_JSON=DIR: scripts/charts.sh --data DIR [--out DIR].
# No root needed; builds only tools/charts (plotters, SVG only), outside the default members.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --locked --quiet -p weir-charts -- "$@"
