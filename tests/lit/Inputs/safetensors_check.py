#!/usr/bin/env python3
"""safetensors_check.py — checks a file against the safetensors format, independently of nnc's
own reader, and prints what it holds.

usage: safetensors_check.py FILE
The rules are those the safetensors library enforces: an 8-byte little-endian header length
N, N bytes of a JSON object, `__metadata__` (optional) mapping strings to strings, every
other key a tensor {dtype, shape, data_offsets}, the offsets contiguous from 0 and covering
the rest of the file exactly, each tensor's byte count equal to its element count times its
dtype's width. Prints `SAFETENSORS OK`, the metadata (key=value, sorted), then one line per
tensor `NAME DTYPE [SHAPE] first=VALUE` in offset order; or `SAFETENSORS BAD: why` (exit 1).
"""
import json
import struct
import sys

WIDTH = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1}


def check(blob):
    if len(blob) < 8:
        return "shorter than 8 bytes"
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        return "header runs past the end"
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    if not isinstance(header, dict):
        return "header is not an object"
    meta = header.pop("__metadata__", {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        return "metadata values must be strings"
    data = blob[8 + n :]
    pos, lines = 0, []
    for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, end = t["data_offsets"]
        count = 1
        for d in t["shape"]:
            count *= d
        if begin != pos:
            return f"tensor {name} starts at {begin}, expected {pos}"
        if end - begin != count * WIDTH[t["dtype"]]:
            return f"tensor {name} has {end - begin} bytes for {count} elements"
        pos = end
        first = ""
        if count and t["dtype"] in ("F32", "F64"):
            fmt = "<f" if t["dtype"] == "F32" else "<d"
            first = " first=%.6g" % struct.unpack_from(fmt, data, begin)[0]
        shape = json.dumps(t["shape"]).replace(" ", "")
        lines.append("%s %s %s%s" % (name, t["dtype"], shape, first))
    if pos != len(data):
        return f"tensors cover {pos} bytes of {len(data)}"
    print("SAFETENSORS OK")
    for k in sorted(meta):
        print(f"{k}={meta[k]}")
    for line in lines:
        print(line)
    return None


def main():
    why = check(open(sys.argv[1], "rb").read())
    if why:
        print("SAFETENSORS BAD:", why)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
