"""The Python side of the safetensors interop tests (run with .venv-interop's python).

  check-export FILE.safetensors CHECKPOINT.h5 ITEM  every tensor of FILE, loaded by
      safetensors.numpy (and safetensors.flax for bf16), equals h5py's read of ITEM/<path> bitwise
  write-dtypes FILE   f32, f16, i64, bool and bf16 tensors (safetensors.numpy), values the C++
      test rebuilds exactly
  write-mlp FILE SEED the tiny_synthetic MLP's params as a PyTorch-named state dict
Prints one line and exits 0 on success; an assertion names what differs.
"""
import sys

import numpy as np


def check_export(path, h5_path, item):
    import h5py
    import safetensors.flax
    import safetensors.numpy

    loaded = safetensors.numpy.load_file(path)  # bf16 through ml_dtypes (safetensors 0.8)
    as_flax = safetensors.flax.load_file(path)  # and through jax, which has bf16 natively
    with h5py.File(h5_path, "r") as f:
        for name, arr in loaded.items():
            stored = f[item + "/" + name.replace(".", "/")][()]
            assert arr.shape == stored.shape, (name, arr.shape, stored.shape)
            if arr.dtype.name == "bfloat16":  # stored as its raw 16 bits (docs/checkpoint-format.md)
                assert arr.view(np.uint16).tobytes() == stored.astype(np.uint16).tobytes(), name
                assert np.asarray(as_flax[name]).view(np.uint16).tobytes() == stored.astype(np.uint16).tobytes(), name
            elif arr.dtype == np.bool_:  # stored as uint8 0/1
                assert np.array_equal(arr.astype(np.uint8), stored), name
            else:
                assert arr.dtype == stored.dtype, (name, arr.dtype, stored.dtype)
                assert arr.tobytes() == stored.tobytes(), name
    print(f"safetensors export: {len(loaded)} tensors ({', '.join(sorted({a.dtype.name for a in loaded.values()}))}) "
          "equal h5py's read bitwise")


def write_dtypes(path):
    import ml_dtypes
    import safetensors.numpy

    tensors = {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4) * np.float32(0.5),
        "f16": np.arange(6, dtype=np.float16) * np.float16(0.25),
        "i64": np.arange(5, dtype=np.int64) - 2,
        "bool": np.arange(7) % 2 == 0,
        "bf16": (np.arange(4, dtype=np.float32) * np.float32(1.5)).astype(ml_dtypes.bfloat16),
    }
    safetensors.numpy.save_file(tensors, path, metadata={"written_by": "safetensors.numpy"})
    print(f"wrote {len(tensors)} tensors to {path}")


def write_mlp(path, seed):
    import safetensors.numpy

    rng = np.random.default_rng(int(seed))
    shapes = {"1.weight": (32, 16), "1.bias": (32,), "3.weight": (4, 32), "3.bias": (4,)}
    safetensors.numpy.save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    {"check-export": check_export, "write-dtypes": write_dtypes, "write-mlp": write_mlp}[sys.argv[1]](*sys.argv[2:])
