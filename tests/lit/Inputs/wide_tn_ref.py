#!/usr/bin/env python3
"""wide_tn_ref.py - checks run/gemm-wide-tn.nn's prediction against Python.

usage: wide_tn_ref.py CHECKPOINT PREDICTIONS.npy

The model's output is flatten(transpose(A) @ W) for parameters A, W [256, 1100]: a 1100 x 1100
C (4.8 MB, past the GEMM's C_SHARED, so its column blocks are outermost). Checks whole rows
and columns at the edges of its blocks (128-row blocks, 384-column blocks, tiles of 8 x 32).
Prints `WIDE OK maxdiff=...` or `WIDE FAIL ...`.
"""
import struct
import sys

from matmul_ref import read_param  # the same f32 safetensors reader

K, N = 256, 1100


def read_npy(path):
    with open(path, "rb") as f:
        data = f.read()
    (hlen,) = struct.unpack("<H", data[8:10])
    raw = data[10 + hlen :]
    return struct.unpack("<%df" % (len(raw) // 4), raw)


def main():
    A = read_param(sys.argv[1], "probe0.A")
    W = read_param(sys.argv[1], "probe0.W")
    out = read_npy(sys.argv[2])
    if len(out) != N * N:
        print("WIDE FAIL: %d outputs" % len(out))
        return
    edges = sorted({0, 7, 8, 127, 128, 255, 256, 383, 384, 767, 768, 1099})
    cells = {(i, j) for i in edges for j in range(N)} | {(i, j) for i in range(N) for j in edges}
    worst = 0.0
    for i, j in cells:
        ref = sum(A[k * N + i] * W[k * N + j] for k in range(K))
        worst = max(worst, abs(ref - out[i * N + j]) / (1 + abs(ref)))
    print(("WIDE OK" if worst < 1e-4 else "WIDE FAIL") + " maxdiff=%.2e" % worst)


if __name__ == "__main__":
    main()
