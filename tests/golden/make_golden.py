#!/usr/bin/python3
"""Generates the golden values nnx-cpp's tests compare against, with Python PyTorch (Debian's
python3-torch 1.13). Run from this directory: /usr/bin/python3 make_golden.py
Writes layers.json and adam.json. Tensors are stored as {"shape": [...], "data": [flat floats]}.
nnx layouts: Linear kernel = PyTorch weight.T ([in, out]); Conv2d kernel = PyTorch weight."""
import json

import torch

torch.manual_seed(1234)
torch.set_default_dtype(torch.float32)


def t(x):
    x = x.detach().contiguous()
    return {"shape": list(x.shape), "data": [float(v) for v in x.flatten().tolist()]}


def run(module_fn, x, params, extra=None):
    """Forward, then backward of sum(y * w) for a fixed random w; returns the record."""
    x = x.clone().requires_grad_(x.is_floating_point())
    y = module_fn(x)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    rec = {"x": t(x), "y": t(y), "w": t(w)}
    if x.is_floating_point():
        rec["dx"] = t(x.grad)
    rec["params"] = {k: t(v) for k, v in params.items()}
    rec["grads"] = {k: t(v.grad) for k, v in params.items()}
    if extra:
        rec.update(extra)
    return rec


layers = {}

lin = torch.nn.Linear(5, 3)
kernel = lin.weight.detach().t().contiguous().requires_grad_(True)
bias = lin.bias.detach().clone().requires_grad_(True)
layers["linear"] = run(lambda x: torch.nn.functional.linear(x, kernel.t(), bias),
                       torch.randn(4, 5), {"kernel": kernel, "bias": bias})

conv = torch.nn.Conv2d(2, 3, 3, stride=1, padding=1)
ck = conv.weight.detach().clone().requires_grad_(True)
cb = conv.bias.detach().clone().requires_grad_(True)
layers["conv2d"] = run(lambda x: torch.nn.functional.conv2d(x, ck, cb, 1, 1),
                       torch.randn(2, 2, 5, 5), {"kernel": ck, "bias": cb})

layers["maxpool2d"] = run(lambda x: torch.nn.functional.max_pool2d(x, 2, 2), torch.randn(2, 3, 4, 4), {})

ln = torch.nn.LayerNorm(6)
with torch.no_grad():
    ln.weight.copy_(torch.randn(6))
    ln.bias.copy_(torch.randn(6))
ls = ln.weight.detach().clone().requires_grad_(True)
lb = ln.bias.detach().clone().requires_grad_(True)
layers["layernorm"] = run(lambda x: torch.nn.functional.layer_norm(x, (6,), ls, lb, 1e-5),
                          torch.randn(3, 6), {"scale": ls, "bias": lb})

emb_w = torch.randn(10, 4).requires_grad_(True)
ids = torch.tensor([[1, 2, 3], [9, 0, 2]])
layers["embedding"] = run(lambda x: torch.nn.functional.embedding(x, emb_w), ids, {"embedding": emb_w})

layers["gelu"] = run(lambda x: torch.nn.functional.gelu(x), torch.randn(3, 4), {})
layers["relu"] = run(lambda x: torch.nn.functional.relu(x), torch.randn(3, 4), {})

# Causal multi-head attention through torch.nn.MultiheadAttention (batch_first).
mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
qkv_k = mha.in_proj_weight.detach().t().contiguous().requires_grad_(True)
qkv_b = mha.in_proj_bias.detach().clone().requires_grad_(True)
out_k = mha.out_proj.weight.detach().t().contiguous().requires_grad_(True)
out_b = mha.out_proj.bias.detach().clone().requires_grad_(True)
with torch.no_grad():
    mha.in_proj_weight.copy_(qkv_k.t())
    mha.in_proj_bias.copy_(qkv_b)
    mha.out_proj.weight.copy_(out_k.t())
    mha.out_proj.bias.copy_(out_b)


def mha_fn(x):
    T = x.shape[1]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    y, _ = torch.nn.functional.multi_head_attention_forward(
        x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), 8, 2,
        qkv_k.t(), qkv_b, None, None, False, 0.0, out_k.t(), out_b,
        training=False, need_weights=False, attn_mask=mask)
    return y.transpose(0, 1)


layers["mha"] = run(mha_fn, torch.randn(2, 5, 8),
                    {"qkv/kernel": qkv_k, "qkv/bias": qkv_b, "out/kernel": out_k, "out/bias": out_b})

# BatchNorm2d: 10 training steps, then running stats and an eval-mode output.
bn = torch.nn.BatchNorm2d(3, momentum=0.1, eps=1e-5)
xs = [torch.randn(4, 3, 2, 2) * (i + 1) + i for i in range(10)]
for x in xs:
    bn(x)
bn.eval()
xe = torch.randn(2, 3, 2, 2)
layers["batchnorm2d"] = {"xs": [t(x) for x in xs], "mean": t(bn.running_mean), "var": t(bn.running_var),
                         "x_eval": t(xe), "y_eval": t(bn(xe))}

with open("layers.json", "w") as f:
    json.dump(layers, f)

# Adam / AdamW parity: a 4-8-3 MLP's params, 200 steps of recorded gradients.
shapes = {"fc1/kernel": (4, 8), "fc1/bias": (8,), "fc2/kernel": (8, 3), "fc2/bias": (3,)}
init = {k: torch.randn(*s) for k, s in shapes.items()}
grads = [{k: torch.randn(*s) * 0.1 for k, s in shapes.items()} for _ in range(200)]
cases = {
    "adam": (torch.optim.Adam, dict(lr=1e-2)),
    "adam_l2": (torch.optim.Adam, dict(lr=1e-2, weight_decay=0.1)),
    "adam_amsgrad": (torch.optim.Adam, dict(lr=1e-2, amsgrad=True, betas=(0.8, 0.99), eps=1e-6)),
    "adamw": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
}
adam = {"init": {k: t(v) for k, v in init.items()}, "grads": [{k: t(v) for k, v in g.items()} for g in grads],
        "cases": {}}
for name, (cls, kw) in cases.items():
    params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    opt = cls(list(params.values()), **kw)
    for g in grads:
        for k, p in params.items():
            p.grad = g[k].clone()
        opt.step()
    adam["cases"][name] = {"options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()},
                           "final": {k: t(v) for k, v in params.items()},
                           "exp_avg": {k: t(opt.state[p]["exp_avg"]) for k, p in params.items()},
                           "exp_avg_sq": {k: t(opt.state[p]["exp_avg_sq"]) for k, p in params.items()}}
with open("adam.json", "w") as f:
    json.dump(adam, f)
print("wrote layers.json, adam.json")
