#!/usr/bin/env bash
# cnn.sh — Fashion-MNIST textbook CNN (examples/fashion_cnn.nn: conv32 3x3, maxpool, conv64
# 3x3, maxpool, dense 64, dense 10; Adam 1e-3, batch 64), one epoch: nnc's training program vs
# PyTorch 1.13 at its best here (bench/compare.sh has the rules). Needs dataset-fashion-mnist
# and python3-torch (Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/compare.sh
compare fashion_cnn bench/torch_cnn.py
