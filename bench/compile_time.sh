#!/usr/bin/env bash
# compile_time.sh — wall-clock seconds nnc takes to compile (source to linked executable, -O2)
# every example, and examples/char_lstm.nn (a 256-unit LSTM) with its scan cut to 25, 50
# and 100 steps, to show how the time grows with the sequence length.
#   bench/compile_time.sh [OTHER_NNC]
# With OTHER_NNC (another build of nnc, e.g. main's), each file is compiled by both, one
# right after the other, and the ratio other/this is printed: on a shared machine only
# ratios taken in the same run mean much.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/nnc ] || scripts/build.sh build
other=${1:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

seconds() { # NNC FILE: the compile's wall-clock seconds
  local t0 t1
  t0=$(date +%s.%N)
  "$1" "$2" -o "$tmp/exe" > /dev/null
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
}

files=(examples/*.nn)
for steps in 25 50 100; do
  sed -e "s/context = 100/context = $steps/" -e "s/f32\[100\]/f32[$steps]/" \
    examples/char_lstm.nn > "$tmp/char_lstm_$steps.nn"
  files+=("$tmp/char_lstm_$steps.nn")
done
echo "load: $(uptime)"
if [ -n "$other" ]; then
  printf '%-28s %8s %8s %8s\n' file "nnc s" "other s" ratio
else
  printf '%-28s %8s\n' file "nnc s"
fi
for f in "${files[@]}"; do
  name=$(basename "$f")
  this=$(seconds build/nnc "$f")
  if [ -n "$other" ]; then
    that=$(seconds "$other" "$f")
    printf '%-28s %8s %8s %7.1fx\n' "$name" "$this" "$that" "$(awk -v a="$that" -v b="$this" 'BEGIN { print a / b }')"
  else
    printf '%-28s %8s\n' "$name" "$this"
  fi
done
