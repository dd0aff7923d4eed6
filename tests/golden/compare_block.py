#!/usr/bin/env python3
"""compare_block.py — compares one Transformer block in nnc with PyTorch (make_golden.py).

usage: compare_block.py GOLDEN PREDICT.csv INIT.safetensors STEPPED.safetensors TRAIN.out
  GOLDEN    `loss V`, `out V...` (the block's outputs, sample after sample) and
            `grad NAME V...` lines
  PREDICT   `predict --load INIT` output: the outputs of the same inputs
  INIT      the weights both started from; STEPPED: nnc's after one sgd(lr = 1) step, so
            INIT - STEPPED is nnc's gradient
  TRAIN     the training run's stdout: its first loss line is the loss before the step
Prints `TENSOR OK maxdiff=...` per quantity, or `TENSOR MISMATCH ...` (exit 1).
"""
import csv
import json
import re
import struct
import sys


def tensors(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, t in header.items():
        lo, hi = t["data_offsets"]
        fmt = {"F64": "d", "F32": "f"}[t["dtype"]]
        out[name] = struct.unpack(f"<{(hi - lo) // struct.calcsize(fmt)}{fmt}", blob[8 + n + lo : 8 + n + hi])
    return out


def check(what, got, want, tol):
    if len(got) != len(want):
        print(f"TENSOR MISMATCH {what}: {len(got)} values, {len(want)} expected")
        return False
    diff = max(abs(a - b) for a, b in zip(got, want))
    ok = diff <= tol
    print(f"TENSOR {'OK' if ok else 'MISMATCH'} {what} maxdiff={diff:.3g}")
    return ok


def main():
    golden_path, predict_path, init_path, stepped_path, train_path = sys.argv[1:6]
    golden = {}
    for line in open(golden_path):
        parts = line.split()
        if parts[0] == "grad":
            golden["grad " + parts[1]] = [float(v) for v in parts[2:]]
        else:
            golden[parts[0]] = [float(v) for v in parts[1:]]
    ok = True
    loss = re.search(r"^epoch\s+\S+\s+loss\s+(\S+)", open(train_path).read(), re.M)
    ok &= check("loss", [float(loss.group(1))] if loss else [], golden["loss"], 2e-6)
    rows = list(csv.reader(open(predict_path)))
    first = rows[0].index("out0")
    ok &= check("out", [float(v) for r in rows[1:] for v in r[first:]], golden["out"], 1e-9)
    init, stepped = tensors(init_path), tensors(stepped_path)
    for name in init:
        grad = [a - b for a, b in zip(init[name], stepped.get(name, ()))]
        ok &= check("grad " + name, grad, golden["grad " + name], 1e-9)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
