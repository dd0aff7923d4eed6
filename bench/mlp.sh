#!/usr/bin/env bash
# mlp.sh — Fashion-MNIST MLP (784-256-128-10, Adam 1e-3, batch 64), one epoch: nnc's training
# program vs PyTorch 1.13 at its best here (1 and 2 threads, OpenBLAS single-threaded, its
# allocator kept from returning memory to the kernel). Prints samples/s, test accuracy and
# the ratio. Needs dataset-fashion-mnist and python3-torch (Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
unset OPENBLAS_CORETYPE # the machine pins OpenBLAS to AVX2; let the peer use AVX-512
[ -x build/nnc ] || scripts/build.sh build
build/nnc examples/fashion_mlp.nn -o build/fashion_mlp
nnc_out=$(build/fashion_mlp train --epochs 1 2>&1)
nnc_sps=$(echo "$nnc_out" | sed -n 's/.*(\([0-9.]*\) samples\/s.*/\1/p')
nnc_acc=$(echo "$nnc_out" | sed -n 's/.*val_accuracy \([0-9.]*\)%.*/\1/p')
best=0
for t in 1 2; do
  line=$(OPENBLAS_NUM_THREADS=1 \
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824 \
    /usr/bin/python3 bench/torch_mlp.py $t)
  echo "$line"
  sps=$(echo "$line" | sed -n 's/.*samples\/s=\([0-9]*\).*/\1/p')
  if [ "$sps" -gt "$best" ]; then best=$sps; torch_acc=$(echo "$line" | sed -n 's/.*test_acc=\([0-9.]*\).*/\1/p'); fi
done
echo "nnc   samples/s=$nnc_sps test_acc=$nnc_acc"
echo "torch samples/s=$best test_acc=$torch_acc (best of 1, 2 threads)"
awk -v a="$nnc_sps" -v b="$best" 'BEGIN { printf "ratio nnc/torch = %.2fx\n", a / b }'
