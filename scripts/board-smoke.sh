#!/usr/bin/env bash
# Smoke test of a cross-built `adaptived` under qemu-user (no binfmt_misc
# needed: the host runs `qemu-aarch64 BINARY` itself):
#   1. the board binary and the x86_64 build serve the demo bundle (signed,
#      dropped into a watched folder) on 127.0.0.1; the same KServe v2 infer
#      request (4 Fashion-MNIST images, UINT8) to both must give logits equal
#      within 1e-4;
#   2. kill -9 the board daemon, restart it on the same state: it serves
#      again (from its state, no bundle in the folder) with the same logits;
#   3. `adaptived search` on 200 Fashion-MNIST test images completes and
#      writes its cache file.
#
#   scripts/board-smoke.sh TARGET     e.g. aarch64-unknown-linux-musl
#
# Builds what is missing with `cargo build --profile $PROFILE` (default
# board). TARGET x86_64-unknown-linux-gnu runs the host build without qemu.
# Env: SEARCH=0 (skip step 3), PROFILE, CARGO_TARGET_DIR (default /var/cache/adaptivenet/target-cross),
# HOST_BIN (the x86_64 reference binary, any profile: logits do not depend on
# it; default $CARGO_TARGET_DIR/$PROFILE/adaptived, built if HOST_BIN is unset;
# CI passes its test build's target/debug/adaptived),
# SKIP_BUILD=1 (use the binaries as they are), READY_TIMEOUT_S (default
# 600), QEMU_CPU (default cortex-a72 for aarch64, the Raspberry Pi 4's core;
# cortex-a7 for armv7; qemu's default `max` CPU has SVE2, which no Pi or
# Jetson has), SEARCH_ARGS (`search` flags; default under qemu: 1+3 timing
# rounds, one latency check, 8 merge-space subnets on all 200 images: under
# qemu a batch-1 oracle run costs about 0.25 s of CPU against 0.8 ms
# natively, and a default search takes hours; see docs/boards.md).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
TARGET="${1:?usage: scripts/board-smoke.sh TARGET}"
PROFILE="${PROFILE:-board}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/adaptivenet/target-cross}"
READY_TIMEOUT_S="${READY_TIMEOUT_S:-600}"
F=/usr/share/datasets/fashion-mnist
BUILD_HOST=1
if [ -n "${HOST_BIN:-}" ]; then BUILD_HOST=0; else HOST_BIN="$CARGO_TARGET_DIR/$PROFILE/adaptived"; fi
case "$TARGET" in
  x86_64-unknown-linux-gnu) RUNNER=(); BIN="$HOST_BIN" ;;
  aarch64-unknown-linux-musl) RUNNER=(qemu-aarch64); export QEMU_CPU="${QEMU_CPU:-cortex-a72}" ;;
  aarch64-unknown-linux-gnu) RUNNER=(qemu-aarch64 -L /usr/aarch64-linux-gnu); export QEMU_CPU="${QEMU_CPU:-cortex-a72}" ;;
  armv7-unknown-linux-musleabihf | armv7-unknown-linux-gnueabihf) RUNNER=(qemu-arm); export QEMU_CPU="${QEMU_CPU:-cortex-a7}" ;;
  *) echo "board-smoke: unknown target $TARGET" >&2; exit 2 ;;
esac
BIN="${BIN:-$CARGO_TARGET_DIR/$TARGET/$PROFILE/adaptived}"

build() { # [--target T]
  nice -n 10 cargo build --locked --profile "$PROFILE" "$@" -p adaptivenet-daemon --bin adaptived
}
T_START=$(date +%s.%N)
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  [ "$BUILD_HOST" = 0 ] || build
  [ "$BIN" = "$HOST_BIN" ] || build --target "$TARGET"
fi
for b in "$HOST_BIN" "$BIN"; do
  [ -x "$b" ] || { echo "board-smoke: $b missing (scripts/cross-build.sh builds it)" >&2; exit 1; }
done
[ -f "$F/t10k-images-idx3-ubyte.gz" ] || { echo "board-smoke: $F missing (scripts/install-deps.sh)" >&2; exit 1; }
for c in "${RUNNER[@]:0:1}" curl python3; do
  command -v "$c" >/dev/null || { echo "board-smoke: $c not found (scripts/cross-build.sh installs it)" >&2; exit 1; }
done

W=$(mktemp -d /tmp/board-smoke.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "board-smoke: kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
now() { date +%s.%N; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start NAME PORT RUNNER... BIN: config + state under $W/NAME, log $W/NAME.log;
# sets PID.
start() {
  local name=$1 port=$2; shift 2
  mkdir -p "$W/$name/bundles" "$W/$name/state"
  cat > "$W/$name/config.yaml" <<YAML
bundle_dir: $W/$name/bundles
state_dir: $W/$name/state
listen: 127.0.0.1:$port
trusted_keys: [$REPO/tests/fixtures/keys/demo.pub]
worker_threads: 2
YAML
  "$@" serve --config "$W/$name/config.yaml" >>"$W/$name.log" 2>&1 &
  PID=$!
  PIDS+=("$PID")
}
# wait_ready NAME PORT PID: poll /v2/health/ready until 200, with a deadline.
wait_ready() {
  local name=$1 port=$2 pid=$3 t0 deadline
  t0=$(now); deadline=$(( $(date +%s) + READY_TIMEOUT_S ))
  until curl -sf -o /dev/null "http://127.0.0.1:$port/v2/health/ready"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "board-smoke: $name exited before ready; log:" >&2; tail -30 "$W/$name.log" >&2; exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "board-smoke: $name not ready after ${READY_TIMEOUT_S}s; log:" >&2; tail -30 "$W/$name.log" >&2; exit 1
    fi
    sleep 0.1
  done
  READY_S=$(python3 -c "print(f'{$(now) - $t0:.2f}')")
}
drop_bundle() { # NAME
  cp demo/fmnist-resnet.bundle "$W/$1/bundles/demo.bundle.part"
  mv "$W/$1/bundles/demo.bundle.part" "$W/$1/bundles/demo.bundle"
}
infer() { # PORT OUT
  curl -sf -X POST "http://127.0.0.1:$1/v2/models/fmnist-resnet/infer" \
    -H 'Content-Type: application/json' -d @"$W/request.json" -o "$2"
}
compare() { # A.json B.json WHAT
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
a, b, what = (json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3])
def logits(r):
    o = [o for o in r["outputs"] if o["name"] == "logits"] or r["outputs"]
    d = o[0]["data"]
    flat = []
    def walk(x):
        if isinstance(x, list):
            for y in x: walk(y)
        else: flat.append(float(x))
    walk(d)
    return o[0]["shape"], flat
sa, la = logits(a); sb, lb = logits(b)
assert sa == sb and len(la) == len(lb) and la, f"shapes differ: {sa} vs {sb}"
diff = max(abs(x - y) for x, y in zip(la, lb))
print(f"board-smoke: {what}: logits {sa}, max abs diff {diff:.3g} (limit 1e-4)")
sys.exit(0 if diff <= 1e-4 else 1)
PY
}

# The request: the first 4 images of the Fashion-MNIST test set, UINT8.
python3 - "$F/t10k-images-idx3-ubyte.gz" > "$W/request.json" <<'PY'
import gzip, json, struct, sys
b = gzip.open(sys.argv[1]).read()
n, h, w = struct.unpack(">III", b[4:16])
k = 4
px = list(b[16:16 + k * h * w])
print(json.dumps({"id": "board-smoke", "inputs": [{"name": "input", "shape": [k, 1, h, w],
                  "datatype": "UINT8", "data": px}]}))
PY

echo "board-smoke: $TARGET: $(file -b "$BIN" | cut -c1-120)"
# 1. x86 reference and the board binary, same bundle, same request.
HP=$(free_port); start host "$HP" "$HOST_BIN"; HPID=$PID; drop_bundle host
wait_ready host "$HP" "$HPID"; echo "board-smoke: x86_64 ready in ${READY_S}s"
infer "$HP" "$W/host.json"
kill -9 "$HPID"; wait "$HPID" 2>/dev/null || true
BP=$(free_port); start board "$BP" "${RUNNER[@]}" "$BIN"; BPID=$PID; drop_bundle board
wait_ready board "$BP" "$BPID"; echo "board-smoke: $TARGET ready in ${READY_S}s (bundle dropped, verified, installed)"
infer "$BP" "$W/board.json"
compare "$W/host.json" "$W/board.json" "$TARGET vs x86_64"

# 2. kill -9 and restart on the same state.
kill -9 "$BPID"; wait "$BPID" 2>/dev/null || true
[ -f "$W/board/state/active.bundle" ] || { echo "board-smoke: no active.bundle in state" >&2; exit 1; }
[ -z "$(ls -A "$W/board/bundles" | grep -v rejected || true)" ] || { echo "board-smoke: bundle folder not emptied" >&2; exit 1; }
start board "$BP" "${RUNNER[@]}" "$BIN"; BPID=$PID
wait_ready board "$BP" "$BPID"; echo "board-smoke: $TARGET after kill -9: ready again in ${READY_S}s (from state)"
infer "$BP" "$W/board2.json"
compare "$W/board.json" "$W/board2.json" "$TARGET after restart vs before"
kill -9 "$BPID"; wait "$BPID" 2>/dev/null || true

# 3. search on 200 images, cache written (SEARCH=0 skips it).
total() { python3 -c "print(f'{$(now) - $T_START:.1f}')"; }
if [ "${SEARCH:-1}" = 0 ]; then echo "board-smoke: $TARGET: PASS (search skipped: SEARCH=0) in $(total) s"; exit 0; fi
SEARCH_DEFAULT="--warmup 1 --runs 3 --check-sample 1 --space merge --max-evals 8 --population 8 --generations 1 --polish 0 --screen-images 200"
[ ${#RUNNER[@]} -gt 0 ] || SEARCH_DEFAULT=""
t0=$(now)
# shellcheck disable=SC2086
"${RUNNER[@]}" "$BIN" --state-dir "$W/search-state" search --bundle demo/fmnist-resnet.bundle \
  --pubkey tests/fixtures/keys/demo.pub \
  --data "idx:$F/t10k-images-idx3-ubyte.gz,$F/t10k-labels-idx1-ubyte.gz[0:200]" \
  --threads 2 --json "$W/search.json" ${SEARCH_ARGS-$SEARCH_DEFAULT} > "$W/search.log" 2>&1 \
  || { echo "board-smoke: search failed:" >&2; tail -30 "$W/search.log" >&2; exit 1; }
SEARCH_S=$(python3 -c "print(f'{$(now) - $t0:.1f}')")
cache=$(ls "$W/search-state/search/"*.json 2>/dev/null | head -1)
[ -n "$cache" ] || { echo "board-smoke: search wrote no cache under $W/search-state/search" >&2; tail -20 "$W/search.log" >&2; exit 1; }
python3 - "$W/search.json" "$SEARCH_S" "$(basename "$cache")" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
c = j.get("chosen") or {}
if isinstance(c, list): c = c[0] if c else {}
print(f"board-smoke: search on 200 images: {sys.argv[2]} s wall, chosen {c.get('subnet', c)!s:.80}, cache {sys.argv[3]}")
PY
echo "board-smoke: $TARGET: PASS in $(total) s"
