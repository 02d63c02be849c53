#!/usr/bin/env bash
# Cross-builds `adaptived` for boards, installing what it needs on a fresh
# Debian machine (as root, or with sudo): Debian's cross gcc (linker and C
# compiler for tract's assembly kernels), qemu-user (for the tests under
# emulation), `file`, and the rustup targets. Safe to run again.
#
#   scripts/cross-build.sh [TARGET...]
#
# Default targets:
#   aarch64-unknown-linux-musl      static: Jetson (any JetPack), Raspberry Pi OS 64-bit
#   aarch64-unknown-linux-gnu       dynamic glibc 2.35 or newer (Debian 12, Ubuntu 22.04; not JetPack 5)
#   armv7-unknown-linux-musleabihf  static: Raspberry Pi OS 32-bit
# When rustup cannot provide armv7-unknown-linux-musleabihf (its rust-std
# download fails), armv7-unknown-linux-gnueabihf is built instead, linked
# statically against glibc (crt-static, .cargo/config.toml): also a static
# binary for Raspberry Pi OS 32-bit.
#
# Profile: PROFILE (default `board`, Cargo.toml). Output: the stripped
# binaries to install, $CARGO_TARGET_DIR/boards/adaptived-TARGET (cargo's own
# $CARGO_TARGET_DIR/TARGET/PROFILE/adaptived keeps its symbols for `cargo
# bloat`); CARGO_TARGET_DIR defaults to /var/cache/adaptivenet/target-cross.
# Linkers and runners: .cargo/config.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cross-env.sh
. scripts/cross-env.sh
PROFILE="${PROFILE:-board}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/adaptivenet/target-cross}"
mkdir -p "$CARGO_TARGET_DIR"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-musl aarch64-unknown-linux-gnu armv7-unknown-linux-musleabihf)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
need_apt=()
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v arm-linux-gnueabihf-gcc >/dev/null || need_apt+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v file >/dev/null || need_apt+=(file)
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

built=()
for t in "${targets[@]}"; do
  t=$(board_target "$t" cross-build)
  t0=$(date +%s)
  nice -n 10 cargo build --locked --profile "$PROFILE" --target "$t" -p adaptivenet-daemon --bin adaptived
  echo "cross-build: $t built in $(( $(date +%s) - t0 )) s"
  built+=("$t")
done
echo
mkdir -p "$CARGO_TARGET_DIR/boards"
for t in "${built[@]}"; do
  case "$t" in
    aarch64-*) strip=aarch64-linux-gnu-strip ;;
    armv7-*) strip=arm-linux-gnueabihf-strip ;;
    *) strip=strip ;;
  esac
  b="$CARGO_TARGET_DIR/$t/$PROFILE/adaptived"
  s="$CARGO_TARGET_DIR/boards/adaptived-$t"
  "$strip" -o "$s" "$b"
  awk -v t="$t" -v s="$(stat -c %s "$s")" -v b="$(stat -c %s "$b")" -v p="$s" \
    'BEGIN { printf "%-32s %6.2f MB stripped, %d bytes (%.2f MB with symbols)  %s\n", t, s / 1048576, s, b / 1048576, p }'
  echo "    $(file -b "$s")"
done
