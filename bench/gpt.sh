#!/usr/bin/env bash
# gpt.sh — training step time, tokens/s and peak RSS of examples/gpt.nn's GPT in two sizes, nnc
# vs PyTorch 1.13 at its best here (bench/compare.sh has the peer rules; torch_gpt.py is the
# same architecture): the tiny GPT (4 layers, 4 heads, width 128, batch 8, bytes) and a
# GPT-2-small-sized one (12 layers, 12 heads, width 768, batch 4, vocabulary 50257), both with
# context 64. The data is random token ids as .npy (y: x shifted by one), the same for both.
# nnc's step time is the difference between a 1-epoch and an E-epoch run over the same windows
# (so the first, cold step is not counted); PyTorch's is timed after warm-up steps; each at 1
# and 2 threads, the faster kept. Also
# prints nnc's compile time. usage: bench/gpt.sh [tiny|small]... (default: both);
# NNC=path/to/nnc bench/gpt.sh ... times another build's nnc
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/compare.sh
export GLIBC_TUNABLES=$tunables:glibc.malloc.hugetlb=1
need_nnc
dir=build/bench-gpt
mkdir -p "$dir"

# bench NAME VOCAB WIDTH HEADS LAYERS BATCH STEPS_PER_EPOCH EPOCHS (E: (E - 1) * STEPS_PER_EPOCH
# steps are timed, enough that one slow step on a shared machine does not decide the ratio)
bench() {
  local name=$1 vocab=$2 width=$3 heads=$4 layers=$5 batch=$6 steps=$7 epochs=$8
  local n=$((batch * steps)) x=$PWD/$dir/$name-x.npy y=$PWD/$dir/$name-y.npy nn=$dir/$name.nn
  /usr/bin/python3 -c "import numpy as np, sys
r = np.random.default_rng(1).integers(0, $vocab, size=($n, 65), dtype=np.int32)
np.save('$x', r[:, :64]); np.save('$y', r[:, 1:])"
  # examples/gpt.nn with this size, the .npy windows and no validation split
  sed -e "s|text(\"[^\"]*\", context = 64)|npy(\"$x\", \"$y\", targets = 64)|" \
      -e "s|vocab = 256, width = 128, heads = 4, layers = 4|vocab = $vocab, width = $width, heads = $heads, layers = $layers|" \
      -e "s|batch     = 8|batch = $batch|" -e "/validate/d" examples/gpt.nn > "$nn"
  grep -q "npy(" "$nn" && grep -q "vocab = $vocab," "$nn" && grep -q "batch = $batch" "$nn" ||
    { echo "gpt.sh: examples/gpt.nn no longer has the lines this script rewrites" >&2; exit 1; }
  local t0 t1
  t0=$(date +%s.%N)
  "$nnc" "$nn" -o "$dir/$name"
  t1=$(date +%s.%N)
  local secs1 secs_e out rss nnc_ms="" ms nnc_t=""
  for t in 1 2; do # nnc at its best too: on a loaded machine 2 spinning workers can lose
    secs1=$("$dir/$name" train --epochs 1 --threads $t 2>&1 >/dev/null |
            sed -n 's/^trained .* in \([0-9.]*\) s .*/\1/p')
    out=$(/usr/bin/python3 bench/rss.py "$dir/$name" train --epochs $epochs --threads $t 2>&1)
    secs_e=$(echo "$out" | sed -n 's/^trained .* in \([0-9.]*\) s .*/\1/p')
    ms=$(awk -v a="$secs1" -v b="$secs_e" -v s="$(((epochs - 1) * steps))" 'BEGIN { printf "%.1f", (b - a) / s * 1e3 }')
    echo "$name: nnc threads=$t step_ms=$ms"
    if [ -z "$nnc_ms" ] || awk -v a="$ms" -v b="$nnc_ms" 'BEGIN { exit !(a < b) }'; then
      nnc_ms=$ms nnc_t=$t rss=$(echo "$out" | sed -n 's/^peak_rss_mb=//p')
    fi
  done
  local best="" line torch_line=""
  for t in 1 2; do
    line=$(/usr/bin/python3 bench/torch_gpt.py "$t" "$x" "$y" "$vocab" "$width" "$heads" "$layers" \
           "$batch" 3 "$(((epochs - 1) * steps))")
    echo "$name: $line"
    ms=$(echo "$line" | sed -n 's/.*step_ms=\([0-9.]*\).*/\1/p')
    [ -n "$ms" ] || continue
    if [ -z "$best" ] || awk -v a="$ms" -v b="$best" 'BEGIN { exit !(a < b) }'; then
      best=$ms torch_line=$line
    fi
  done
  awk -v n="$name" -v c="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" -v a="$nnc_ms" -v b="$best" -v r="$rss" \
      -v s="$(echo "$torch_line" | sed -n 's/.*peak_rss_mb=\([0-9]*\).*/\1/p')" -v tok="$((batch * 64))" \
      'BEGIN { printf "%s: nnc   step_ms=%.1f tokens/s=%.0f peak_rss_mb=%d compile_s=%.1f (the faster of 1, 2 threads: '"$nnc_t"')\n", n, a, tok / a * 1e3, r, c
               printf "%s: torch step_ms=%.1f tokens/s=%.0f peak_rss_mb=%d (the faster of 1, 2 threads)\n", n, b, tok / b * 1e3, s
               printf "%s: ratio torch/nnc step time = %.2fx, peak RSS nnc/torch = %.2f\n", n, b / a, r / s }'
}

[ $# -gt 0 ] || set -- tiny small
dies
for size in "$@"; do
  case $size in
  tiny) bench tiny 256 128 4 4 8 40 3 ;;
  small) bench small 50257 768 12 12 4 2 6 ;;
  *) echo "usage: bench/gpt.sh [tiny|small]..." >&2; exit 2 ;;
  esac
done
uptime
dies
