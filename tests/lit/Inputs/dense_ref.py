#!/usr/bin/env python3
"""dense_ref.py - checks run/dense-dot.nn's predictions against x @ transpose(W) + b in Python.

usage: dense_ref.py INPUTS.csv CHECKPOINT PREDICTIONS.csv K N

Each prediction row is dense(x, N) of an input row's first K values, with W [N, K] and b [N]
read from the checkpoint (f32 safetensors). Prints `TENSOR OK maxdiff=...` or `TENSOR FAIL`.
"""
import sys

from matmul_ref import read_param  # the same f32 safetensors reader


def main():
    inputs, ckpt, preds, K, N = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    W, b = read_param(ckpt, "dense0.W"), read_param(ckpt, "dense0.b")
    xs = [[float(v) for v in line.split(",")[:K]] for line in open(inputs) if line.strip()]
    ps = [[float(v) for v in line.split(",")] for line in open(preds)
          if line.strip() and not line.startswith("out")]  # after the header
    worst = 0.0
    if len(ps) != len(xs) or any(len(p) != N for p in ps):
        print("TENSOR FAIL shape")
        return
    for x, p in zip(xs, ps):
        for j in range(N):
            ref = sum(x[k] * W[j * K + k] for k in range(K)) + b[j]
            worst = max(worst, abs(p[j] - ref) / (1 + abs(ref)))
    print(("TENSOR OK" if worst < 1e-5 else "TENSOR FAIL") + " maxdiff=%.3g" % worst)


main()
