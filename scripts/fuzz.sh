#!/usr/bin/env bash
# Fuzzes Weir with libFuzzer (cargo fuzz, nightly, AddressSanitizer): every target
# of tests/fuzz/fuzz for SECONDS each (default 60), or the ones named.
#
#   sudo scripts/fuzz.sh                 # every target, 60 s each
#   sudo scripts/fuzz.sh 600 manifests   # one target, 10 minutes
#   sudo scripts/fuzz.sh --smoke         # every target, 5 s each (CI)
#
# Targets: cni_config (CNI environment + configuration), manifests (parser and
# compilers), yaml (the reader of simple YAML documents against the general
# parser), registration (the agent's socket protocol), datapath (frames through
# every TC program with BPF_PROG_TEST_RUN: needs root). New inputs go to a scratch
# corpus; the committed seeds (tests/fuzz/fuzz/corpus) are only read, and every
# test run replays them (tests/fuzz/tests/smoke.rs). A crash leaves its input in
# tests/fuzz/fuzz/artifacts/<target>/ and fails the script: replay it with
# `cargo +nightly fuzz run --fuzz-dir tests/fuzz/fuzz <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

seconds=60
if [ "${1:-}" = --smoke ]; then
    seconds=5
    shift
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(cni_config manifests yaml registration datapath)
[ "$(id -u)" = 0 ] || { echo "fuzz.sh needs root (the datapath target loads eBPF programs)" >&2; exit 1; }

dir=tests/fuzz/fuzz
scratch=$(mktemp -d)
if ! cargo +nightly fuzz build --fuzz-dir "$dir" -O >"$scratch/build.log" 2>&1; then
    grep -v '^warning: weir-agent@' "$scratch/build.log" | tail -40 >&2
    echo "fuzz: building the targets failed" >&2
    exit 1
fi
trap 'rm -rf "$scratch"; rm -rf /sys/fs/bpf/weir-fuzz-*' EXIT
status=0
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t"
    echo "fuzz: $t for ${seconds}s" >&2
    if ! cargo +nightly fuzz run --fuzz-dir "$dir" -O "$t" "$scratch/$t" "$dir/corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 2>"$scratch/$t.log"; then
        echo "fuzz: $t FAILED (input in $dir/artifacts/$t/):" >&2
        tail -40 "$scratch/$t.log" >&2
        status=1
    else
        grep -E '^stat::number_of_executed_units|^Done' "$scratch/$t.log" | sed "s/^/fuzz: $t: /" >&2 || true
    fi
done
exit $status
