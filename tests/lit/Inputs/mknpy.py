#!/usr/bin/env python3
"""mknpy.py — writes a small NumPy .npy file for the runtime's loader tests, without numpy.

usage: mknpy.py OUT DESCR SHAPE [--labels K] [--set I=V] [--cut N] [--fortran] [--version 2]
  OUT         the file to write
  DESCR       numpy's dtype string: <f4 <f8 |i1 |u1 <i4 <i8 (or another, to test refusals)
  SHAPE       comma-separated, the sample count first: 12,2,2 for inputs, 12 for labels
  --labels K  element i is i % K (labels); otherwise element i is (37 * i) % 256 (the same
              numbers as mkidx.py's pixels, in any type)
  --set I=V   element I is V instead (e.g. a label out of range, nan)
  --cut N     keep only the first N bytes of the element data (a truncated file)
  --fortran   say 'fortran_order': True in the header
  --version 2 write format version 2.0 (a 4-byte header length)
"""
import struct

import sample_data

FORMATS = {"f4": "f", "f8": "d", "i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i",
           "i8": "q", "u4": "I", "u8": "Q"}


def main():
    args, opts, given = sample_data.parse_args(["--version"], ["--fortran"])
    fortran = "--fortran" in given
    out, descr, shape = args
    dims = [int(d) for d in shape.split(",")]
    values = sample_data.values(dims, opts, float)
    count = len(values)
    fmt = FORMATS[descr[1:]]
    endian = ">" if descr[0] == ">" else "<"
    if fmt in "fd":
        data = struct.pack(endian + fmt * count, *[float(v) for v in values])
    else:
        if fmt == "b":  # int8: the pixel numbers wrap around, as numpy's astype(int8) does
            values = [v - 256 if v > 127 else v for v in values]
        data = struct.pack(endian + fmt * count, *[int(v) for v in values])
    data = sample_data.cut(data, opts)
    tup = "(" + "".join("%d, " % d for d in dims).rstrip(" ")
    tup = tup[:-1] + ",)" if len(dims) == 1 else tup[:-1] + ")"
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (
        descr, "True" if fortran else "False", tup)
    version = int(opts.get("--version", "1"))
    lead = 6 + 2 + (2 if version == 1 else 4)
    pad = (64 - (lead + len(header) + 1) % 64) % 64
    header = header + " " * pad + "\n"
    with open(out, "wb") as f:
        f.write(b"\x93NUMPY" + bytes([version, 0]))
        f.write(struct.pack("<H" if version == 1 else "<I", len(header)))
        f.write(header.encode("latin1"))
        f.write(data)


if __name__ == "__main__":
    main()
