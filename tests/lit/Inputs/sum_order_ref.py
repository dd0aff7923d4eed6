#!/usr/bin/env python3
"""sum_order_ref.py - run/sum-order.nn's outputs against f32 sums added in row-major order.

usage: sum_order_ref.py INPUTS.csv PREDICTIONS.csv

Each output is the sum over i < 20, j < 10 of (x[i] + 1), i outer and j inner, every addition
rounded to f32 as nnc's loop does; the inputs mix magnitudes so that another order gives
other bits. Prints `ORDER OK` or `ORDER FAIL` with the first difference.
"""
import struct
import sys


def f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


def main():
    xs = [[float(v) for v in line.split(",")][:20] for line in open(sys.argv[1]).read().split()]
    preds = [float(line.split(",")[0]) for line in open(sys.argv[2]).read().split()[1:]]
    for n, (x, p) in enumerate(zip(xs, preds)):
        acc = f32(0.0)
        for i in range(20):
            term = f32(f32(x[i]) + f32(1.0))
            for _ in range(10):
                acc = f32(acc + term)
        if acc != p:
            print("ORDER FAIL: sample %d: %r, expected %r" % (n, p, acc))
            return
    print("ORDER OK" if len(preds) == len(xs) else "ORDER FAIL: %d outputs" % len(preds))


if __name__ == "__main__":
    main()
