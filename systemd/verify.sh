#!/usr/bin/env bash
# Checks systemd/adaptived.service with `systemd-analyze verify` and prints
# `systemd-analyze security --offline=true` for it. The unit names
# /usr/bin/adaptived, so both run against a scratch root holding the
# system's unit set, the built binary and the unit (nothing is installed on
# this machine). Usage: systemd/verify.sh [path/to/adaptived]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../target/debug/adaptived}
command -v systemd-analyze >/dev/null || { echo "systemd-analyze is missing (apt-get install systemd)" >&2; exit 2; }
[ -x "$bin" ] || { echo "$bin: not built (cargo build -p adaptivenet-daemon)" >&2; exit 2; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/bin" "$root/etc/systemd/system" "$root/usr/lib/sysusers.d" "$root/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp "$bin" "$root/usr/bin/adaptived"
cp /bin/kill "$root/bin/kill"
cp "$here/adaptived.service" "$root/etc/systemd/system/"
cp "$here/adaptivenet.conf" "$root/usr/lib/sysusers.d/"
echo "== systemd-analyze verify adaptived.service"
out=$(systemd-analyze verify --root="$root" adaptived.service 2>&1) || { echo "$out"; exit 1; }
# verify prints warnings without failing: treat any output as a failure.
if [ -n "$out" ]; then echo "$out"; exit 1; fi
echo "ok"
echo "== systemd-analyze security --offline=true adaptived.service"
systemd-analyze security --offline=true --root="$root" adaptived.service 2>&1 || true
