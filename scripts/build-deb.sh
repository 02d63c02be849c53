#!/usr/bin/env bash
# Builds the adaptived Debian package(s) with cargo-deb (installed from
# crates.io if missing), from the `board` profile binaries.
#
#   scripts/build-deb.sh [amd64|arm64|armhf ...]     (default: amd64 arm64)
#
# amd64: x86_64-unknown-linux-gnu (Debian 12 glibc or newer);
# arm64: aarch64-unknown-linux-musl (static: Raspberry Pi OS 64-bit, JetPack);
# armhf: armv7-unknown-linux-musleabihf, or armv7-unknown-linux-gnueabihf
#        static (crt-static) when rustup has no musleabihf std.
# Packages land in $CARGO_TARGET_DIR/debian/ (or .../TARGET/debian/) and their
# paths are printed, one a line, on stdout's last lines. SKIP_BUILD=1 packages
# the binaries as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE="${PROFILE:-board}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/adaptivenet/target-cross}"
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(amd64 arm64)
if ! cargo deb --version >/dev/null 2>&1; then
  # Its own target folder: installing a tool must not lock the project's.
  CARGO_TARGET_DIR=/var/cache/adaptivenet/target-tools nice -n 10 cargo install --locked cargo-deb
fi
out=()
for a in "${arches[@]}"; do
  case "$a" in
    amd64) t=x86_64-unknown-linux-gnu ;;
    arm64) t=aarch64-unknown-linux-musl ;;
    armhf) t=armv7-unknown-linux-musleabihf
           rustup target list --installed | grep -qx "$t" || t=armv7-unknown-linux-gnueabihf ;;
    *) echo "build-deb: unknown arch $a" >&2; exit 2 ;;
  esac
  if [ "$t" = x86_64-unknown-linux-gnu ]; then
    [ "${SKIP_BUILD:-0}" = 1 ] || nice -n 10 cargo build --locked --profile "$PROFILE" -p adaptivenet-daemon --bin adaptived
    deb=$(cargo deb --no-build --strip --profile "$PROFILE" -p adaptivenet-daemon | tail -1)
  else
    [ "${SKIP_BUILD:-0}" = 1 ] || scripts/cross-build.sh "$t" >&2
    deb=$(cargo deb --no-build --strip --profile "$PROFILE" --target "$t" -p adaptivenet-daemon | tail -1)
  fi
  out+=("$deb")
done
printf '%s\n' "${out[@]}"
