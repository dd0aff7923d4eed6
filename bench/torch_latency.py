#!/usr/bin/env python3
"""torch_latency.py — the peer for bench/latency.sh: PyTorch eager inference of one sample
(torch.no_grad, the model in eval mode) on torch_mlp.py's MLP or CNN, timed call by call;
prints the median in microseconds. Run with Debian's /usr/bin/python3 (python3-torch).
usage: torch_latency.py THREADS mlp|cnn [ITERATIONS]"""
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_mlp import build_model  # noqa: E402


def main():
    threads, which = int(sys.argv[1]), sys.argv[2]
    iters = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    cnn = which == "cnn"
    model = build_model(cnn).eval()
    x = torch.rand((1, 1, 28, 28) if cnn else (1, 784))
    times = []
    with torch.no_grad():
        for _ in range(iters // 10):  # warm up
            model(x)
        for _ in range(iters):
            t = time.perf_counter_ns()
            model(x)
            times.append(time.perf_counter_ns() - t)
    print(f"torch {which} threads={threads} median_us={statistics.median(times) / 1000:.2f}")


if __name__ == "__main__":
    main()
