#!/usr/bin/env python3
"""torch_gpt.py — the peer for bench/gpt.sh: PyTorch trains the GPT of examples/gpt.nn (pre-norm
blocks of causal self-attention with separate q, k, v projections and a GELU-tanh MLP 4 times
wider, a final layernorm, the head tied to the token embedding; AdamW lr 1e-3, weight decay 0.1
on matrices and embeddings only, gradient clipping at norm 1) on the same .npy token windows,
and prints the time per step after warm-up, tokens/s and peak RSS. Run with Debian's
/usr/bin/python3 (python3-torch).
usage: torch_gpt.py THREADS X.npy Y.npy VOCAB WIDTH HEADS LAYERS BATCH WARMUP STEPS"""
import math
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(c, c) for _ in range(4))

    def forward(self, x):  # (B, T, C)
        b, t, c = x.shape
        d = c // self.heads
        q, k, v = (p(x).view(b, t, self.heads, d).transpose(1, 2) for p in (self.q, self.k, self.v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, H, T, T)
        future = torch.ones(t, t, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, -1e9)
        o = F.softmax(scores, dim=-1) @ v
        return self.o(o.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.ln0, self.ln1 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.attn = Attention(c, heads)
        self.up, self.down = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def forward(self, x):
        x = x + self.attn(self.ln0(x))
        return x + self.down(F.gelu(self.up(self.ln1(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab, context, width, heads, layers):
        super().__init__()
        self.wte = nn.Parameter(torch.randn(vocab, width) * 0.02)
        self.wpe = nn.Parameter(torch.randn(context, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(width)

    def forward(self, ids):
        h = self.wte[ids] + self.wpe
        for blk in self.blocks:
            h = blk(h)
        return self.ln(h) @ self.wte.t()  # the tied head


def main():
    threads, xf, yf = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    vocab, width, heads, layers, batch, warmup, steps = map(int, sys.argv[4:11])
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    x = torch.from_numpy(np.load(xf).astype(np.int64))
    y = torch.from_numpy(np.load(yf).astype(np.int64))
    model = GPT(vocab, x.shape[1], width, heads, layers)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3)

    def step(i):
        j = (i * batch) % (len(x) - batch + 1)
        opt.zero_grad()
        logits = model(x[j : j + batch])
        loss = F.cross_entropy(logits.reshape(-1, vocab), y[j : j + batch].reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for i in range(warmup):
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    secs = (time.perf_counter() - start) / steps
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"torch threads={threads} step_ms={secs * 1e3:.1f} tokens/s={batch * x.shape[1] / secs:.0f} "
          f"peak_rss_mb={rss:.0f}")


if __name__ == "__main__":
    main()
