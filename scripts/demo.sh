#!/usr/bin/env bash
# demo.sh — the README's main command: set up (Debian's dataset-fashion-mnist among the rest),
# build nnc, compile examples/fashion_cnn.nn (the textbook CNN) into a native training program
# and train it on Fashion-MNIST, validating on the 10,000 test images after every epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh build
build/nnc examples/fashion_cnn.nn -o build/fashion_cnn
build/fashion_cnn train "$@"
