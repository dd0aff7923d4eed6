# Checks the statistics random.nn's model outputs (one CSV row per sample: every
# output, no class column for a regression model).
import sys

rows = [[float(v) for v in l.split(",")] for l in open(sys.argv[1]).read().split()[1:]]
other = [[float(v) for v in l.split(",")] for l in open(sys.argv[2]).read().split()[1:]]


def ok(name, cond):
    print(name, "ok" if cond else "FAILED")


for r in rows[:1]:
    # 20000 draws: the standard error of a mean of U[0,1) is 0.002, of N(0,1) 0.007
    ok("uniform mean", abs(r[0] - 0.5) < 0.01)
    ok("uniform var", abs(r[1] - 1 / 12) < 0.003)
    ok("normal mean", abs(r[2]) < 0.03)
    ok("normal var", abs(r[3] - 1) < 0.04)
    ok("bernoulli mean", abs(r[4] - 0.3) < 0.015)
    ok("uniform range", 0 <= r[5] < 0.001 and 0.999 < r[6] < 1)
    ok("shifted uniform", abs(r[7] - 2) < 0.08 and abs(r[8] - 64 / 12) < 0.2)
    ok("shifted normal", abs(r[9] - 3) < 0.06 and abs(r[10] - 4) < 0.16)
ok("samples differ", rows[0] != rows[1] and rows[0] != other[0])
ok("sites differ", rows[0][11] != rows[0][12])
