#!/usr/bin/env python3
"""csv_close.py - two CSV files the same but for the last bits of their numbers.

usage: csv_close.py A.csv B.csv

Every cell equal as text, or both numbers within 1e-5 (relative, against 1 + |a|): the
embedded model's outputs one sample at a time against the training binary's `predict`, whose
dense layers sum in another order on a batch of more than 4 rows (nn.gemm.dot). Prints
`CSV CLOSE maxdiff=...`, or `CSV DIFFERENT` and the first cell that differs.
"""
import sys


def main():
    a = [line.rstrip("\n").split(",") for line in open(sys.argv[1])]
    b = [line.rstrip("\n").split(",") for line in open(sys.argv[2])]
    worst = 0.0
    if len(a) != len(b):
        print("CSV DIFFERENT: %d lines against %d" % (len(a), len(b)))
        return
    for r, (x, y) in enumerate(zip(a, b)):
        if len(x) != len(y):
            print("CSV DIFFERENT: line %d has %d cells against %d" % (r + 1, len(x), len(y)))
            return
        for c, (u, v) in enumerate(zip(x, y)):
            if u == v:
                continue
            try:
                d = abs(float(u) - float(v)) / (1 + abs(float(u)))
            except ValueError:
                d = float("inf")
            if d > 1e-5:
                print("CSV DIFFERENT: line %d, cell %d: %s against %s" % (r + 1, c + 1, u, v))
                return
            worst = max(worst, d)
    print("CSV CLOSE maxdiff=%.3g" % worst)


main()
