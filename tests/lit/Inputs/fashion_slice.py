#!/usr/bin/env python3
"""fashion_slice.py — the first N images and labels of Debian's Fashion-MNIST as small IDX
files, for end-to-end tests on real images (no numpy or torch needed).

usage: fashion_slice.py N IMAGES_OUT LABELS_OUT
"""
import gzip
import os
import struct
import sys

SRC = "/usr/share/datasets/fashion-mnist"


def main():
    n, images_out, labels_out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    with gzip.open(os.path.join(SRC, "train-images-idx3-ubyte.gz")) as f:
        magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
        pixels = f.read(n * rows * cols)
    with gzip.open(os.path.join(SRC, "train-labels-idx1-ubyte.gz")) as f:
        f.read(8)
        labels = f.read(n)
    with open(images_out, "wb") as f:
        f.write(struct.pack(">IIII", magic, n, rows, cols) + pixels)
    with open(labels_out, "wb") as f:
        f.write(struct.pack(">II", 0x00000801, n) + labels)


if __name__ == "__main__":
    main()
