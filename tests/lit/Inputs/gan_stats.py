#!/usr/bin/env python3
"""gan_stats.py — how close a generator's images are to real ones, by two statistics that an
untrained or broken generator misses: the mean pixel, and the correlation (over pixels) of the
mean generated image with the mean real image (the average garment's silhouette).

usage: gan_stats.py REAL.idx GENERATED.csv MAX_MEAN_DIFF MIN_CORRELATION
  REAL.idx       uncompressed IDX images (ubyte), mapped to [-1, 1] as the GAN sees them
  GENERATED.csv  `predict` output: a header line, then one image of values in [-1, 1] per row
Prints the statistics and `GAN OK` when |mean difference| <= MAX_MEAN_DIFF and correlation
>= MIN_CORRELATION, else `GAN FAIL` (exit 1).
"""
import struct
import sys


def mean_image(rows):
    n = len(rows)
    return [sum(r[i] for r in rows) / n for i in range(len(rows[0]))]


def correlation(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    return cov / (va * vb) ** 0.5 if va > 0 and vb > 0 else 0.0


def main():
    real_path, gen_path, max_diff, min_corr = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:5])
    blob = open(real_path, "rb").read()
    _, n, h, w = struct.unpack(">IIII", blob[:16])
    pixels = blob[16:]
    real = [[pixels[k * h * w + i] / 127.5 - 1 for i in range(h * w)] for k in range(n)]
    gen = [[float(v) for v in line.split(",")] for line in open(gen_path).read().split("\n")[1:]
           if line.strip()]
    real_mean, gen_mean = mean_image(real), mean_image(gen)
    diff = sum(gen_mean) / len(gen_mean) - sum(real_mean) / len(real_mean)
    corr = correlation(real_mean, gen_mean)
    ok = abs(diff) <= max_diff and corr >= min_corr
    print(f"mean pixel: real {sum(real_mean) / len(real_mean):.3f} generated "
          f"{sum(gen_mean) / len(gen_mean):.3f} (diff {diff:.3f}); correlation of the mean "
          f"images {corr:.3f}")
    print("GAN OK" if ok else "GAN FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
