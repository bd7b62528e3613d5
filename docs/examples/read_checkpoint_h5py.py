#!/usr/bin/python3
"""Reads an nnx-cpp checkpoint with h5py and numpy only (docs/checkpoint-format.md).

Usage: read_checkpoint_h5py.py RUN_DIR_OR_STEP_DIR
Prints every item's variables (path, kind, shape, dtype) and the JSON items, checks each
dataset's checksum-free invariants, and returns the params as numpy arrays (bf16 -> float32).
"""
import json
import os
import sys

import h5py
import numpy as np


def step_dir(path):
    """A step directory: PATH itself, or the latest committed step under PATH[/checkpoints]."""
    if os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA")):
        return path
    root = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
    steps = [int(d) for d in os.listdir(root)
             if d.isdigit() and os.path.exists(os.path.join(root, d, "_CHECKPOINT_METADATA"))]
    if not steps:
        sys.exit(f"no committed checkpoint under {path}")
    return os.path.join(root, str(max(steps)))


def to_numpy(dset):
    """The logical array of a dataset: bf16 from its raw uint16 bits, bool from uint8."""
    x = dset[()]
    kind = dset.attrs["dtype"]
    if kind == "bfloat16":
        return (np.asarray(x).astype(np.uint32) << 16).view(np.float32)
    if kind == "bool":
        return np.asarray(x).astype(bool)
    return np.asarray(x)


def read_item(f, item):
    paths = json.loads(f[item].attrs["nnx_paths"])  # State order
    out = {}
    for p in paths:
        d = f[f"{item}/{p}"]
        arr = to_numpy(d)
        assert list(arr.shape) == list(d.attrs["shape"]), p
        out[p] = (d.attrs["nnx_kind"], arr)
    return out


def main():
    sd = step_dir(sys.argv[1])
    meta = json.load(open(os.path.join(sd, "_CHECKPOINT_METADATA")))
    assert meta["format_version"] == 1, meta["format_version"]
    print(f"step {meta.get('step')} ({sd}), items: {', '.join(meta['items'])}")
    with h5py.File(os.path.join(sd, "checkpoint.h5"), "r") as f:
        for item, kind in meta["items"].items():
            if kind == "state":
                variables = read_item(f, item)
                print(f"{item}: {len(variables)} variables")
                for p, (k, a) in variables.items():
                    print(f"  {p:40s} {k:10s} {str(list(a.shape)):16s} {a.dtype}")
            else:
                value = f[f"json/{item}"][()]
                value = json.loads(value.decode() if isinstance(value, bytes) else value)
                print(f"json/{item}: {type(value).__name__} of {len(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
