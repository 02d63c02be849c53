#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian machine (as root,
# or with sudo available): the Fashion-MNIST data set, the minisign tool (to
# check interoperability of signatures), systemd (systemd-analyze, for the
# unit file check; sysinfo and nix are plain crates and need nothing), and onnxruntime/onnx/numpy for the
# reference checks, and the Mender client, SWUpdate and mender-artifact for
# the OTA tests. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
need_apt=()
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
command -v minisign >/dev/null || need_apt+=(minisign)
# systemd-analyze: the daemon tests verify systemd/adaptived.service with it.
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# timeout (coreutils): the adaptation tests bound their CPU hogs with it.
command -v timeout >/dev/null || need_apt+=(coreutils)
# The OTA tests (daemon/tests/ota_mender.rs) drive the real Mender client and
# SWUpdate through our update module and handler; mender-artifact wraps bundles.
command -v mender-artifact >/dev/null || need_apt+=(mender-artifact)
command -v mender >/dev/null || need_apt+=(mender-client)
command -v swupdate >/dev/null || need_apt+=(swupdate)
command -v cpio >/dev/null || need_apt+=(cpio)
command -v openssl >/dev/null || need_apt+=(openssl)
# promtool (Debian's prometheus package): the metrics test runs
# `promtool check metrics` on a live daemon.
command -v promtool >/dev/null || need_apt+=(prometheus)
# protoc: the gRPC interface test regenerates daemon/src/grpc/pb.rs to check
# it is current (builds need no protoc: the generated file is committed).
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
# Headless Chromium: the status page test renders `/` and checks a screenshot.
command -v chromium >/dev/null || need_apt+=(chromium)
# python3-yaml: the sharded-elastify test parses deploy/k8s/*.yaml with it.
python3 -c "import yaml" 2>/dev/null || need_apt+=(python3-yaml)
# python3-torch, python3-onnx: bench-train's PyTorch side (Debian's
# /usr/bin/python3 rebuilds the branch from the ONNX file and trains it).
/usr/bin/python3 -c "import torch" 2>/dev/null || need_apt+=(python3-torch)
/usr/bin/python3 -c "import onnx" 2>/dev/null || need_apt+=(python3-onnx)
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! python3 -c "import onnxruntime, onnx, numpy" 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check onnxruntime onnx numpy
fi
# The Mender client looks for update modules only in its modules folder, and
# installs nothing without an artifact_info file: the OTA tests need both.
if command -v mender >/dev/null; then
  $SUDO install -D -m 0755 ota/mender/adaptivenet-bundle /usr/share/mender/modules/v3/adaptivenet-bundle
  [ -f /etc/mender/artifact_info ] || echo "artifact_name=adaptivenet-tests" | $SUDO tee /etc/mender/artifact_info >/dev/null
fi
# The stock Triton HTTP and gRPC clients: daemon/tests/kserve.rs drives a
# real daemon with them (tests/scripts/triton_client.py, triton_grpc_client.py).
if ! python3 -c "import tritonclient.http, tritonclient.grpc" 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check 'tritonclient[http,grpc]'
fi
echo "install-deps: ok"
