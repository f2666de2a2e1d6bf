#!/usr/bin/env bash
# Installs everything Weir needs on a fresh Debian machine, idempotently.
# Fast (seconds) when everything is already present. See ../shared/TOOLCHAIN.md
# for why bpf-linker is built against the nightly toolchain's own LLVM.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

# Debian packages: iproute2 and ethtool for the lab; containerd/runc/busybox for the real-runtime
# test; the reference CNI plugins for chaining and the benchmark baseline; iptables/nft
# for kube-proxy's rules (benchmarks, the migration test) and traffic tools; musl-tools
# and buildah for the image (static binaries, built offline FROM scratch).
PKGS=(iproute2 ethtool containerd runc busybox-static containernetworking-plugins
      iptables nftables iperf3 socat bpftool iputils-ping musl-tools buildah)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rust: nightly with rust-src for -Z build-std=core (the eBPF target has no std).
command -v rustup >/dev/null || { log "rustup is required"; exit 1; }
rustup toolchain list | grep -q '^nightly' || { log "installing nightly"; rustup toolchain install nightly --profile minimal; }
rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src' \
    || { log "adding rust-src to nightly"; rustup component add rust-src --toolchain nightly; }
# The lint gates (scripts/lint.sh): rustfmt and clippy, and clippy for the eBPF crate.
for tc in stable nightly; do
    for c in rustfmt clippy; do
        rustup component list --toolchain "$tc" --installed 2>/dev/null | grep -q "^$c" \
            || { log "adding $c to $tc"; rustup component add "$c" --toolchain "$tc"; }
    done
done

# The image's static binaries.
rustup target list --installed | grep -q '^x86_64-unknown-linux-musl$' \
    || { log "adding the musl target"; rustup target add x86_64-unknown-linux-musl; }

# bpf-linker against the LLVM that ships inside the nightly toolchain.
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
if ! command -v bpf-linker >/dev/null && [ ! -x "$CARGO_HOME/bin/bpf-linker" ]; then
    SYSROOT=$(rustc +nightly --print sysroot)
    SO=$(basename "$(ls "$SYSROOT"/lib/libLLVM.so.* | head -n1)")
    PREFIX=$CARGO_HOME/bpf-linker-llvm
    mkdir -p "$PREFIX/lib"
    ln -sf "$SYSROOT/lib/$SO" "$PREFIX/lib/$SO"
    ln -sf "$SYSROOT/lib/$SO" "$PREFIX/lib/libLLVM.so"
    log "building bpf-linker against $SO (about a minute)"
    LLVM_PREFIX=$PREFIX cargo +stable install bpf-linker --locked --no-default-features --features llvm-22 -q
fi

# cargo-fuzz, for scripts/fuzz.sh (libFuzzer through the nightly toolchain).
if ! command -v cargo-fuzz >/dev/null && [ ! -x "$CARGO_HOME/bin/cargo-fuzz" ]; then
    log "installing cargo-fuzz (about half a minute)"
    cargo +stable install cargo-fuzz --locked -q
fi

# bpffs, where maps and links are pinned.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
# The lab routes between pods in the root namespace too.
sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
log "ok"
