#!/bin/sh
# Wrap a signed adaptivenet bundle as a Mender artifact for the
# adaptivenet-bundle Update Module (ota/mender/adaptivenet-bundle).
#
#   ota/mender/make-artifact.sh -t DEVICE_TYPE [-t ...] [-n ARTIFACT_NAME]
#                               [-o OUT.mender] [-k SIGNING_KEY.pem] BUNDLE
#
# The artifact carries the bundle unchanged (the daemon checks its minisign
# signature on the device; -k adds Mender's own artifact signature) and
# provides `adaptivenet.<model>.version = <bundle version>`, so the fleet's
# inventory shows the bundle version each device installed.
# Needs mender-artifact (Debian: apt-get install mender-artifact), tar, sed.
set -eu
usage() { echo "usage: $0 -t DEVICE_TYPE [-t ...] [-n NAME] [-o OUT] [-k KEY] BUNDLE" >&2; exit 2; }
types=
name=
out=
key=
while getopts 't:n:o:k:h' opt; do
    case $opt in
        t) types="$types -t $OPTARG" ;;
        n) name=$OPTARG ;;
        o) out=$OPTARG ;;
        k) key=$OPTARG ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || usage
[ -n "$types" ] || usage
bundle=$1
[ -f "$bundle" ] || { echo "$bundle: no such file" >&2; exit 1; }
command -v mender-artifact >/dev/null 2>&1 ||
    { echo "mender-artifact is missing (Debian/Ubuntu: apt-get install mender-artifact)" >&2; exit 1; }
field() {
    tar -xOf "$bundle" manifest.yaml 2>/dev/null | sed -n '/^model:/,/^[^[:space:]]/p' |
        sed -n "s/^[[:space:]][[:space:]]*$1:[[:space:]]*\\([^#[:space:]]*\\).*/\\1/p" | head -n 1
}
model=$(field name)
version=$(field version)
[ -n "$model" ] && [ -n "$version" ] ||
    { echo "$bundle: no model name/version in manifest.yaml (not an adaptivenet bundle?)" >&2; exit 1; }
sha=$(sha256sum "$bundle" | cut -d ' ' -f 1)
name=${name:-adaptivenet-$model-v$version}
out=${out:-$name.mender}
meta=$(mktemp)
trap 'rm -f "$meta"' EXIT
printf '{"model": "%s", "version": %s, "sha256": "%s"}\n' "$model" "$version" "$sha" >"$meta"
# shellcheck disable=SC2086
mender-artifact write module-image \
    -T adaptivenet-bundle \
    -n "$name" \
    $types \
    -f "$bundle" \
    -m "$meta" \
    --software-filesystem adaptivenet \
    --software-name "$model" \
    --software-version "$version" \
    ${key:+-k "$key"} \
    -o "$out"
echo "$out: $model v$version (bundle sha256 $sha) for the adaptivenet-bundle module"
