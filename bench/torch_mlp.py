#!/usr/bin/env python3
"""torch_mlp.py — the peer for bench/mlp.sh: PyTorch trains the same Fashion-MNIST MLP
(784-256-128-10 ReLU, Adam 1e-3, batch 64) for one epoch and prints samples/s, test accuracy
and peak RSS. Run with Debian's /usr/bin/python3 (python3-torch).
usage: torch_mlp.py THREADS [cnn]   (cnn: the textbook CNN of examples/fashion_cnn.nn instead)"""
import gzip
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn

DIR = "/usr/share/datasets/fashion-mnist/"


def idx(path, offset):
    with gzip.open(DIR + path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def build_model(cnn):
    """examples/fashion_cnn.nn's CNN when cnn, else examples/fashion_mlp.nn's MLP."""
    if cnn:
        return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1600, 64), nn.ReLU(), nn.Linear(64, 10))
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


def main():
    torch.set_num_threads(int(sys.argv[1]))
    torch.manual_seed(1)
    cnn = len(sys.argv) > 2 and sys.argv[2] == "cnn"
    shape = (-1, 1, 28, 28) if cnn else (-1, 784)
    xtr = torch.tensor(idx("train-images-idx3-ubyte.gz", 16).reshape(shape) / 255.0, dtype=torch.float32)
    ytr = torch.tensor(idx("train-labels-idx1-ubyte.gz", 8).astype(np.int64))
    xte = torch.tensor(idx("t10k-images-idx3-ubyte.gz", 16).reshape(shape) / 255.0, dtype=torch.float32)
    yte = torch.tensor(idx("t10k-labels-idx1-ubyte.gz", 8).astype(np.int64))
    model = build_model(cnn)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    perm = torch.randperm(len(xtr))
    start = time.perf_counter()
    for i in range(0, len(xtr), 64):
        idx_b = perm[i : i + 64]
        opt.zero_grad()
        loss = loss_fn(model(xtr[idx_b]), ytr[idx_b])
        loss.backward()
        opt.step()
    secs = time.perf_counter() - start
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"torch threads={sys.argv[1]} samples/s={len(xtr) / secs:.0f} epoch_s={secs:.2f} test_acc={acc * 100:.2f} peak_rss_mb={rss:.0f}")


if __name__ == "__main__":
    main()
