#!/usr/bin/python3
"""The Python PyTorch anchor of nnx-bench's training-step rows: the same model, batch, data, dtype
and optimizer as nnx-train's, in a plain eager loop (torch.nn + torch.optim.AdamW).

  train_step.py mlp|cnn STEPS THREADS ROOT [--device cpu|cuda]
      configs/fashion_mnist_{mlp,cnn}.yaml: Fashion-MNIST from ROOT, batch 64 -> examples/s
  train_step.py gpt STEPS THREADS TEXT --device D --batch B --block T --d-model D --heads H
                --layers L [--autocast bfloat16]
      configs/char_gpt.yaml's GPT (nnx-cpp's models/models.cpp: pre-LN blocks, causal attention
      as matmul + mask + softmax, GELU MLP of 4 d, tied embeddings, learned positions) on TEXT's
      characters, no dropout, no clipping -> sequences/s

Prints the steady-state rate: steps after a warm-up (a tenth, at least 5), timed with the
device synchronized at both ends only, as a plain loop runs (no per-step host sync).
"""
import argparse
import gzip
import math
import time

import numpy as np
import torch

nn = torch.nn


def fashion_mnist(root):
    with gzip.open(f"{root}/train-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(f"{root}/train-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    x = (torch.from_numpy(x.copy()).float() / 255.0 - 0.2860) / 0.3530
    return x, torch.from_numpy(y.copy()).long()


def classifier(kind):
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.1),
                             nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10))
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
                         nn.Dropout(0.25), nn.Linear(128, 10))


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        hd = d // self.heads
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / math.sqrt(hd)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        y = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1, self.attn, self.ln2 = nn.LayerNorm(d), Attention(d, heads), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        h = x + self.attn(self.ln1(x))
        return h + self.mlp(self.ln2(h))


class GPT(nn.Module):
    def __init__(self, vocab, block, d, heads, layers):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        nn.init.normal_(self.embed.weight, std=1 / math.sqrt(d))  # the config's init: lecun
        self.pos = nn.Parameter(torch.randn(block, d) * 0.02)
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)

    def forward(self, ids):
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        return self.ln_f(self.blocks(h)) @ self.embed.weight.t()  # tied output projection


def timed_loop(steps, step, device):
    warmup = max(steps // 10, 5)
    for i in range(steps + warmup):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run_classifier(a, device):
    x, y = fashion_mnist(a.data)
    x, y = x.to(device), y.to(device)
    m = classifier(a.kind).to(device)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01)
    perm = torch.randperm(x.shape[0], device=device)
    bs = 64

    def step(i):
        idx = perm[(i * bs) % (x.shape[0] - bs):][:bs]
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(m(x.index_select(0, idx)), y.index_select(0, idx)).backward()
        opt.step()

    return a.steps * bs / timed_loop(a.steps, step, device)


def run_gpt(a, device):
    text = open(a.data, "rb").read()
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text], dtype=torch.long, device=device)
    m = GPT(len(vocab), a.block, a.d_model, a.heads, a.layers).to(device)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.1)
    dtype = torch.bfloat16 if a.autocast == "bfloat16" else None
    gen = torch.Generator(device="cpu").manual_seed(0)

    def step(i):
        starts = torch.randint(0, ids.numel() - a.block - 1, (a.batch,), generator=gen).to(device)
        rows = starts[:, None] + torch.arange(a.block + 1, device=device)
        seq = ids[rows]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = m(seq[:, :-1])
        loss = nn.functional.cross_entropy(logits.float().reshape(-1, len(vocab)), seq[:, 1:].reshape(-1))
        loss.backward()
        opt.step()

    return a.steps * a.batch / timed_loop(a.steps, step, device)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["mlp", "cnn", "gpt"])
    p.add_argument("steps", type=int)
    p.add_argument("threads", type=int)
    p.add_argument("data", help="Fashion-MNIST's directory, or the GPT's text file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--layers", type=int, default=14)
    p.add_argument("--autocast", default="none", choices=["none", "bfloat16"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device(a.device)
    print(run_gpt(a, device) if a.kind == "gpt" else run_classifier(a, device))


if __name__ == "__main__":
    main()
