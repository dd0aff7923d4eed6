#!/usr/bin/env python3
"""mksafetensors.py — writes a safetensors file as another program (PyTorch, say) would, for
the runtime's checkpoint tests.

usage: mksafetensors.py OUT [NAME:DTYPE:SHAPE ...] [--meta KEY=VALUE ...] [--header TEXT]
  NAME:DTYPE:SHAPE   a tensor, e.g. dense0.W:F32:2,3 (SHAPE empty for a scalar); every
                     element is 0.25
  --meta KEY=VALUE   a __metadata__ entry
  --header TEXT      write TEXT as the JSON header instead (for malformed files)
"""
import json
import struct
import sys


def main():
    args = sys.argv[1:]
    out = args.pop(0)
    header, meta, data, custom = {}, {}, b"", None
    while args:
        a = args.pop(0)
        if a == "--meta":
            k, v = args.pop(0).split("=", 1)
            meta[k] = v
        elif a == "--header":
            custom = args.pop(0)
        else:
            name, dtype, shape = a.split(":")
            dims = [int(d) for d in shape.split(",")] if shape else []
            count = 1
            for d in dims:
                count *= d
            fmt = {"F32": "<%df", "F64": "<%dd"}[dtype] % count
            begin = len(data)
            data += struct.pack(fmt, *([0.25] * count))
            header[name] = {"dtype": dtype, "shape": dims, "data_offsets": [begin, len(data)]}
    if meta:
        header = {"__metadata__": meta, **header}
    text = (custom if custom is not None else json.dumps(header)).encode()
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


if __name__ == "__main__":
    main()
