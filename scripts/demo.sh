#!/usr/bin/env bash
# demo.sh — the README's main command: set up, build nnc, compile examples/xor.nn into a
# native training program and train it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh build
build/nnc examples/xor.nn -o build/xor
build/xor train
