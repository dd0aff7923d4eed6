#!/usr/bin/env python3
"""window_ref.py - a loop-by-loop reference for nnc's convolution, pooling and upsampling.

usage: window_ref.py TEST.nn PROGRAM_OUTPUT

TEST.nn has a data table (rows `[x...] -> [y...]`) and one `# REF:` line naming its model:

  # REF: op=conv2d x=4,3,2 p=3,2,2,3 stride=2 padding=same dilation=1 lr=0.5

The model is `flatten(op(x, P))` with P a parameter of shape p that starts at zero: the filter
of conv2d / conv2d_transpose (Keras layouts [kh,kw,c,f] / [kh,kw,f,c]), or for maxpool, avgpool
(size = `size`) and upsample (`factor`) an offset added to x first. The program was trained
with `loss = mse(m(x), y)`, `sgd(lr)`, one epoch of one batch holding the whole table, so it
printed the loss at P = 0 (`epoch 1/1  loss`) and at P = -lr * dloss/dP (`final: loss`).

This script computes both from the definitions (padding "same" is TensorFlow's rule: the
output is ceil(n / stride) and the odd padding element goes after) with the step's gradient
taken by central differences, so it shares no code or derivation with nnc's gradient rules,
and prints `TENSOR OK maxdiff=...` or `TENSOR FAIL ...` (exit status 1).
"""
import re
import sys


def padding(n, k, s, d, same):
    """(before, after) padding of one axis, and the output length."""
    span = d * (k - 1) + 1
    if not same:
        return 0, 0, (n - span) // s + 1
    out = -(-n // s)
    total = max((out - 1) * s + span - n, 0)
    return total // 2, total - total // 2, out


def zeros(*dims):
    if len(dims) == 1:
        return [0.0] * dims[0]
    return [zeros(*dims[1:]) for _ in range(dims[0])]


def conv2d(x, w, s, d, same):
    H, W, C = len(x), len(x[0]), len(x[0][0])
    KH, KW, F = len(w), len(w[0]), len(w[0][0][0])
    pt, _, OH = padding(H, KH, s, d, same)
    pl, _, OW = padding(W, KW, s, d, same)
    y = zeros(OH, OW, F)
    for oh in range(OH):
        for ow in range(OW):
            for f in range(F):
                acc = 0.0
                for kh in range(KH):
                    for kw in range(KW):
                        ih, iw = oh * s - pt + kh * d, ow * s - pl + kw * d
                        if 0 <= ih < H and 0 <= iw < W:
                            for c in range(C):
                                acc += x[ih][iw][c] * w[kh][kw][c][f]
                y[oh][ow][f] = acc
    return y


def conv2d_transpose(x, w, s, d, same):
    """Keras' Conv2DTranspose: every input pixel adds its filter-weighted copy to the output."""
    H, W, C = len(x), len(x[0]), len(x[0][0])
    KH, KW, F = len(w), len(w[0]), len(w[0][0])
    size = []
    for n, k in ((H, KH), (W, KW)):
        span = d * (k - 1) + 1
        size.append(n * s if same else n * s + max(span - s, 0))
    OH, OW = size
    pt = padding(OH, KH, s, d, same)[0]
    pl = padding(OW, KW, s, d, same)[0]
    y = zeros(OH, OW, F)
    for i in range(H):
        for j in range(W):
            for kh in range(KH):
                for kw in range(KW):
                    oh, ow = i * s - pt + kh * d, j * s - pl + kw * d
                    if 0 <= oh < OH and 0 <= ow < OW:
                        for f in range(F):
                            for c in range(C):
                                y[oh][ow][f] += x[i][j][c] * w[kh][kw][f][c]
    return y


def pool(x, k, s, same, reduce):
    H, W, C = len(x), len(x[0]), len(x[0][0])
    pt, _, OH = padding(H, k, s, 1, same)
    pl, _, OW = padding(W, k, s, 1, same)
    y = zeros(OH, OW, C)
    for oh in range(OH):
        for ow in range(OW):
            for c in range(C):
                taps = [x[ih][iw][c]
                        for ih in range(oh * s - pt, oh * s - pt + k)
                        for iw in range(ow * s - pl, ow * s - pl + k)
                        if 0 <= ih < H and 0 <= iw < W]  # padding is never a tap
                y[oh][ow][c] = reduce(taps)
    return y


def upsample(x, f):
    return [[x[i // f][j // f] for j in range(len(x[0]) * f)] for i in range(len(x) * f)]


def flat(t):
    return [v for e in t for v in flat(e)] if isinstance(t, list) else [t]


def shaped(v, dims):
    if len(dims) == 1:
        return list(v)
    n = len(v) // dims[0]
    return [shaped(v[i * n:(i + 1) * n], dims[1:]) for i in range(dims[0])]


def main():
    test, output = sys.argv[1], sys.argv[2]
    text = open(test).read()
    ref = dict(kv.split("=") for kv in re.search(r"# REF: (.*)", text).group(1).split())
    rows = [(list(map(float, a.split(","))), list(map(float, b.split(","))))
            for a, b in re.findall(r"^\s*\[([^\]]*)\]\s*->\s*\[([^\]]*)\]", text, re.M)]
    xdims = [int(v) for v in ref["x"].split(",")]
    pdims = [int(v) for v in ref["p"].split(",")]
    op, lr = ref["op"], float(ref["lr"])
    s, d = int(ref.get("stride", ref.get("size", 1))), int(ref.get("dilation", 1))
    same = ref.get("padding", "valid" if op in ("maxpool", "avgpool") else "same") == "same"

    def model(x, p):
        if op == "conv2d":
            return conv2d(x, p, s, d, same)
        if op == "conv2d_transpose":
            return conv2d_transpose(x, p, s, d, same)
        xp = [[[a + b for a, b in zip(r, q)] for r, q in zip(rx, rp)] for rx, rp in zip(x, p)]
        if op == "maxpool":
            return pool(xp, int(ref["size"]), s, same, max)
        if op == "avgpool":
            return pool(xp, int(ref["size"]), s, same, lambda t: sum(t) / len(t))
        if op == "upsample":
            return upsample(xp, int(ref["factor"]))
        raise SystemExit("unknown op " + op)

    def loss(pv):
        p = shaped(pv, pdims)
        total = 0.0
        for xv, yv in rows:
            out = flat(model(shaped(xv, xdims), p))
            if len(out) != len(yv):
                raise SystemExit("the model gives %d values, the table %d" % (len(out), len(yv)))
            total += sum((a - b) ** 2 for a, b in zip(out, yv)) / len(out)
        return total / len(rows)

    n = 1
    for v in pdims:
        n *= v
    p0 = [0.0] * n
    eps = 1e-4  # the loss is quadratic in P for conv, piecewise so for pooling: exact enough
    grad = []
    for i in range(n):
        hi, lo = list(p0), list(p0)
        hi[i] += eps
        lo[i] -= eps
        grad.append((loss(hi) - loss(lo)) / (2 * eps))
    want = [loss(p0), loss([-lr * g for g in grad])]

    out = open(output).read()
    got = [float(re.search(r"epoch +1/1 +loss (\S+)", out).group(1)),
           float(re.search(r"final: loss (\S+)", out).group(1))]
    diff = max(abs(a - b) for a, b in zip(want, got))
    # the program prints 6 decimals
    if all(abs(a - b) <= 2e-6 + 1e-5 * abs(a) for a, b in zip(want, got)):
        print("TENSOR OK maxdiff=%.2g" % diff)
        return 0
    print("TENSOR FAIL want loss %.6f then %.6f, got %.6f then %.6f" % (*want, *got))
    return 1


if __name__ == "__main__":
    sys.exit(main())
