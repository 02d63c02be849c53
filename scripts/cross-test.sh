#!/usr/bin/env bash
# The `onnx` crate's tests for a board target, run under qemu-user (the
# `runner` of .cargo/config.toml; no binfmt_misc needed).
#
#   scripts/cross-test.sh [TARGET...]     (default: aarch64-unknown-linux-musl)
#
# TARGET armv7-unknown-linux-musleabihf falls back to
# armv7-unknown-linux-gnueabihf + crt-static when rustup has no musleabihf
# std (scripts/cross-env.sh, shared with scripts/cross-build.sh). Run scripts/cross-build.sh once first
# on a fresh machine (it installs the cross gcc and qemu-user).
#
# Profile `test` (dev + dependencies at opt-level 3, Cargo.toml), in
# CARGO_TARGET_DIR (default /var/cache/adaptivenet/target-cross: TARGET/debug/,
# beside the `board` builds, which it does not touch). A cold folder compiles
# tract for the target (about 40 minutes on the shared 2-core machine).
# The tests read the committed fixtures through CARGO_MANIFEST_DIR, an
# absolute host path that qemu-user sees as is; none calls python or
# onnxruntime, so none is skipped under emulation.
# Env: QEMU_CPU (default cortex-a72 for aarch64, cortex-a7 for armv7; qemu's
# default `max` CPU has SVE2, which no Pi or Jetson has), TEST_ARGS (passed to
# the test binary, e.g. a name filter).
# Prints the build time, the run time and libtest's counts per target; exits
# non-zero if a build or a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cross-env.sh
. scripts/cross-env.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/adaptivenet/target-cross}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-musl)
QEMU_CPU_SET="${QEMU_CPU:-}"
status=0
summary=()
for t in "${targets[@]}"; do
  t=$(board_target "$t" cross-test)
  case "$t" in
    aarch64-*) runner=qemu-aarch64; export QEMU_CPU="${QEMU_CPU_SET:-cortex-a72}" ;;
    armv7-*) runner=qemu-arm; export QEMU_CPU="${QEMU_CPU_SET:-cortex-a7}" ;;
    *) echo "cross-test: unknown target $t" >&2; exit 2 ;;
  esac
  command -v "$runner" >/dev/null || { echo "cross-test: $runner not found (scripts/cross-build.sh installs qemu-user)" >&2; exit 1; }
  t0=$(date +%s)
  nice -n 10 cargo test --locked --target "$t" -p adaptivenet-onnx --no-run
  t1=$(date +%s)
  log=$(mktemp /tmp/cross-test.XXXXXX)
  rc=0
  # shellcheck disable=SC2086
  cargo test --locked --target "$t" -p adaptivenet-onnx -- ${TEST_ARGS:-} 2>&1 | tee "$log" || rc=$?
  t2=$(date +%s)
  counts=$(grep '^test result:' "$log" | awk '{ p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed, %d ignored", p, f, i }')
  rm -f "$log"
  [ "$rc" = 0 ] || status=1
  summary+=("$(printf '%-32s %s (QEMU_CPU=%s): build %d s, run %d s, %s: %s' \
    "$t" "$runner" "$QEMU_CPU" $((t1 - t0)) $((t2 - t1)) "$counts" "$([ "$rc" = 0 ] && echo PASS || echo FAIL)")")
done
echo
printf 'cross-test: %s\n' "${summary[@]}"
exit "$status"
