#!/usr/bin/env python3
"""safetensors_diff.py — compares the tensors two safetensors files share, byte for byte.

usage: safetensors_diff.py A B
Prints one line per tensor of A, in A's offset order: `NAME same`, `NAME differs`, or
`NAME only in A`.
"""
import json
import struct
import sys


def tensors(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    header.pop("__metadata__", None)
    data = blob[8 + n :]
    out = {}
    for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        lo, hi = t["data_offsets"]
        out[name] = data[lo:hi]
    return out


def main():
    a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
    for name, bytes_a in a.items():
        if name not in b:
            print(name, "only in A")
        else:
            print(name, "same" if b[name] == bytes_a else "differs")


if __name__ == "__main__":
    main()
