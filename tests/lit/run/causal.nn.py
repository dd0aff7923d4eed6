# Compares the logits of two predicted sequences position by position: which positions of
# row 2 differ from row 1. Usage: causal.nn.py OUT.csv K (K classes per position).
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
k = int(sys.argv[2])
head = rows[0]
first = head.index("out0")
a, b = [[float(v) for v in r[first:]] for r in rows[1:3]]
same = [max(abs(x - y) for x, y in zip(a[p * k:(p + 1) * k], b[p * k:(p + 1) * k])) < 1e-6
        for p in range(len(a) // k)]
if all(same[:-1]) and not same[-1]:
    print("positions 0-%d equal, position %d differs" % (len(same) - 2, len(same) - 1))
for p, s in enumerate(same):
    if not s and p < len(same) - 1:
        print("position %d differs" % p)
