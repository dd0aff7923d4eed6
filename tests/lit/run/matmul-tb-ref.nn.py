"""matmul-tb-ref.nn.py input | check INPUT OUTPUT: writes matmul-tb-ref.nn's two samples of
82x300 values, or checks the model's predictions against A·Bᵀ, the batched Q·Qᵀ and QᵀQ computed
here in double precision from the same f32 inputs: each output within 1e-5 of the sum of
|products| behind it (f32 rounding, in any summation order), else the worst offenders."""
import struct
import sys

ROWS, K, M, N = 82, 300, 37, 45  # A: rows 0..36, Bᵀ: rows 37..81
G, T, D = 6, 41, 100             # the batched view of the same values


def f32(v):
    return struct.unpack("f", struct.pack("f", v))[0]


def sample(s):
    return [f32(((s * ROWS * K + i) * 2654435761 % 4093) / 2046.5 - 1) for i in range(ROWS * K)]


def reference(x):
    out = []  # (value, bound) pairs in the model's output order
    for i in range(M):
        for j in range(N):
            prods = [x[i * K + k] * x[(M + j) * K + k] for k in range(K)]
            out.append((sum(prods), sum(abs(p) for p in prods)))
    for g in range(G):
        for i in range(T):
            for j in range(T):
                base = g * T * D
                prods = [x[base + i * D + k] * x[base + j * D + k] for k in range(D)]
                out.append((sum(prods), sum(abs(p) for p in prods)))
    for g in range(2):  # transpose(q2) @ q2: C[i, j] = sum over t of Q[t, i] * Q[t, j]
        for i in range(D):
            for j in range(D):
                base = g * T * D
                prods = [x[base + t * D + i] * x[base + t * D + j] for t in range(T)]
                out.append((sum(prods), sum(abs(p) for p in prods)))
    return out


if sys.argv[1] == "input":
    for s in range(2):
        print(",".join("%.9g" % v for v in sample(s)))
    sys.exit(0)
xs = [[float(v) for v in line.split(",")] for line in open(sys.argv[2])]
rows = [line.strip().split(",") for line in open(sys.argv[3])][1:]
bad = []
for s, (x, row) in enumerate(zip(xs, rows)):
    ref = reference(x)
    if len(row) != len(ref):
        sys.exit("sample %d: %d outputs, expected %d" % (s, len(row), len(ref)))
    for e, (got, (want, bound)) in enumerate(zip(row, ref)):
        if abs(float(got) - want) > 1e-5 * bound + 1e-30:
            bad.append((s, e, float(got), want))
if len(rows) != 2 or bad:
    print("%d samples; %d wrong, e.g. %s" % (len(rows), len(bad), bad[:5]))
    sys.exit(1)
print("TENSOR OK")
