# compare.sh — sourced by mlp.sh and cnn.sh: `compare EXAMPLE TORCH_SCRIPT` trains
# examples/EXAMPLE.nn for one epoch with nnc (default threads: the CPUs available) and runs the
# PyTorch peer at 1 and 2 threads, keeping the faster; ROUNDS times (default 3) in turn, each
# side's best kept, since this shared machine's speed drifts by a third over minutes; the
# peer under the rules for a fair peer: OPENBLAS_CORETYPE unset (AVX-512 kernels), OPENBLAS_NUM_THREADS=1 (OpenBLAS's threads
# and PyTorch's otherwise spin against each other) and glibc's allocator kept from returning
# memory to the kernel. Prints samples/s, test accuracy after the epoch and peak RSS of each,
# and the ratios.
unset OPENBLAS_CORETYPE
export OPENBLAS_NUM_THREADS=1
tunables=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824

# The nnc the benchmarks run: NNC=path/to/nnc times another build's (bench/gemm.sh takes it
# too); build/nnc by default, built first if it is missing.
nnc=${NNC:-build/nnc}
need_nnc() { [ -n "${NNC:-}" ] || [ -x build/nnc ] || scripts/build.sh build; }

# The machine's phase: the round trip of a cache line between CPUs 0 and 1 (bench/pingpong.c;
# about 100 ns on one die, 450 on two, where two threads run a third slower).
dies() {
  [ -x build/pingpong ] || cc -O2 -std=c11 bench/pingpong.c -pthread -o build/pingpong
  build/pingpong
}

compare() {
  local ex=$1 peer=$2 rounds=${ROUNDS:-3}
  need_nnc
  dies
  "$nnc" "examples/$ex.nn" -o "build/$ex"
  local nnc_sps=0 nnc_acc="" nnc_rss="" best=0 torch_acc="" torch_rss="" torch_t=""
  local r t out sps line
  for r in $(seq "$rounds"); do
    out=$(/usr/bin/python3 bench/rss.py "build/$ex" train --epochs 1 2>&1)
    sps=$(echo "$out" | sed -n 's/.*(\([0-9]*\)[0-9.]* samples\/s.*/\1/p')
    echo "nnc   round $r samples/s=$sps"
    if [ "$sps" -gt "$nnc_sps" ]; then
      nnc_sps=$sps
      nnc_acc=$(echo "$out" | sed -n 's/^final: .*accuracy \([0-9.]*\)%.*/\1/p')
      nnc_rss=$(echo "$out" | sed -n 's/^peak_rss_mb=//p')
    fi
    for t in 1 2; do
      line=$(GLIBC_TUNABLES=$tunables /usr/bin/python3 "$peer" "$t")
      echo "torch round $r $line"
      sps=$(echo "$line" | sed -n 's/.*samples\/s=\([0-9]*\).*/\1/p')
      if [ "$sps" -gt "$best" ]; then
        best=$sps torch_t=$t
        torch_acc=$(echo "$line" | sed -n 's/.*test_acc=\([0-9.]*\).*/\1/p')
        torch_rss=$(echo "$line" | sed -n 's/.*peak_rss_mb=\([0-9]*\).*/\1/p')
      fi
    done
  done
  dies
  echo "nnc   samples/s=$nnc_sps test_acc=$nnc_acc peak_rss_mb=$nnc_rss (threads: $(nproc); best of $rounds rounds)"
  echo "torch samples/s=$best test_acc=$torch_acc peak_rss_mb=$torch_rss (best of 1, 2 threads: $torch_t; $rounds rounds)"
  awk -v a="$nnc_sps" -v b="$best" -v r="$nnc_rss" -v s="$torch_rss" \
    'BEGIN { printf "ratio nnc/torch samples/s = %.2fx, peak RSS = %.2f\n", a / b, r / s }'
}
