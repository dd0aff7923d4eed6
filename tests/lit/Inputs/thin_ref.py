#!/usr/bin/env python3
"""thin_ref.py - checks run/gemm-thin.nn's predictions against matrix products in Python.

usage: thin_ref.py INPUTS.csv CHECKPOINT PREDICTIONS.csv

The model (per sample x: [300]) outputs x @ transpose(A), x @ transpose(B), x @ transpose(C)
x @ transpose(D) and x @ transpose(E) for parameters A [10, 300], B [20, 300], C [40, 300],
D [3, 300], E [6, 300], concatenated (79 values). Prints `THIN OK maxdiff=...` or
`THIN FAIL ...`.
"""
import sys

from matmul_ref import read_param  # the same f32 safetensors reader

K = 300
SIZES = (("probe0.A", 10), ("probe0.B", 20), ("probe0.C", 40), ("probe0.D", 3), ("probe0.E", 6))


def main():
    xs = [[float(v) for v in line.split(",")][:K] for line in open(sys.argv[1]).read().split()]
    ws = [(read_param(sys.argv[2], name), n) for name, n in SIZES]
    preds = [[float(v) for v in line.split(",")] for line in open(sys.argv[3]).read().split()[1:]]
    worst = 0.0
    for x, p in zip(xs, preds):
        ref = [sum(x[k] * w[j * K + k] for k in range(K)) for w, n in ws for j in range(n)]
        if len(p) != len(ref):
            print("THIN FAIL: %d outputs, expected %d" % (len(p), len(ref)))
            return
        worst = max([worst] + [abs(r - q) / (1 + abs(r)) for r, q in zip(ref, p)])
    print(("THIN OK" if worst < 1e-4 and len(preds) == len(xs) else "THIN FAIL") +
          " maxdiff=%.2e" % worst)


if __name__ == "__main__":
    main()
