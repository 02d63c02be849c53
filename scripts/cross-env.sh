# Sourced by scripts/cross-build.sh and scripts/cross-test.sh: which rustup
# target a board build really uses.
#
# board_target TARGET WHO: prints the rustup target to build for TARGET,
# adding it with rustup if needed. armv7-unknown-linux-musleabihf falls back
# to armv7-unknown-linux-gnueabihf (linked statically against glibc with
# crt-static, .cargo/config.toml) when rustup has no rust-std for it here;
# the fallback is said on stderr, prefixed with WHO. Fails (non-zero) when
# no usable target can be added.
board_target() {
  local t="$1" who="$2"
  if rustup target list --installed | grep -qx "$t" || rustup target add "$t" >/dev/null 2>&1; then
    echo "$t"
    return
  fi
  if [ "$t" != armv7-unknown-linux-musleabihf ]; then
    echo "$who: rustup target add $t failed" >&2
    return 1
  fi
  echo "$who: rustup has no rust-std for $t here; using armv7-unknown-linux-gnueabihf (static glibc) instead" >&2
  t=armv7-unknown-linux-gnueabihf
  rustup target list --installed | grep -qx "$t" || rustup target add "$t" >&2 || return 1
  echo "$t"
}
