#!/usr/bin/env bash
# Run one fuzz target for a time: scripts/fuzz.sh TARGET SECONDS [libFuzzer flags...]
# Targets: bundle, config, infer_request, onnx_blocks (fuzz/fuzz_targets/). The committed
# seeds (fuzz/corpus/TARGET) are read; what libFuzzer adds goes to
# fuzz/work/TARGET (not committed); crashes go to fuzz/artifacts/TARGET.
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly rustc for the
# sanitizer flags: the `nightly` toolchain if rustup has it, else the stable
# one with RUSTC_BOOTSTRAP=1. Runs niced, one job, 2 GB RSS limit per input.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 TARGET SECONDS [libFuzzer flags...]" >&2; exit 2; }
target=$1 secs=$2
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$root/fuzz/fuzz_targets/$target.rs" ] || { echo "no fuzz target \`$target\` (see fuzz/fuzz_targets/)" >&2; exit 2; }
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 2; }
toolchain=()
if rustup run nightly rustc --version >/dev/null 2>&1; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/fuzz/target}"
cd "$root/fuzz"
mkdir -p "work/$target" "artifacts/$target"
exec nice -n 10 cargo "${toolchain[@]}" fuzz run --release "$target" \
  "work/$target" "corpus/$target" -- \
  -max_total_time="$secs" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
  -artifact_prefix="artifacts/$target/" "$@"
