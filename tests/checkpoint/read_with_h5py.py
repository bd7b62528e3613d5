#!/usr/bin/python3
"""Reads an nnx-cpp checkpoint with h5py alone (docs/checkpoint-format.md), as a user in Python
would, and checks the values the C++ test wrote. Usage: read_with_h5py.py <step>/checkpoint.h5"""
import json
import sys

import h5py
import numpy as np

with h5py.File(sys.argv[1], "r") as f:
    k = f["params/fc1/kernel"]
    assert k.shape == (3, 4) and k.dtype == np.float32, (k.shape, k.dtype)
    assert (k[...] == np.arange(12, dtype=np.float32).reshape(3, 4)).all()
    assert k.attrs["nnx_kind"] == "Param" and k.attrs["dtype"] == "float32"
    assert list(k.attrs["shape"]) == [3, 4]
    e = f["params/emb/embedding"]
    assert e.attrs["dtype"] == "bfloat16" and e.dtype == np.uint16
    # bfloat16 -> float32: the stored 16 bits are the high half of a float32.
    as_f32 = (e[...].astype(np.uint32) << 16).view(np.float32)
    assert (as_f32 == np.arange(6, dtype=np.float32).reshape(2, 3)).all()
    assert f["params/step"][()] == 42
    assert json.loads(f["params"].attrs["nnx_paths"]) == ["fc1/kernel", "emb/embedding", "step"]
    cfg = f["json/config"][()]
    assert json.loads(cfg.decode() if isinstance(cfg, bytes) else cfg) == {"a": 1}
print("h5py read OK")
