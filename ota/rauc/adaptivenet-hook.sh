#!/bin/sh
# RAUC install hook for adaptivenet bundles (example). In the RAUC bundle's
# manifest.raucm:
#
#   [hooks]
#   filename=adaptivenet-hook.sh
#
#   [image.adaptivenet]
#   filename=fmnist-resnet.bundle
#   hooks=install
#
# and in the device's /etc/rauc/system.conf a slot of class `adaptivenet`
# (RAUC needs one to match the image; the hook replaces RAUC's own install):
#
#   [slot.adaptivenet.0]
#   device=/var/lib/adaptivenet/rauc-slot
#   type=raw
#
# RAUC calls `adaptivenet-hook.sh slot-install` with RAUC_IMAGE_NAME set to
# the image inside the mounted bundle; adaptivenet-install drops it into
# adaptived's folder, waits until it serves (exit 0) or is rejected (exit 1,
# the daemon's reason on stderr, the previous bundle still serving).
set -eu
case "${1:-}" in
    slot-install)
        exec /usr/libexec/adaptivenet/adaptivenet-install "$RAUC_IMAGE_NAME"
        ;;
    *)
        exit 0
        ;;
esac
