"""The accuracy of a `predict`-format CSV (class,out0,...) against an IDX label file.

usage: csv_accuracy.py PREDICTIONS.csv LABELS.idx[.gz] LABEL
prints: LABEL: accuracy 75.00% (750/1000)"""
import gzip
import sys

path, labels_path, label = sys.argv[1:4]
with open(path) as f:
    rows = f.read().split("\n")[1:]
classes = [int(r.split(",")[0]) for r in rows if r]
opener = gzip.open if labels_path.endswith(".gz") else open
with opener(labels_path, "rb") as f:
    raw = f.read()
labels = raw[8:8 + len(classes)]
if len(labels) != len(classes):
    sys.exit(f"{labels_path}: fewer labels than the {len(classes)} predictions")
hits = sum(c == l for c, l in zip(classes, labels))
print(f"{label}: accuracy {100 * hits / len(classes):.2f}% ({hits}/{len(classes)})")
