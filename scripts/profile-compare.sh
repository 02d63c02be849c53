#!/usr/bin/env bash
# Compares build profiles for boards on x86: size of the stripped `adaptived`,
# build time, and tract latency from bench-blocks (tract's whole-model time
# on the ResNet and MobileNetV2 fixtures, and its ratio to onnxruntime
# measured in the same run: the machine is shared, so the ratio is what is
# compared across profiles).
#
#   scripts/profile-compare.sh [VARIANT...]     (default: release board board-s)
#
#   release  the workspace release profile (opt-level 3, 16 codegen units,
#            thin-local LTO), stripped afterwards for the size column
#   board    [profile.board] in Cargo.toml (release + fat LTO, codegen-units 1, strip)
#   board-s  board with opt-level "s"
#   board-thin  board with lto = "thin" (codegen-units 1)
#   board-mixed board with opt-level "s" for every dependency but the
#            inference runtime (tract-core, tract-linalg, tract-data, ndarray)
#
# Each variant is a full build of tract (about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/adaptivenet/target-cross}"
RUNS="${RUNS:-500}"
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(release board board-s)
results=()
for v in "${variants[@]}"; do
  case "$v" in
    release)    prof=release; cfg=() ;;
    board)      prof=board; cfg=() ;;
    board-s)    prof=board-s; cfg=(--config 'profile.board-s.inherits="board"' --config 'profile.board-s.opt-level="s"') ;;
    board-thin) prof=board-thin; cfg=(--config 'profile.board-thin.inherits="board"' --config 'profile.board-thin.lto="thin"') ;;
    board-mixed) prof=board-mixed; cfg=(--config 'profile.board-mixed.inherits="board"'
                   --config 'profile.board-mixed.package."*".opt-level="s"')
                 for k in tract-core tract-linalg tract-data ndarray; do
                   cfg+=(--config "profile.board-mixed.package.$k.opt-level=3")
                 done ;;
    *) echo "unknown variant $v" >&2; exit 2 ;;
  esac
  t0=$(date +%s)
  nice -n 10 cargo build --locked "${cfg[@]}" --profile "$prof" \
    -p adaptivenet-daemon --bin adaptived -p adaptivenet-tests --bin bench-blocks
  t1=$(date +%s)
  bin="$CARGO_TARGET_DIR/$prof/adaptived"
  cp "$bin" "/tmp/adaptived-$v"; strip "/tmp/adaptived-$v"
  size=$(stat -c %s "/tmp/adaptived-$v")
  echo "== $v: build $((t1 - t0)) s, stripped adaptived $size bytes"
  for i in 1 2; do
    out=$("$CARGO_TARGET_DIR/$prof/bench-blocks" --runs "$RUNS")
    echo "$out"
    # bench-blocks' table rows: MODEL fixture BLOCKS TRACT_MS CHAINED CH/WHOLE ORT_MS TRACT/ORT
    row() { echo "$out" | awk -v m="$1" '$1 == m && $2 == "fixture" {print $4 " " $8}'; }
    read -r rn_ms rn_ratio <<<"$(row ResNet)"
    read -r mb_ms mb_ratio <<<"$(row MobileNetV2)"
    results+=("$v|$((t1 - t0))|$size|$rn_ms|$rn_ratio|$mb_ms|$mb_ratio")
  done
done
echo
echo "profile comparison, x86_64, $(date -u +%F), $(nproc) CPUs, bench-blocks --runs $RUNS (two runs each)"
printf '%-11s %8s %12s %16s %16s %16s %16s\n' profile build_s stripped_MB resnet_tract_ms resnet_tract/ort mbv2_tract_ms mbv2_tract/ort
for r in "${results[@]}"; do
  IFS='|' read -r v b s rm rq mm mq <<<"$r"
  printf '%-11s %8s %12.2f %16s %16s %16s %16s\n' "$v" "$b" "$(awk -v s="$s" 'BEGIN { print s / 1048576 }')" "$rm" "$rq" "$mm" "$mq"
done
