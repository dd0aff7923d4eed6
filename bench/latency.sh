#!/usr/bin/env bash
# latency.sh — batch-1 inference latency, Fashion-MNIST MLP and CNN (examples/fashion_mlp.nn,
# examples/fashion_cnn.nn): nnc's embedded forward (`--emit=header --max-batch=1`, timed
# in-process by bench/latency.c, serially or with a second thread through the header's
# set_threads hook) vs PyTorch eager with torch.no_grad (bench/torch_latency.py),
# each the median of many single calls, PyTorch at its best of 1 and 2 threads under
# bench/compare.sh's rules. Prints both medians and the ratio (the issue's target: nnc at most
# 1/5 of PyTorch's latency). Needs python3-torch (Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/compare.sh
iters=${ITERS:-5000}
need_nnc
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dies
for which in mlp cnn; do
  ex=fashion_$which
  "$nnc" "examples/$ex.nn" --emit=header --max-batch=1 -o "$tmp/$ex.h"
  cc -O2 -std=c11 -I"$tmp" -DMODEL_H="\"$ex.h\"" -DPFX="$ex" -DPFXU="${ex^^}" bench/latency.c \
    "$tmp/$ex.o" -lm -pthread -o "$tmp/latency_$which"
  nnc_us="" nnc_t=""
  for t in 1 2; do # nnc at its best too: serial, or with one spinning helper thread
    line=$("$tmp/latency_$which" "$iters" "$t")
    echo "$line"
    us=$(echo "$line" | sed -n 's/.*median_us=\([0-9.]*\).*/\1/p')
    if [ -z "$nnc_us" ] || awk -v a="$us" -v b="$nnc_us" 'BEGIN { exit !(a < b) }'; then
      nnc_us=$us nnc_t=$t
    fi
  done
  best="" best_t=""
  for t in 1 2; do
    line=$(GLIBC_TUNABLES=$tunables /usr/bin/python3 bench/torch_latency.py "$t" "$which" "$iters")
    echo "$line"
    us=$(echo "$line" | sed -n 's/.*median_us=\([0-9.]*\).*/\1/p')
    if [ -z "$best" ] || awk -v a="$us" -v b="$best" 'BEGIN { exit !(a < b) }'; then
      best=$us best_t=$t
    fi
  done
  echo "$which: nnc median ${nnc_us} us ($nnc_t threads), torch median ${best} us ($best_t threads; each the best of 1 and 2)"
  awk -v a="$nnc_us" -v b="$best" -v w="$which" \
    'BEGIN { printf "ratio %s torch/nnc latency = %.2fx (nnc takes %.3f of torch'"'"'s time)\n", w, b / a, a / b }'
done
dies
