#!/usr/bin/env bash
# mlp.sh — Fashion-MNIST MLP (784-256-128-10, Adam 1e-3, batch 64), one epoch: nnc's training
# program vs PyTorch 1.13 at its best here (bench/compare.sh has the rules). Needs
# dataset-fashion-mnist and python3-torch (Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/compare.sh
compare fashion_mlp bench/torch_mlp.py
