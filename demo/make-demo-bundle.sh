#!/usr/bin/env bash
# Rebuilds a committed demo bundle: a fixture oracle elastified on the
# Fashion-MNIST training set (Debian's dataset-fashion-mnist) with its spec,
# seed 0 and 2 threads, signed with the demo key (tests and demos only). The
# same commit, seed and thread count give the same bytes; a later change to
# the training kernels gives slightly different weights (docs/results.md
# names the commit each committed bundle was made with).
#
#   demo/make-demo-bundle.sh [resnet|mobilenetv2]    (default: resnet)
#
#   resnet       tests/fixtures/oracle/fmnist_resnet.onnx + demo/elastify.yaml
#                -> demo/fmnist-resnet.bundle
#   mobilenetv2  tests/fixtures/oracle/fmnist_mobilenetv2.onnx
#                + demo/elastify-mobilenetv2.yaml -> demo/fmnist-mobilenetv2.bundle
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-resnet}" in
  resnet) oracle=fmnist_resnet; spec=demo/elastify.yaml; out=demo/fmnist-resnet.bundle ;;
  mobilenetv2) oracle=fmnist_mobilenetv2; spec=demo/elastify-mobilenetv2.yaml; out=demo/fmnist-mobilenetv2.bundle ;;
  *) echo "make-demo-bundle: unknown model '$1' (resnet or mobilenetv2)" >&2; exit 2 ;;
esac
D=/usr/share/datasets/fashion-mnist
cargo run --release -p adaptivenet-cloud-tools -- elastify "tests/fixtures/oracle/$oracle.onnx" \
  --data "idx:$D/train-images-idx3-ubyte.gz,$D/train-labels-idx1-ubyte.gz" \
  --spec "$spec" --seed 0 --threads 2 \
  --key tests/fixtures/keys/demo.key -o "$out"
