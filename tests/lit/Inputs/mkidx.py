#!/usr/bin/env python3
"""mkidx.py — writes a small IDX file (the MNIST format) for the runtime's loader tests.

usage: mkidx.py OUT TYPE DIMS [--labels K] [--set I=V] [--cut N] [--magic HEX] [--gz]
  OUT         the file to write
  TYPE        ubyte | float32 (element type 0x08 | 0x0D)
  DIMS        comma-separated, the sample count first: 12,2,2 for images, 12 for labels
  --labels K  element i is i % K (labels); otherwise element i is (37 * i) % 256 (pixels,
              the same numbers in either type)
  --set I=V   element I is V instead (e.g. a label out of range)
  --cut N     keep only the first N bytes of the element data (a truncated file)
  --magic HEX replace the 4 magic bytes, e.g. 12340803
  --gz        gzip-compress the file
"""
import gzip
import struct

import sample_data


def main():
    args, opts, given = sample_data.parse_args(["--magic"], ["--gz"])
    out, typ, dims = args
    dims = [int(d) for d in dims.split(",")]
    values = sample_data.values(dims, opts, float if typ == "float32" else int)
    code, fmt = {"ubyte": (0x08, ">B"), "float32": (0x0D, ">f")}[typ]
    data = sample_data.cut(b"".join(struct.pack(fmt, v) for v in values), opts)
    magic = bytes([0, 0, code, len(dims)])
    if "--magic" in opts:
        magic = bytes.fromhex(opts["--magic"])
    blob = magic + b"".join(struct.pack(">I", d) for d in dims) + data
    with open(out, "wb") as f:
        f.write(gzip.compress(blob, mtime=0) if "--gz" in given else blob)


if __name__ == "__main__":
    main()
