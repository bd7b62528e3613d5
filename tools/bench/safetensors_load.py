"""Python anchor of nnx-bench's safetensors row: safetensors.numpy.load_file(PATH), timed after
the imports (the interop environment's python, tools/setup-interop.sh).
Usage: safetensors_load.py PATH -> prints seconds."""
import sys
import time

import safetensors.numpy

t0 = time.perf_counter()
tensors = safetensors.numpy.load_file(sys.argv[1])
elapsed = time.perf_counter() - t0
assert len(tensors) > 0
print(elapsed)
