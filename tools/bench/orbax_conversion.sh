#!/usr/bin/env bash
# Times nnx-ckpt's Orbax conversions of the 99M-param GPT (nnx-bench's GPT: char_gpt scaled to
# d_model 768, 14 layers, tied embeddings) against h5py writing and reading the same arrays:
#   1. nnx-train: 1 step, saved (params, Adam's moments: about 1.2 GB);
#   2. nnx-ckpt export-orbax of that step (nnx-cpp -> Orbax), then import-orbax of the Orbax
#      step into a fresh run (Orbax -> nnx-cpp);
#   3. tools/bench/h5py_roundtrip.py: the step's arrays written to one HDF5 file (fsync'd) and
#      read back with h5py, the plain anchor for a conversion's read + write.
# Reported only (no target): each conversion also starts Python and imports jax and orbax.
# Usage: tools/bench/orbax_conversion.sh [BUILD_DIR]   (needs .venv-interop: tools/setup-interop.sh)
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$src/build}/bin
py=$src/.venv-interop/bin/python
[[ -x $py ]] || { echo "orbax_conversion: no $py (tools/setup-interop.sh)"; exit 3; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gpt=(model.d_model=768 model.num_heads=12 model.num_layers=14 model.dropout=0 train.batch_size=1 data.block_size=64
     checkpoint.async=false)
"$bin/nnx-train" -q --config "$src/configs/char_gpt.yaml" "${gpt[@]}" train.max_steps=1 eval.max_batches=1 run.dir="$tmp/run" >/dev/null
secs() { local t0; t0=$(date +%s.%N); "$@" >/dev/null; echo "$(date +%s.%N) - $t0" | bc; }
export_s=$(secs "$bin/nnx-ckpt" export-orbax "$tmp/run" -o "$tmp/orbax" --python "$py")
import_s=$(secs "$bin/nnx-ckpt" import-orbax "$tmp/orbax" --config "$src/configs/char_gpt.yaml" "${gpt[@]}" run.dir="$tmp/back" --python "$py")
read -r h5_write h5_read bytes < <("$py" "$src/tools/bench/h5py_roundtrip.py" "$tmp/run/checkpoints/1/checkpoint.h5" "$tmp/plain.h5")
same=$("$py" -c "
import h5py, numpy as np, sys
a, b = h5py.File(sys.argv[1]), h5py.File(sys.argv[2])
names = []
a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and n.split('/')[0] in ('params', 'optimizer') else None)
bad = [n for n in names if not np.array_equal(a[n][()], b[n][()])]
print(f'{len(names)} params and optimizer arrays bitwise equal after the round trip' if not bad else f'DIFFER: {bad[:3]}')
" "$tmp/run/checkpoints/1/checkpoint.h5" "$tmp/back/checkpoints/1/checkpoint.h5")
printf '| conversion (GPT 99M, %.2f GB of arrays) | time | h5py anchor | ratio |\n|---|---|---|---|\n' "$(echo "$bytes / 1000000000" | bc -l)"
printf '| export-orbax (nnx-cpp -> Orbax) | %.2f s | h5py read + write %.2f s | %.2f |\n' "$export_s" "$(echo "$h5_read + $h5_write" | bc)" "$(echo "$export_s / ($h5_read + $h5_write)" | bc -l)"
printf '| import-orbax (Orbax -> nnx-cpp) | %.2f s | h5py read + write %.2f s | %.2f |\n' "$import_s" "$(echo "$h5_read + $h5_write" | bc)" "$(echo "$import_s / ($h5_read + $h5_write)" | bc -l)"
echo "($same; h5py write $h5_write s, read $h5_read s)"
