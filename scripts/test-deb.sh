#!/usr/bin/env bash
# Test of the Debian package: builds the amd64 .deb (scripts/build-deb.sh),
# checks its contents and control files, installs it into a scratch root with
# `dpkg --root` (maintainer scripts run chrootless with DPKG_ROOT set, so they
# touch only the scratch root), checks the user, the folders and the enabled
# unit, runs `adaptived check-config` from the scratch root, then purges it.
#
#   scripts/test-deb.sh [DEB]      (default: build the amd64 package)
#
# A foreign package (arm64, armhf) is installed with --force-architecture and
# its binary run with `qemu-aarch64 -L ROOT` / `qemu-arm -L ROOT` (qemu-user
# looks up absolute paths under ROOT first: an emulated chroot).
# Needs root (dpkg --root owner changes, chroot).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
deb="${1:-}"
[ -n "$deb" ] || deb=$(scripts/build-deb.sh amd64 | tail -1)
echo "test-deb: $deb ($(stat -c %s "$deb") bytes)"
fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }

S=$(mktemp -d /tmp/deb-root.XXXXXX)
trap 'rm -rf "$S"' EXIT
dpkg-deb -c "$deb" | tee "$S.contents" | awk '{print "  " $1, $3, $6, $7, $8}'
for p in ./usr/bin/adaptived ./usr/lib/systemd/system/adaptived.service \
         ./usr/lib/sysusers.d/adaptivenet.conf ./etc/adaptivenet/config.yaml; do
  grep -q " $p\$" "$S.contents" || fail "$p not in the package"
done
grep -q '^-rwxr-xr-x .* ./usr/bin/adaptived$' "$S.contents" || fail "adaptived is not mode 755"
rm -f "$S.contents"
mkdir "$S/ctrl"; dpkg-deb -e "$deb" "$S/ctrl"
echo "test-deb: control:"; sed 's/^/  /' "$S/ctrl/control"
grep -qx /etc/adaptivenet/config.yaml "$S/ctrl/conffiles" || fail "config.yaml is not a conffile"
for s in postinst prerm postrm; do [ -x "$S/ctrl/$s" ] || fail "no $s"; done
rm -rf "$S/ctrl"

# The scratch root: an empty dpkg database.
mkdir -p "$S/root/var/lib/dpkg/updates" "$S/root/var/lib/dpkg/info" "$S/root/etc"
touch "$S/root/var/lib/dpkg/status"
R="$S/root"
arch=$(dpkg-deb -f "$deb" Architecture)
force=(--force-not-root --force-script-chrootless)
case "$arch" in
  "$(dpkg --print-architecture)") in_root() { chroot "$R" "$@"; } ;;
  arm64) force+=(--force-architecture); in_root() { qemu-aarch64 -L "$R" "$R$1" "${@:2}"; } ;;
  armhf) force+=(--force-architecture); in_root() { qemu-arm -L "$R" "$R$1" "${@:2}"; } ;;
  *) fail "no way to run a $arch binary here" ;;
esac
# --force-depends: the scratch root has no libc6 package in its database.
dpkg --root="$R" --log=/dev/null "${force[@]}" --force-depends -i "$deb"
dpkg --root="$R" -s adaptived | grep -q '^Status: install ok installed' || fail "not installed"
grep -q '^adaptivenet:' "$R/etc/passwd" || fail "postinst created no adaptivenet user"
uid=$(awk -F: '$1 == "adaptivenet" { print $3 }' "$R/etc/passwd")
for d in /var/lib/adaptivenet/bundles /var/lib/adaptivenet/state; do
  [ -d "$R$d" ] || fail "$d missing"
  [ "$(stat -c %u:%a "$R$d")" = "$uid:750" ] || fail "$d: owner:mode $(stat -c %u:%a "$R$d"), want $uid:750"
done
[ -L "$R/etc/systemd/system/multi-user.target.wants/adaptived.service" ] || fail "unit not enabled"
echo "test-deb: installed into $R: user adaptivenet (uid $uid), /var/lib/adaptivenet/{bundles,state} 0750, unit enabled"

# check-config from the scratch root. The shipped config names
# trusted_keys /etc/adaptivenet/keys/release.pub, which the package does
# not ship (the operator installs the release key): without it the check
# must fail naming the key; with a key it must pass.
bin="$R/usr/bin/adaptived"
if [ "$arch" = "$(dpkg --print-architecture)" ] && file -b "$bin" | grep -q 'dynamically linked'; then
  # What libc6 would provide in a real root: the loader and the libraries.
  for l in $(ldd "$bin" | grep -o '/[^ ]*'); do mkdir -p "$R$(dirname "$l")"; cp -L "$l" "$R$l"; done
fi
echo "test-deb: $(file -b "$bin" | cut -d, -f1-2,4)"
if in_root /usr/bin/adaptived check-config > "$S/out" 2>&1; then
  echo "test-deb: check-config without the release key passed:"; cat "$S/out"
else
  echo "test-deb: check-config without the release key fails as expected: $(tail -1 "$S/out")"
  grep -q 'release.pub' "$S/out" || fail "the error does not name the missing key"
fi
cp tests/fixtures/keys/demo.pub "$R/etc/adaptivenet/keys/release.pub"
in_root /usr/bin/adaptived check-config > "$S/out" 2>&1 || { cat "$S/out"; fail "check-config with a key"; }
echo "test-deb: $arch: /usr/bin/adaptived check-config in $R (default /etc/adaptivenet/config.yaml, key installed): ok, $(grep -c . "$S/out") lines of effective config"
grep -q '^state_dir: /var/lib/adaptivenet/state' "$S/out" || fail "unexpected effective config"

dpkg --root="$R" --log=/dev/null "${force[@]}" --purge adaptived
[ ! -e "$R/usr/bin/adaptived" ] || fail "binary left after purge"
[ ! -e "$R/etc/systemd/system/multi-user.target.wants/adaptived.service" ] || fail "unit still enabled after purge"
echo "test-deb: purge removed the files and disabled the unit"
echo "test-deb: PASS"
