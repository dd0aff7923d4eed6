#!/usr/bin/env bash
# gemm.sh — nnc's generated matmul vs OpenBLAS cblas_sgemm (Debian libopenblas-dev), f32, in
# GFLOP/s at 1 and 2 threads, in the forms the training steps use: nt (A·Bᵀ: a dense layer's
# forward x @ transpose(W), W being [units, n]; attention's q·kᵀ, the tied head), nn (C = A·B:
# a dense layer's data gradient dY·W, a convolution as im2col), tn (Aᵀ·B: the weight
# gradients dYᵀ·X) and a batch of them (attention's heads). For each form and M×K·K×N shape it compiles a model whose forward
# is that matmul with nnc --emit=obj and links it with bench/gemm_bench.c, which times the
# model's forward kernel and cblas_sgemm side by side (the best of 5 rounds; 1 thread in
# thread CPU time, 2 threads in wall time). The tn model multiplies two parameters,
# transpose(A) @ W, which is one GEMM with A read transposed (as the weight gradients'
# dYᵀ·X are); it used to slice A and B out of one input, and the slices' copies (as long as
# the multiply itself for the CNN's dense layer) were timed with it.
#   usage: bench/gemm.sh [mlp|gpt]...  (default: mlp, the MLP and CNN training shapes and
#   1024³; gpt: GPT-2-small's, batch 4 × context 64 = 256 rows, width 768, vocabulary 50257)
#   NNC=path/to/nnc bench/gemm.sh ...  times another build's nnc (default build/nnc)
set -euo pipefail
cd "$(dirname "$0")/.."
unset OPENBLAS_CORETYPE # the machine pins OpenBLAS to AVX2; let the peer use AVX-512
dpkg-query -W -f='${Status}' libopenblas-dev 2>/dev/null | grep -q "install ok installed" ||
  { [ "$(id -u)" -eq 0 ] && apt-get install -y -qq libopenblas-dev >/dev/null; } ||
  { echo "gemm.sh: needs libopenblas-dev" >&2; exit 1; }
nnc=${NNC:-build/nnc}
[ -n "${NNC:-}" ] || [ -x build/nnc ] || scripts/build.sh build
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# model FORM M K N G: the .nn whose forward is the matmul (data: never read by --emit=obj)
model() {
  local form=$1 m=$2 k=$3 n=$4 g=$5 x body param="" batch=1
  if [ "$g" -gt 1 ]; then # a batch of square products of one input with itself
    [ "$m" -eq "$k" ] && [ "$k" -eq "$n" ] || { echo "gemm.sh: batched shapes are square" >&2; exit 2; }
    x="$g, $m, $m"
    case $form in nn) body="x @ x" ;; nt) body="x @ transpose(x)" ;; tn) body="transpose(x) @ x" ;; esac
  else
    case $form in
    nn) x=$k param="param W: [$k, $n] = uniform(-1, 1)" body="x @ W" batch=$m ;;
    nt) x=$k param="param W: [$n, $k] = uniform(-1, 1)" body="x @ transpose(W)" batch=$m ;;
    tn) x=1 param="param A: [$k, $m] = uniform(-1, 1)
    param W: [$k, $n] = uniform(-1, 1)" body="transpose(A) @ W" ;;
    esac
  fi
  cat <<NN
use std
model mm(x: f32[$x]) {
    $param
    return $body
}
data d = npy("unused-x.npy", "unused-y.npy")
train mm on d { loss = mean(mm(x)); optimizer = sgd(); batch = $batch }
NN
}

[ $# -gt 0 ] || set -- mlp
echo "peak: about 447 GFLOP/s f32 for the 2 cores (Zen 5, 2 x 512-bit FMA per core, ~3.5 GHz)"
for set in "$@"; do
  case $set in
  mlp) echo "form    M x     K x     N x G   (MLP: 64x784x256 ..; CNN conv as GEMM per sample)" ;;
  gpt) echo "form    M x     K x     N x G   (GPT-2-small: 256 rows, width 768, vocabulary 50257)" ;;
  *) echo "usage: bench/gemm.sh [mlp|gpt]..." >&2; exit 2 ;;
  esac
  while read -r form m k n g what; do
    [ "$form" = "$set" ] && continue # the set's own tag line
    model "$form" "$m" "$k" "$n" "$g" > "$tmp/mm.nn"
    "$nnc" "$tmp/mm.nn" --emit=obj -o "$tmp/mm.o"
    cc -O2 -o "$tmp/bench" bench/gemm_bench.c runtime/pool.c "$tmp/mm.o" -lopenblas -lpthread
    printf '%-18s ' "$what"
    OPENBLAS_NUM_THREADS=2 "$tmp/bench" "$form" "$m" "$k" "$n" "$g"
  done < <(sed -n "/^$set\$/,/^\$/p" <<'SHAPES' | sed '/^$/d'
mlp
nt 64 784 256 1 mlp-fwd1
nt 64 256 128 1 mlp-fwd2
tn 256 64 784 1 mlp-dW1
tn 128 64 256 1 mlp-dW2
nn 64 128 256 1 mlp-dX2
nt 64 128 10 1 mlp-fwd3
nn 64 10 128 1 mlp-dX3
tn 10 64 128 1 mlp-dW3
nn 576 9 32 1 cnn-conv1
nn 100 288 64 1 cnn-conv2
tn 288 100 64 1 cnn-conv2-dW
nt 100 64 288 1 cnn-conv2-dX
nt 64 1600 64 1 cnn-dense
tn 64 64 1600 1 cnn-dense-dW
nn 1024 1024 1024 1 square-1024

gpt
nt 256 768 768 1 qkv/proj
nt 256 768 3072 1 mlp-up
nt 256 3072 768 1 mlp-down
nt 256 768 50257 1 head
nn 256 50257 768 1 head-dX
tn 50257 256 768 1 head-dW
nn 256 768 768 1 proj-dX
nn 256 768 3072 1 mlp-down-dX
nn 256 3072 768 1 mlp-up-dX
tn 768 256 768 1 proj-dW
tn 3072 256 768 1 mlp-up-dW
tn 768 256 3072 1 mlp-down-dW
nn 64 64 64 48 attn-pv
nt 64 64 64 48 attn-qk
tn 64 64 64 48 attn-dv

SHAPES
)
done
