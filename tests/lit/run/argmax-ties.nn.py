"""argmax-ties.nn.py: prints argmax-ties.nn's CSV: seven rows of 200 logits, then the label."""


def row(logits, label):
    print(",".join("%g" % v for v in logits) + ",%d" % label)


def spikes(base, at):
    v = [base] * 200
    for j, x in at.items():
        v[j] = x
    return v


row(spikes(0, {0: 1}), 0)
row(spikes(0, {130: 5, 190: 5}), 130)
row(spikes(0, {130: 5, 190: 5}), 190)
row(spikes(0, {199: 2}), 199)
row(spikes(0, {1: 3, 64: 3}), 64)
row(spikes(-1, {100: -0.5}), 100)
row([j / 1000 for j in range(200)], 199)
