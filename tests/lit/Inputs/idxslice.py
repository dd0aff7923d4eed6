#!/usr/bin/env python3
"""idxslice.py — the first N items of an IDX file (plain or .gz), written uncompressed.

usage: idxslice.py IN OUT N
"""
import gzip
import struct
import sys


def main():
    src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    opener = gzip.open if src.endswith(".gz") else open
    with opener(src, "rb") as f:
        data = f.read()
    magic = data[:4]
    rank = magic[3]
    dims = list(struct.unpack(">%dI" % rank, data[4 : 4 + 4 * rank]))
    item = 1
    for d in dims[1:]:
        item *= d
    width = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}[magic[2]]
    n = min(n, dims[0])
    body = data[4 + 4 * rank : 4 + 4 * rank + n * item * width]
    with open(dst, "wb") as f:
        f.write(magic + struct.pack(">%dI" % rank, n, *dims[1:]) + body)


if __name__ == "__main__":
    main()
