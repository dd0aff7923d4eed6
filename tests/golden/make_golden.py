#!/usr/bin/env python3
"""make_golden.py — writes PyTorch reference values that nnc's tests compare against.

Needs Debian's python3-torch (PyTorch 1.13); CI does not: the outputs are committed.
Run from anywhere:  /usr/bin/python3 tests/golden/make_golden.py

Writes, next to this script:
  losses.golden      one line per loss: NAME VALUE, the loss of fixed predictions/targets
  optim-NAME.golden  the loss before each of 10 optimizer steps, then after the last, for a
                     linear model w*x (w starts at 0.5) under mse on a fixed batch of 4
  transformer-block.{golden,csv,safetensors}  one transformer_block: weights, inputs and
                     targets, the loss, outputs and every parameter's gradient
  gpt-steps.{golden,safetensors}  a tiny GPT's weights and its loss over 5 AdamW steps
  gan-steps.{golden,safetensors}  a tiny MLP GAN's weights and both steps' losses over 3
                     iterations (discriminator step, then generator step), and at the end
The matching nnc programs are tests/lit/golden/*.nn; compare.py (compare_block.py for the
block) does the comparison.
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

# ---- batchnorm: 10 SGD steps (lr 0.1) on mse(batchnorm(w * x), y), w = 0.5, in training
# mode (batch statistics; the trajectory checks the gradients through them), then the loss in
# eval mode, with the running statistics the 10 steps left. Dense: BatchNorm1d on X, Y above.
# Images: BatchNorm2d on 3 samples of [h, w, c] = [2, 2, 2] (nnc is channels last).
def batchnorm_run(x, y, bn, to_torch):
    w = torch.full(x.shape[1:], 0.5, requires_grad=True)
    opt = torch.optim.SGD([w] + list(bn.parameters()), lr=0.1)
    out = []
    for step in range(10):
        opt.zero_grad()
        loss = F.mse_loss(to_torch(bn, x * w), y)
        out.append(loss.item())
        loss.backward()
        opt.step()
    bn.eval()
    with torch.no_grad():
        out.append(F.mse_loss(to_torch(bn, x * w), y).item())
    return out


def nhwc(bn, v):  # BatchNorm2d is channels first
    return bn(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


IMG = torch.tensor([[0.5, -0.3, 0.8, 0.1, 0.2, -0.4, 0.7, 0.3],
                    [0.1, 0.2, -0.4, -0.7, 0.9, 0.3, 0.2, 0.5],
                    [-0.7, 0.9, 0.3, 0.3, -0.6, 0.2, -0.1, 0.4]]).reshape(3, 2, 2, 2)
IMG_Y = torch.tensor([[1.0, 0.0, 0.5, -1.0, 0.2, 0.3, -0.5, 1.0],
                      [0.0, 1.0, -0.5, 0.5, 1.0, -1.0, 0.0, 0.5],
                      [-1.0, 0.5, 1.0, 0.0, -0.2, 0.8, 0.4, -0.3]]).reshape(3, 2, 2, 2)
runs = {
    "batchnorm-dense": batchnorm_run(X, Y, torch.nn.BatchNorm1d(3), lambda bn, v: bn(v)),
    "batchnorm-conv": batchnorm_run(IMG, IMG_Y, torch.nn.BatchNorm2d(2, momentum=0.2), nhwc),
}
for name, out in runs.items():
    with open(os.path.join(HERE, f"{name}.golden"), "w") as f:
        f.write("".join(f"{v:.9f}\n" for v in out))

# ---- dropout is off outside training: the eval-mode loss of mse(dropout(P), T) is mse(P, T)
drop = torch.nn.Dropout(0.5)
drop.eval()
with open(os.path.join(HERE, "dropout-eval.golden"), "w") as f:
    f.write(f"{F.mse_loss(drop(P), T).item():.9f}\n")

# ---- learning-rate schedules: 10 SGD steps (lr 0.1) on mse(w * x, y) as for the optimizers,
# the scheduler stepped after every update, so the trajectory follows its lr sequence.
# cosine: LinearLR warmup for 3 updates, then CosineAnnealingLR to 0.01 over the other 7.
def cosine_warmup(opt):
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / 3, end_factor=1,
                                             total_iters=2)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7, eta_min=0.01)
    return torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[3])


schedules = {
    "step": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
    "exponential": lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.8),
    "cosine": cosine_warmup,
}


def sgd_scheduled(lr, steps, make, step):
    """SGD on mse(w * x, y) from w = 0.5 for `steps` updates, the scheduler make(opt) stepped
    after each by step(sched, loss): the loss before each update and after the last, and the
    lr of each update."""
    w = torch.full((3,), 0.5, requires_grad=True)
    opt = torch.optim.SGD([w], lr=lr)
    sched = make(opt)
    out, lrs = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(X * w, Y)
        out.append(loss.item())
        lrs.append(opt.param_groups[0]["lr"])
        loss.backward()
        opt.step()
        step(sched, loss.item())
    out.append(F.mse_loss(X * w, Y).item())
    return out, lrs


for name, make in schedules.items():
    out, lrs = sgd_scheduled(0.1, 10, make, lambda sched, loss: sched.step())
    with open(os.path.join(HERE, f"schedule-{name}.golden"), "w") as f:
        f.write("".join(f"{v:.9f}\n" for v in out))
    with open(os.path.join(HERE, f"schedule-{name}-lr.golden"), "w") as f:  # the lr of each update
        f.write("".join(f"{v:.9g}\n" for v in lrs))
    print(name, " ".join(f"{v:.6g}" for v in lrs))

# ---- reduce-on-plateau: SGD with lr 3 on the same problem diverges, so the loss stops
# improving; ReduceLROnPlateau(factor 0.5, patience 1) is stepped after every epoch (one
# update each) with the epoch's loss, the loss before its update.
out, lrs = sgd_scheduled(
    3.0, 12, lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1),
    lambda sched, loss: sched.step(loss))
with open(os.path.join(HERE, "schedule-plateau.golden"), "w") as f:
    f.write("".join(f"{v:.9f}\n" for v in out))
print("plateau", " ".join(f"{v:.6g}" for v in lrs), out)

# ---- kl_div of log_softmax(Z) against the probabilities T / T.sum (batchmean), and a
# weighted sum of two losses (multi-task)
with open(os.path.join(HERE, "losses.golden"), "a") as f:
    kl = F.kl_div(F.log_softmax(Z, 1), T / T.sum(1, keepdim=True), reduction="batchmean")
    f.write(f"kl_div {kl.item():.9f}\n")
    f.write(f"weighted {(0.7 * F.mse_loss(P, T) + 0.3 * F.l1_loss(P, T)).item():.9f}\n")

# ---- regularisers: 10 SGD steps (lr 0.1) on mse(w * x, y) + 0.05 * l2 or l1 of w
for name, reg in {"l2": lambda w: (w ** 2).sum(), "l1": lambda w: w.abs().sum()}.items():
    w = torch.full((3,), 0.5, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    out = []
    for step in range(10):
        opt.zero_grad()
        loss = F.mse_loss(X * w, Y) + 0.05 * reg(w)
        out.append(loss.item())
        loss.backward()
        opt.step()
    out.append((F.mse_loss(X * w, Y) + 0.05 * reg(w)).item())
    with open(os.path.join(HERE, f"reg-{name}.golden"), "w") as f:
        f.write("".join(f"{v:.9f}\n" for v in out))

# ---- conv2d and pooling: 10 SGD steps (lr 0.5) on mse(flatten(pool(conv2d(x, W))), y) with
# every filter weight starting at 0.1, x 2 images [5, 5, 2] (channels last, as nnc), W
# [3, 3, 2, 2] (nnc's [kh, kw, c, filters]), "same" padding (1 on each side), then 2x2 max or
# average pooling ("valid"). The targets differ per channel, so the two filters part ways and
# the trajectory checks the forward values and both gradients. Inputs and targets are in
# tests/lit/golden/window-*.nn (printed by --print-window-table).
import math
import sys

WX = torch.tensor([[math.sin(0.37 * i + 1.3 * s) for i in range(50)] for s in range(2)])
WY = torch.tensor([[math.cos(0.91 * i + 0.5 * s) for i in range(8)] for s in range(2)])
if "--print-window-table" in sys.argv:
    for s in range(2):
        print("    [" + ", ".join(f"{v:.6f}" for v in WX[s]) + "] ->")
        print("        [" + ", ".join(f"{v:.6f}" for v in WY[s]) + "]")
WX = torch.tensor([[round(v, 6) for v in r] for r in WX.tolist()])
WY = torch.tensor([[round(v, 6) for v in r] for r in WY.tolist()])
for name, pool in {"maxpool": F.max_pool2d, "avgpool": F.avg_pool2d}.items():
    w = torch.full((2, 2, 3, 3), 0.1, requires_grad=True)  # torch: [filters, c, kh, kw]
    opt = torch.optim.SGD([w], lr=0.5)
    x = WX.reshape(2, 5, 5, 2).permute(0, 3, 1, 2)
    out = []

    def loss_of():
        h = pool(F.conv2d(x, w, padding=1), 2)  # [2, 2, 2, 2] NCHW
        return F.mse_loss(h.permute(0, 2, 3, 1).reshape(2, 8), WY)

    for step in range(10):
        opt.zero_grad()
        loss = loss_of()
        out.append(loss.item())
        loss.backward()
        opt.step()
    out.append(loss_of().item())
    with open(os.path.join(HERE, f"window-{name}.golden"), "w") as f:
        f.write("".join(f"{v:.9f}\n" for v in out))

# ---- one Transformer block (std.nn's transformer_block: pre-norm, causal multi-head
# attention, GELU MLP) on a batch of 2 sequences [4, 8], 2 heads, under mse against fixed
# targets. Random weights (seed 0) are written as a safetensors file under nnc's parameter
# names; the golden file holds the loss, the block's outputs and every parameter's gradient.
import json
import math
import struct


# Tensors as an F64 safetensors file under the given names (nnc --init-from reads it).
def nnc_layout(name, t):
    """t in nnc's layout: a dense layer's W, [n, units] here (x @ W), is [units, n] in nnc
    (x @ transpose(W), PyTorch's Linear layout)."""
    return t.t() if ".dense" in "." + name and name.endswith(".W") else t


def write_safetensors(path, tensors):
    header, data = {}, b""
    for name, t in tensors.items():
        t = nnc_layout(name, t)
        flat = t.detach().contiguous().reshape(-1).tolist()
        begin = len(data)
        data += struct.pack("<%dd" % len(flat), *flat)
        header[name] = {"dtype": "F64", "shape": list(t.shape), "data_offsets": [begin, len(data)]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


torch.manual_seed(0)
B, T_, C, H = 2, 4, 8, 2
pre = "transformer_block0."
shapes = {
    "layernorm0.gamma": (C,), "layernorm0.beta": (C,),
    **{f"attention0.dense{i}.{p}": s for i in range(4) for p, s in (("W", (C, C)), ("b", (C,)))},
    "layernorm1.gamma": (C,), "layernorm1.beta": (C,),
    "dense0.W": (C, 4 * C), "dense0.b": (4 * C,), "dense1.W": (4 * C, C), "dense1.b": (C,),
}
W = {pre + k: (torch.randn(s) * (0.5 if len(s) == 2 else 0.2) + (1.0 if "gamma" in k else 0.0))
     .requires_grad_() for k, s in shapes.items()}
XB = torch.randn(B, T_, C)
YB = torch.randn(B, T_, C)


def block(x):
    w = lambda k: W[pre + k]
    dense = lambda x, n: x @ w(n + ".W") + w(n + ".b")
    ln = lambda x, n: F.layer_norm(x, (C,), w(n + ".gamma"), w(n + ".beta"), eps=1e-5)
    h = ln(x, "layernorm0")
    d = C // H
    q, k, v = (dense(h, f"attention0.dense{i}").view(B, T_, H, d).permute(0, 2, 1, 3)
               for i in range(3))
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    future = torch.ones(T_, T_).triu(1).bool()
    p = torch.softmax(s.masked_fill(future, -1e9), -1)
    o = (p @ v).permute(0, 2, 1, 3).reshape(B, T_, C)
    x = x + dense(o, "attention0.dense3")
    return x + dense(F.gelu(dense(ln(x, "layernorm1"), "dense0"), approximate="tanh"), "dense1")


out = block(XB)
loss = F.mse_loss(out, YB)
loss.backward()
with open(os.path.join(HERE, "transformer-block.csv"), "w") as f:
    for b in range(B):
        f.write(",".join(f"{v:.17g}" for v in torch.cat([XB[b].flatten(), YB[b].flatten()]).tolist()) + "\n")
write_safetensors(os.path.join(HERE, "transformer-block.safetensors"), W)
with open(os.path.join(HERE, "transformer-block.golden"), "w") as f:
    f.write(f"loss {loss.item():.17g}\n")
    f.write("out " + " ".join(f"{v:.17g}" for v in out.detach().flatten().tolist()) + "\n")
    for k, t in W.items():
        f.write(f"grad {k} " + " ".join(f"{v:.17g}" for v in nnc_layout(k, t.grad).flatten().tolist()) + "\n")

# ---- the tiny GPT of tests/lit/golden/gpt-steps.nn (2 blocks, 2 heads, width 16, context 16,
# byte vocabulary, tied output head) on tests/lit/Inputs/tiny.txt: the loss before each of 5
# AdamW steps (weight decay on parameters of rank >= 2 only, as adamw(decay_rank = 2)), the
# whole file as one batch, so the order of the samples cannot matter; then the loss after.
torch.manual_seed(1)
V, T_, C, H, NL = 256, 16, 16, 2, 2


def block_params(pre):
    s = {k: v for k, v in shapes.items()}
    for k in list(s):
        s[k] = tuple(C * 4 if d == 32 else C if d == 8 else d for d in s[k])
    return {pre + k: (torch.randn(sh) * (0.3 if len(sh) == 2 else 0.1) + (1.0 if "gamma" in k else 0.0))
            .requires_grad_() for k, sh in s.items()}


G = {"wte": (torch.randn(V, C) * 0.3).requires_grad_(), "wpe": (torch.randn(T_, C) * 0.3).requires_grad_()}
for i in range(NL):
    G.update(block_params(f"transformer_block{i}."))
G["layernorm0.gamma"] = (1 + 0.1 * torch.randn(C)).requires_grad_()
G["layernorm0.beta"] = (0.1 * torch.randn(C)).requires_grad_()


def gpt_block(x, pre):
    w = lambda k: G[pre + k]
    dense = lambda x, n: x @ w(n + ".W") + w(n + ".b")
    ln = lambda x, n: F.layer_norm(x, (C,), w(n + ".gamma"), w(n + ".beta"), eps=1e-5)
    n, d = x.shape[0], C // H
    h = ln(x, "layernorm0")
    q, k, v = (dense(h, f"attention0.dense{i}").view(n, T_, H, d).permute(0, 2, 1, 3) for i in range(3))
    s = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(torch.ones(T_, T_).triu(1).bool(), -1e9)
    o = (torch.softmax(s, -1) @ v).permute(0, 2, 1, 3).reshape(n, T_, C)
    x = x + dense(o, "attention0.dense3")
    return x + dense(F.gelu(dense(ln(x, "layernorm1"), "dense0"), approximate="tanh"), "dense1")


text = open(os.path.join(HERE, "..", "lit", "Inputs", "tiny.txt"), "rb").read()
rows = (len(text) - 1) // T_
ids = torch.tensor(list(text[: rows * T_ + 1]))
GX, GY = ids[:-1].view(rows, T_), ids[1:].view(rows, T_)
write_safetensors(os.path.join(HERE, "gpt-steps.safetensors"), G)
decay = [t for t in G.values() if t.dim() >= 2]
no_decay = [t for t in G.values() if t.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=1e-2)


def gpt_loss():
    h = G["wte"][GX] + G["wpe"]
    for i in range(NL):
        h = gpt_block(h, f"transformer_block{i}.")
    h = F.layer_norm(h, (C,), G["layernorm0.gamma"], G["layernorm0.beta"], eps=1e-5)
    return F.cross_entropy((h @ G["wte"].t()).reshape(-1, V), GY.reshape(-1))


steps = []
for step in range(5):
    opt.zero_grad()
    loss = gpt_loss()
    steps.append(loss.item())
    loss.backward()
    opt.step()
steps.append(gpt_loss().item())  # after the last step
with open(os.path.join(HERE, "gpt-steps.golden"), "w") as f:
    f.write("".join(f"{v:.9f}\n" for v in steps))

# ---- recurrent layers: nn.RNN / nn.LSTM / nn.GRU (one layer, batch_first) from fixed random
# weights, written as rnn-NAME.safetensors under nnc's parameter names (W = weight_ih.T,
# U = weight_hh.T; b = b_ih + b_hh with b_hh not trained, except gru which keeps bh = b_hh
# apart). The golden file
# holds the loss before each of 5 SGD steps (lr 0.5) and after the last: the first checks the
# forward values, the others the gradients (backpropagation through time). The inputs are
# RX, 4 sequences of 5 steps of 3 numbers, and the targets RY (also in tests/lit/golden/rnn-*.nn).

RX = torch.tensor([[[round(math.sin(1 + 15 * b + 3 * t + i), 2) for i in range(3)]
                    for t in range(5)] for b in range(4)])
RY = torch.tensor([[round(0.8 * math.cos(2 + 4 * b + j), 2) for j in range(4)] for b in range(4)])



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


# ---- a tiny MLP GAN in two steps (tests/lit/golden/gan-steps.nn): each iteration updates
# the discriminator D on bce(D(real), 1) + bce(D(G(z)), 0), then the generator G on
# bce(D(G(z)), 1) through the updated D, each with its own Adam. A sample's 5 numbers are a
# real point (2) and the generator's noise (3), so both sides see the same z. The golden file
# holds d_loss and g_loss of each iteration (each before its own update), then both at the end.
GX = torch.tensor([[0.5, -1.0, 0.3, -0.7, 1.2], [1.5, 0.2, -1.1, 0.4, 0.9],
                   [-0.3, 0.8, 0.6, 1.3, -0.2], [0.9, -0.4, -0.5, -0.9, 0.7]])
torch.manual_seed(20)
GAN = {"disc.dense0.W": torch.randn(2, 3) * 0.8, "disc.dense0.b": torch.randn(3) * 0.1,
       "disc.dense1.W": torch.randn(3, 1) * 0.8, "disc.dense1.b": torch.randn(1) * 0.1,
       "gen.dense0.W": torch.randn(3, 4) * 0.8, "gen.dense0.b": torch.randn(4) * 0.1,
       "gen.dense1.W": torch.randn(4, 2) * 0.8, "gen.dense1.b": torch.randn(2) * 0.1}
write_safetensors(os.path.join(HERE, "gan-steps.safetensors"), GAN)
GAN = {k: v.clone().requires_grad_() for k, v in GAN.items()}


def mlp(x, pre):
    h = torch.tanh(x @ GAN[pre + "dense0.W"] + GAN[pre + "dense0.b"])
    return h @ GAN[pre + "dense1.W"] + GAN[pre + "dense1.b"]


def gan_losses():
    real, z = GX[:, :2], GX[:, 2:]
    disc = lambda v: torch.sigmoid(mlp(v, "disc."))
    fake = mlp(z, "gen.")
    d = (F.binary_cross_entropy(disc(real), torch.ones(4, 1))
         + F.binary_cross_entropy(disc(fake), torch.zeros(4, 1)))
    return d, F.binary_cross_entropy(disc(fake), torch.ones(4, 1))


opt_d = torch.optim.Adam([v for k, v in GAN.items() if k.startswith("disc.")], lr=0.1,
                         betas=(0.5, 0.999))
opt_g = torch.optim.Adam([v for k, v in GAN.items() if k.startswith("gen.")], lr=0.1,
                         betas=(0.5, 0.999))
out = []
for it in range(3):
    opt_d.zero_grad()
    d, _ = gan_losses()
    d.backward()
    opt_d.step()
    opt_g.zero_grad()
    _, g = gan_losses()  # through the updated discriminator
    g.backward()
    opt_g.step()
    out += [d.item(), g.item()]
out += [v.item() for v in gan_losses()]
with open(os.path.join(HERE, "gan-steps.golden"), "w") as f:
    f.write("".join(f"{v:.9f}\n" for v in out))
