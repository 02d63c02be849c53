#!/usr/bin/env bash
# Rebuilds demo/fmnist-resnet.bundle exactly as committed: the fixture oracle
# elastified on the Fashion-MNIST training set (Debian's dataset-fashion-mnist)
# with demo/elastify.yaml, signed with the demo key (tests and demos only).
set -euo pipefail
cd "$(dirname "$0")/.."
D=/usr/share/datasets/fashion-mnist
cargo run --release -p adaptivenet-cloud-tools -- elastify tests/fixtures/oracle/fmnist_resnet.onnx \
  --data "idx:$D/train-images-idx3-ubyte.gz,$D/train-labels-idx1-ubyte.gz" \
  --spec demo/elastify.yaml --seed 0 --threads 2 \
  --key tests/fixtures/keys/demo.key -o demo/fmnist-resnet.bundle
