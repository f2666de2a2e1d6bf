#!/usr/bin/env bash
# Builds Weir's image from this repository, offline: static binaries (release,
# x86_64-unknown-linux-musl), then the Containerfile (FROM scratch) with buildah.
# Writes target/weir-image.tar (a docker-archive, as `ctr image import` and
# `kind load image-archive` read it); with --import, also imports it into
# containerd's k8s.io namespace. The image is named $WEIR_IMAGE, by default the
# one manifests/daemonset.yaml names.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${WEIR_IMAGE:-$(sed -n 's/^ *image: *//p' manifests/daemonset.yaml | head -n1)}
import=false
for arg in "$@"; do
    case $arg in
        --import) import=true ;;
        *) echo "usage: $0 [--import]" >&2; exit 2 ;;
    esac
done

scripts/setup.sh
TARGET=x86_64-unknown-linux-musl
# ring's C and assembly, for musl.
export CC_x86_64_unknown_linux_musl=musl-gcc
# Symbols stripped: the image carries what runs.
CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked --target "$TARGET" -p weir-agent -p weir-cni --bins

ctx=target/image-context
rm -rf "$ctx" && mkdir -p "$ctx"
cp "target/$TARGET/release/weir-agent" "target/$TARGET/release/weir-cni" \
   "target/$TARGET/release/weirctl" Containerfile "$ctx/"
# vfs: no overlay mounts needed, wherever this runs.
export STORAGE_DRIVER=vfs
buildah build --quiet --layers=false --format oci -f "$ctx/Containerfile" -t "$IMAGE" "$ctx" >/dev/null
rm -f target/weir-image.tar
buildah push --quiet "$IMAGE" "docker-archive:target/weir-image.tar:$IMAGE"
buildah rmi "$IMAGE" >/dev/null
echo "image: $IMAGE -> target/weir-image.tar ($(du -h target/weir-image.tar | cut -f1))"
if $import; then
    ctr -n k8s.io image import target/weir-image.tar >/dev/null
    echo "imported into containerd (namespace k8s.io)"
fi
