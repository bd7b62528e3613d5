#!/usr/bin/python3
"""h5py anchor of nnx-bench's save row: writes N float32 arrays of M elements to PATH with
h5py, closes and fsyncs the file. Usage: h5py_save.py PATH N M -> prints seconds."""
import os
import sys
import time

import h5py
import numpy as np

path, n, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
arrays = [np.random.default_rng(i).standard_normal(m, dtype=np.float32) for i in range(n)]
t0 = time.perf_counter()
with h5py.File(path, "w") as f:
    for i, a in enumerate(arrays):
        f.create_dataset(f"params/layer{i}/kernel", data=a)
fd = os.open(path, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
print(time.perf_counter() - t0)
