"""exp-tanh-ref.nn.py INPUTS OUTPUTS: checks exp, tanh, sigmoid of each input (as f32) against
math's, in ulp of the f32 result; prints TENSOR OK or the worst offenders (exit status 1)."""
import math
import struct
import sys


def f32(v):
    try:
        return struct.unpack("f", struct.pack("f", v))[0]
    except OverflowError:
        return math.copysign(math.inf, v)


def ulp32(v):  # the spacing of f32 numbers at |v| (normal range)
    return 2.0 ** (math.frexp(abs(v))[1] - 24) if v else 2.0 ** -149


xs = [float(l) for l in open(sys.argv[1])]
rows = [l.strip().split(",") for l in open(sys.argv[2])][1:]
bad = []
for x, row in zip(xs, rows):
    x = f32(x)
    e = math.exp(x) if x < 709 else math.inf
    refs = {"exp": f32(e), "tanh": f32(math.tanh(x)), "sigmoid": f32(1 / (1 + math.exp(-x)) if x > -700 else 0.0)}
    if x < -86.9:
        refs["exp"] = 0.0  # flushed, not denormal
    if x > 88.72:
        refs["exp"] = math.inf
    for (name, ref), got in zip(refs.items(), map(float, row)):
        if math.isinf(ref) or ref == 0 or abs(ref) < 2.0 ** -126:
            err = 0 if got == ref or (abs(ref) < 2.0 ** -126 and abs(got) < 2.0 ** -126) else math.inf
        else:
            err = abs(got - ref) / ulp32(ref)
        if err > 4:
            bad.append(f"{name}({x}) = {got}, expected {ref} ({err:.1f} ulp)")
if len(rows) != len(xs) or bad:
    print("TENSOR FAIL", len(rows), "rows for", len(xs), "inputs;", "; ".join(bad))
    sys.exit(1)
print("TENSOR OK")
