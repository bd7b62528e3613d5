"""Plain anchor of tools/bench/orbax_conversion.sh: every array of an nnx-cpp checkpoint.h5 (read
first, untimed) written to OUT.h5 with h5py and fsync'd, then read back.
Usage: h5py_roundtrip.py CHECKPOINT.h5 OUT.h5 -> prints "write_s read_s bytes"."""
import os
import sys
import time

import h5py
import numpy as np

arrays = {}
with h5py.File(sys.argv[1], "r") as f:
    f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) and obj.ndim > 0 else None)
t0 = time.perf_counter()
with h5py.File(sys.argv[2], "w") as f:
    for name, a in arrays.items():
        f.create_dataset(name, data=a)
fd = os.open(sys.argv[2], os.O_RDONLY)
os.fsync(fd)
os.close(fd)
t1 = time.perf_counter()
with h5py.File(sys.argv[2], "r") as f:
    back = {name: f[name][()] for name in arrays}
t2 = time.perf_counter()
print(t1 - t0, t2 - t1, sum(a.nbytes for a in back.values()))
