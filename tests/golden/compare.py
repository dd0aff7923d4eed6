#!/usr/bin/env python3
"""compare.py — compares an nnc training program's printed losses with a golden file.

usage: compare.py GOLDEN OUTPUT [--name NAME] [--final] [--steps] [--log COLUMN] [--tol T]
  GOLDEN  a file of numbers, one per line (optionally "NAME VALUE" lines, with --name NAME)
  OUTPUT  the program's stdout: the loss of every `epoch` line, then the `final:` loss
  --final compare the `final:` loss alone (eval mode, e.g. with dropout off)
  --steps a train block with steps: every `NAME_loss X` of the epoch and final lines, in order
  --log   OUTPUT is a `train --log` CSV: compare COLUMN of its `step` rows (e.g. lr)
Prints `TENSOR OK maxdiff=...` or `TENSOR MISMATCH ...` (exit 1). The tolerance is absolute,
because the program prints losses with 6 decimals.
"""
import csv
import re
import sys


def main():
    args = sys.argv[1:]
    name, tol, final, steps, column = None, 2e-6, False, False, None
    if "--steps" in args:
        args.remove("--steps")
        steps = True
    if "--final" in args:
        args.remove("--final")
        final = True
    if "--name" in args:
        i = args.index("--name")
        name = args[i + 1]
        del args[i : i + 2]
    if "--log" in args:
        i = args.index("--log")
        column = args[i + 1]
        del args[i : i + 2]
    if "--tol" in args:
        i = args.index("--tol")
        tol = float(args[i + 1])
        del args[i : i + 2]
    golden_path, output_path = args
    golden = []
    for line in open(golden_path):
        parts = line.split()
        if not parts:
            continue
        if name is not None:
            if parts[0] == name:
                golden.append(float(parts[1]))
        else:
            golden.append(float(parts[-1]))
    text = open(output_path).read()
    got = [float(v) for v in re.findall(r"^(?:epoch\s+\S+|final:)\s+loss\s+(\S+)", text, re.M)]
    if steps:
        lines = re.findall(r"^(?:epoch\s+\S+|final:)(.*)$", text, re.M)
        got = [float(v) for line in lines for v in re.findall(r"\w+_loss\s+(\S+)", line)]
    if column is not None:
        rows = list(csv.DictReader(text.splitlines()))
        got = [float(row[column]) for row in rows if row["kind"] == "step"]
    if name is not None:  # a loss value: the first printed loss is the loss at the start
        got = got[:1]
    if final:
        got = got[-1:]
    if len(got) != len(golden):
        print(f"TENSOR MISMATCH: {len(got)} values printed, {len(golden)} expected")
        return 1
    diffs = [abs(a - b) for a, b in zip(got, golden)]
    worst = max(range(len(diffs)), key=lambda i: diffs[i])
    if diffs[worst] > tol:
        print(f"TENSOR MISMATCH at {worst}: nnc {got[worst]} torch {golden[worst]} "
              f"(diff {diffs[worst]:.3g} > {tol:.3g})")
        return 1
    print(f"TENSOR OK maxdiff={diffs[worst]:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
