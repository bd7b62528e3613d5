#!/usr/bin/python3
"""The Python PyTorch anchor of nnx-bench's training-step rows: the same MLP/CNN, batch, data
and threads as configs/fashion_mnist_{mlp,cnn}.yaml, plain torch.nn + torch.optim.AdamW.
Usage: train_step.py mlp|cnn STEPS THREADS ROOT  -> prints examples/s (steady state)."""
import gzip
import sys
import time

import numpy as np
import torch


def load(root):
    with gzip.open(f"{root}/train-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(f"{root}/train-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    x = (torch.from_numpy(x.copy()).float() / 255.0 - 0.2860) / 0.3530
    return x, torch.from_numpy(y.copy()).long()


def model(kind):
    nn = torch.nn
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.1),
                             nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10))
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
                         nn.Dropout(0.25), nn.Linear(128, 10))


def main():
    kind, steps, threads, root = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x, y = load(root)
    m = model(kind)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01)
    perm = torch.randperm(x.shape[0])
    bs = 64
    warmup = max(steps // 10, 5)
    for i in range(steps + warmup):
        if i == warmup:
            t0 = time.perf_counter()
        idx = perm[(i * bs) % (x.shape[0] - bs):][:bs]
        xb, yb = x.index_select(0, idx), y.index_select(0, idx)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(m(xb), yb)
        loss.backward()
        opt.step()
        loss.item()
    print(steps * bs / (time.perf_counter() - t0))


if __name__ == "__main__":
    main()
