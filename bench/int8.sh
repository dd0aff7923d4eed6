#!/usr/bin/env bash
# int8.sh — the Fashion-MNIST CNN embedded as f32 and as int8 (--quantize=int8): object sizes
# and forward time at batch 1 and 64, both in one program (bench/int8_bench.c), so the ratio
# holds on a loaded machine. Trains 1 epoch unless given a checkpoint: bench/int8.sh [CKPT].
# Needs dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
nnc=build/nnc
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
ckpt=${1:-}
if [ -z "$ckpt" ]; then
  "$nnc" examples/fashion_cnn.nn -o "$dir/cnn"
  "$dir/cnn" train --epochs 1 --save "$dir/cnn.safetensors" --quiet
  ckpt=$dir/cnn.safetensors
fi
"$nnc" examples/fashion_cnn.nn --emit=header --weights "$ckpt" --name=f32m -o "$dir/f32m.h"
"$nnc" examples/fashion_cnn.nn --emit=header --weights "$ckpt" --name=i8m --quantize=int8 \
  --calibrate train -o "$dir/i8m.h"
cc -O2 -std=c11 -Wall -Wextra -Werror -I"$dir" bench/int8_bench.c "$dir/f32m.o" "$dir/i8m.o" \
  -lm -pthread -o "$dir/bench"
echo "object bytes: f32 $(stat -c %s "$dir/f32m.o"), int8 $(stat -c %s "$dir/i8m.o")"
echo "vpdpbusd instructions in the int8 object: $(objdump -d "$dir/i8m.o" | grep -c vpdpbusd || true)"
uptime
"$dir/bench"
