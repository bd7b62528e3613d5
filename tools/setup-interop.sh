#!/usr/bin/env bash
# Makes the ignored virtual environment .venv-interop with the Python libraries the interop tests
# check nnx-cpp's files against (jax on the CPU, flax, optax, orbax-checkpoint, safetensors, h5py,
# numpy), pinned exactly in tools/interop-requirements.txt. The test suite uses it where it
# exists; without it those tests skip, saying so. Idempotent: does nothing when the environment
# was made from the same requirements.
# Usage: tools/setup-interop.sh [--check]   (--check: exit 0 when it can run here, else print why
# and exit 3). Env: PYTHON (default python3, 3.11-3.13), NNX_INTEROP_VENV (default .venv-interop).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${NNX_INTEROP_VENV:-.venv-interop}
req=tools/interop-requirements.txt
python=${PYTHON:-python3}

why_not=""
if ! "$python" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 13) else 1)' 2>/dev/null; then
  why_not="$python is not Python 3.11-3.13 (jaxlib's wheels)"
elif [[ ! -f "$venv/.requirements" ]] && ! timeout 60 "$python" -m pip download --no-deps -q -d /tmp/nnx-pypi-probe.$$ zipp==4.1.2 >/dev/null 2>&1; then
  why_not="PyPI not reachable (pip download failed)"
fi
rm -rf /tmp/nnx-pypi-probe.$$
if [[ "${1:-}" == "--check" ]]; then
  [[ -z "$why_not" ]] && exit 0
  echo "$why_not"; exit 3
fi
[[ -z "$why_not" ]] || { echo "setup-interop: $why_not" >&2; exit 3; }

if cmp -s "$req" "$venv/.requirements"; then exit 0; fi
echo "setup-interop: making $venv from $req"
"$python" -m venv --clear "$venv"
"$venv/bin/python" -m pip install -q --no-deps -r "$req"
"$venv/bin/python" -c 'import jax, flax, optax, orbax.checkpoint, safetensors, h5py, numpy' \
  || { echo "setup-interop: the environment does not import" >&2; exit 1; }
cp "$req" "$venv/.requirements"
echo "setup-interop: $venv ready ($("$venv/bin/python" -c 'import jax, flax, orbax.checkpoint as o, safetensors as s; print(f"jax {jax.__version__}, flax {flax.__version__}, orbax-checkpoint {o.__version__}, safetensors {s.__version__}")'))"
