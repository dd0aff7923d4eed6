#!/usr/bin/env python3
"""make_golden.py — writes PyTorch reference values that nnc's tests compare against.

Needs Debian's python3-torch (PyTorch 1.13); CI does not: the outputs are committed.
Run from anywhere:  /usr/bin/python3 tests/golden/make_golden.py

Writes, next to this script:
  losses.golden      one line per loss: NAME VALUE, the loss of fixed predictions/targets
  optim-NAME.golden  the loss before each of 10 optimizer steps, then after the last, for a
                     linear model w*x (w starts at 0.5) under mse on a fixed batch of 4
The matching nnc programs are tests/lit/golden/*.nn; compare.py does the comparison.
"""
import os
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
torch.set_default_dtype(torch.float64)

# ---- losses: predictions p and targets t, 4 samples of 3 (also in tests/lit/golden/loss-*.nn)
P = torch.tensor([[0.2, 0.7, 0.9], [0.6, 0.1, 0.4], [0.8, 0.3, 0.5], [0.05, 0.95, 0.5]])
T = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
Z = torch.tensor([[-1.5, 2.0, 0.3], [0.7, -0.2, -3.0], [4.0, 1.0, -0.5], [-0.1, 0.6, 2.5]])
L = torch.tensor([1, 0, 2, 2])
losses = {
    "mse": F.mse_loss(P, T),
    "mae": F.l1_loss(P, T),
    "huber": F.huber_loss(Z, T, delta=1.0),
    "bce": F.binary_cross_entropy(P, T),
    "bce_logits": F.binary_cross_entropy_with_logits(Z, T),
    # logits Z against class labels L, and against probabilities (T's rows normalised)
    "cross_entropy": F.cross_entropy(Z, L),
    "cross_entropy_probs": F.cross_entropy(Z, T / T.sum(1, keepdim=True)),
    "nll": F.nll_loss(F.log_softmax(Z, 1), L),
}
# layernorm (gamma 1, beta 0) on the predictions, scored by mse: checks its forward values
losses["layernorm_mse"] = F.mse_loss(F.layer_norm(P, (3,)), T)
with open(os.path.join(HERE, "losses.golden"), "w") as f:
    for name, v in losses.items():
        f.write(f"{name} {v.item():.9f}\n")

# ---- optimizers: 10 steps on loss = mse(w * x, y), w = 0.5 everywhere
X = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.5, 2.0], [-2.0, 1.0, 0.5], [1.5, 0.5, -0.5]])
Y = torch.tensor([[2.0, -1.0, 0.5], [1.0, 3.0, -2.0], [-1.0, 0.5, 1.0], [0.0, 2.0, 1.5]])
optimizers = {
    "sgd": lambda w: torch.optim.SGD([w], lr=0.1),
    "sgd-wd": lambda w: torch.optim.SGD([w], lr=0.1, weight_decay=0.1),
    "momentum": lambda w: torch.optim.SGD([w], lr=0.05, momentum=0.9),
    "nesterov": lambda w: torch.optim.SGD([w], lr=0.05, momentum=0.9, nesterov=True),
    "adagrad": lambda w: torch.optim.Adagrad([w], lr=0.3),
    "rmsprop": lambda w: torch.optim.RMSprop([w], lr=0.01, alpha=0.9),
    "adam": lambda w: torch.optim.Adam([w], lr=0.1),
    "adamw": lambda w: torch.optim.AdamW([w], lr=0.1, weight_decay=0.1),
    "adamax": lambda w: torch.optim.Adamax([w], lr=0.1),
}
for name, make in optimizers.items():
    w = torch.full((3,), 0.5, requires_grad=True)
    opt = make(w)
    out = []
    for step in range(10):
        opt.zero_grad()
        loss = F.mse_loss(X * w, Y)
        out.append(loss.item())
        loss.backward()
        opt.step()
    out.append(F.mse_loss(X * w, Y).item())
    with open(os.path.join(HERE, f"optim-{name}.golden"), "w") as f:
        f.write("".join(f"{v:.9f}\n" for v in out))

# ---- recurrent layers: nn.RNN / nn.LSTM / nn.GRU (one layer, batch_first) from fixed random
# weights, written as rnn-NAME.safetensors under nnc's parameter names (W = weight_ih.T,
# U = weight_hh.T; b = b_ih + b_hh with b_hh not trained, except gru which keeps bh = b_hh
# apart). The golden file
# holds the loss before each of 5 SGD steps (lr 0.5) and after the last: the first checks the
# forward values, the others the gradients (backpropagation through time). The inputs are
# RX, 4 sequences of 5 steps of 3 numbers, and the targets RY (also in tests/lit/golden/rnn-*.nn).
import json
import math
import struct

RX = torch.tensor([[[round(math.sin(1 + 15 * b + 3 * t + i), 2) for i in range(3)]
                    for t in range(5)] for b in range(4)])
RY = torch.tensor([[round(0.8 * math.cos(2 + 4 * b + j), 2) for j in range(4)] for b in range(4)])


def write_safetensors(path, tensors):
    header, data = {}, b""
    for name, t in tensors.items():
        flat = t.detach().contiguous().reshape(-1).tolist()
        begin = len(data)
        data += struct.pack("<%dd" % len(flat), *flat)
        header[name] = {"dtype": "F64", "shape": list(t.shape), "data_offsets": [begin, len(data)]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


recurrent = {  # name: (module, how the model reads its output)
    "simple_rnn": (torch.nn.RNN, "mean"),  # mean over the whole sequence of outputs
    "lstm": (torch.nn.LSTM, "last"),
    "gru": (torch.nn.GRU, "last"),
}
for i, (name, (cls, use)) in enumerate(recurrent.items()):
    torch.manual_seed(10 + i)
    net = cls(3, 4, batch_first=True)
    p = dict(net.named_parameters())
    weights = {f"{name}0.W": p["weight_ih_l0"].T, f"{name}0.U": p["weight_hh_l0"].T}
    if name == "gru":
        weights.update({f"{name}0.b": p["bias_ih_l0"], f"{name}0.bh": p["bias_hh_l0"]})
    else:
        weights[f"{name}0.b"] = p["bias_ih_l0"] + p["bias_hh_l0"]
    write_safetensors(os.path.join(HERE, f"rnn-{name}.safetensors"), weights)
    # nnc's one bias b moves as b_ih alone does: b_hh is held fixed (except in gru)
    trained = [v for k, v in p.items() if name == "gru" or k != "bias_hh_l0"]
    opt = torch.optim.SGD(trained, lr=0.5)
    out = []
    for step in range(6):
        opt.zero_grad()
        seq, _ = net(RX)
        pred = seq.mean(1) if use == "mean" else seq[:, -1]
        loss = F.mse_loss(pred, RY)
        out.append(loss.item())
        loss.backward()
        opt.step()
    with open(os.path.join(HERE, f"rnn-{name}.golden"), "w") as f:
        f.write("".join(f"{v:.9f}\n" for v in out))
