#!/usr/bin/env bash
# gemm.sh — nnc's generated matmul vs OpenBLAS cblas_sgemm (Debian libopenblas-dev), f32, in
# GFLOP/s at 1 and 2 threads, on the shapes of the Fashion-MNIST training steps and on 1024^3.
# For each M×K·K×N shape it compiles `x @ W` (batch M of x: [K], W: [K, N]) with nnc
# --emit=obj and links it with bench/gemm_bench.c, which times the model's forward kernel and
# cblas_sgemm side by side. The backward pass's transposed forms run the same micro-kernel
# after packing, so they are timed here in the plain form at their sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
unset OPENBLAS_CORETYPE # the machine pins OpenBLAS to AVX2; let the peer use AVX-512
dpkg-query -W -f='${Status}' libopenblas-dev 2>/dev/null | grep -q "install ok installed" ||
  { [ "$(id -u)" -eq 0 ] && apt-get install -y -qq libopenblas-dev >/dev/null; } ||
  { echo "gemm.sh: needs libopenblas-dev" >&2; exit 1; }
[ -x build/nnc ] || scripts/build.sh build
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "peak: about 447 GFLOP/s f32 for the 2 cores (Zen 5, 2 x 512-bit FMA per core, ~3.5 GHz)"
echo "    M x     K x     N   (MLP: 64x784x256 .. ; its dW: 784x64x256 ..; CNN conv as GEMM per sample)"
while read -r m k n what; do
  cat > "$tmp/mm.nn" <<NN
use std
layer lin(x: [k]) {
    param W: [k, $n] = uniform(-1, 1)
    return x @ W
}
model mm(x: f32[$k]) { return lin(x) }
data d = table { [$(seq -s, 1 "$k" | sed 's/[0-9]*/0/g')] -> [0] }
train mm on d { loss = mean(mm(x)); optimizer = sgd(); batch = $m }
NN
  build/nnc "$tmp/mm.nn" --emit=obj -o "$tmp/mm.o"
  cc -O2 -o "$tmp/bench" bench/gemm_bench.c runtime/pool.c "$tmp/mm.o" -lopenblas -lpthread
  printf '%-22s ' "$what"
  OPENBLAS_NUM_THREADS=2 "$tmp/bench" "$m" "$k" "$n"
done <<'SHAPES'
64 784 256 mlp-fwd1
64 256 128 mlp-fwd2
784 64 256 mlp-dW1
256 64 128 mlp-dW2
64 128 256 mlp-dX2
676 9 32 cnn-conv1
121 288 64 cnn-conv2
288 121 64 cnn-conv2-dW
121 64 288 cnn-conv2-dX
64 1600 64 cnn-dense
1600 64 64 cnn-dense-dW
1024 1024 1024 square-1024
SHAPES
