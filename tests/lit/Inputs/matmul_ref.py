#!/usr/bin/env python3
"""matmul_ref.py - checks run/matmul-ref.nn's predictions against matrix products in Python.

usage: matmul_ref.py INPUTS.csv CHECKPOINT PREDICTIONS.csv

The model (per sample x: [2, 9, 260], a = x[0], b = x[1]) outputs flatten(a @ bT) (81 values,
a batch of per-sample matrices) then flatten(a @ P) (4680 values: with P a [260, 520] parameter
shared by the batch, one tall matrix of batch*9 rows). The sizes straddle the generated GEMM's
blocks: K = 260 > 256 (two K blocks), 520 > 512 columns, 16*9 = 144 > 128 rows, and no size is
a multiple of the register tile. Every a @ bT value is checked; of a @ P, whole rows and
columns at the block and tile edges. Prints `TENSOR OK maxdiff=...` or `TENSOR FAIL ...`.
"""
import json
import struct
import sys

M, K, N = 9, 260, 520


def read_param(path, name):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    info = json.loads(data[8 : 8 + n])[name]
    lo, hi = info["data_offsets"]
    raw = data[8 + n + lo : 8 + n + hi]
    return list(struct.unpack("<%df" % (len(raw) // 4), raw))


def main():
    xs = [[float(v) for v in line.split(",")] for line in open(sys.argv[1]).read().split()]
    P = read_param(sys.argv[2], "probe0.P")  # [K, N] row-major
    preds = [[float(v) for v in line.split(",")] for line in open(sys.argv[3]).read().split()[1:]]
    worst, checked = 0.0, 0
    rows = len(xs) * M  # of the tall a @ P
    edge_rows = {0, 7, 8, 127, 128, rows - 1}
    edge_cols = {0, 31, 32, 511, 512, N - 1}
    for s, (x, p) in enumerate(zip(xs, preds)):
        a = [x[i * K : (i + 1) * K] for i in range(M)]
        b = [x[M * K + i * K : M * K + (i + 1) * K] for i in range(M)]
        for i in range(M):
            for j in range(M):  # (a @ bT)[i, j]
                ref = sum(a[i][k] * b[j][k] for k in range(K))
                worst = max(worst, abs(ref - p[i * M + j]) / (1 + abs(ref)))
                checked += 1
        for i in range(M):
            r = s * M + i
            cols = range(N) if r in edge_rows else sorted(edge_cols)
            for j in cols:
                ref = sum(a[i][k] * P[k * N + j] for k in range(K))
                worst = max(worst, abs(ref - p[M * M + i * N + j]) / (1 + abs(ref)))
                checked += 1
    if worst > 1e-5 or checked == 0:
        print("TENSOR FAIL maxdiff=%.3g over %d values" % (worst, checked))
        sys.exit(1)
    print("TENSOR OK maxdiff=%.3g over %d values" % (worst, checked))


if __name__ == "__main__":
    main()
