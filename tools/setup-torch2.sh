#!/usr/bin/env bash
# Makes the ignored virtual environment .venv-torch2 with PyPI's torch 2.15.0 (a CUDA wheel) and the
# CUDA libraries its libtorch*.so load, pinned in tools/torch2-requirements.txt; the torch2 build
# (tools/build.sh --torch2, CMake preset torch2) compiles and links against it.
# Each CUDA package comes from the machine's CUDA toolkit when the toolkit holds exactly the pinned
# version (its dist-info/ says which), otherwise from PyPI; the table printed says which for each.
# Idempotent: does nothing when the environment was made from the same requirements. The wheels stay
# in ~/.cache/nnx-cpp/wheels (NNX_WHEEL_CACHE), so a second environment downloads nothing.
# Usage: tools/setup-torch2.sh [--check]   (--check: exit 0 when it can run here, else print why and exit 3)
# Env: PYTHON (default python3, 3.10-3.14), CUDA_HOME (default /usr/local/cuda), NNX_TORCH2_VENV,
# NNX_WHEEL_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${NNX_TORCH2_VENV:-.venv-torch2}
req=tools/torch2-requirements.txt
cuda_home=${CUDA_HOME:-/usr/local/cuda}
python=${PYTHON:-python3}
wheels=${NNX_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nnx-cpp/wheels}

# What the build needs of the machine: nvcc (Torch's CMake config compiles a CUDA probe) and PyPI.
why_not=""
if ! command -v nvcc >/dev/null && [[ ! -x "$cuda_home/bin/nvcc" ]]; then
  why_not="no CUDA toolkit (nvcc not on PATH nor in $cuda_home/bin)"
elif [[ ! -f "$venv/.requirements" ]] && ! timeout 60 "$python" -m pip download --no-deps -q -d /tmp/nnx-pypi-probe.$$ typing_extensions==4.16.0 >/dev/null 2>&1; then
  why_not="PyPI not reachable (pip download failed)"
fi
rm -rf /tmp/nnx-pypi-probe.$$
if [[ "${1:-}" == "--check" ]]; then
  [[ -z "$why_not" ]] && exit 0
  echo "$why_not"; exit 3
fi
[[ -z "$why_not" ]] || { echo "setup-torch2: $why_not" >&2; exit 3; }

if cmp -s "$req" "$venv/.requirements"; then exit 0; fi
echo "setup-torch2: making $venv from $req"
"$python" -m venv --clear "$venv"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

from_pypi=(); from_toolkit=()
printf 'setup-torch2: %-24s %-14s %-26s %s\n' package pinned "toolkit ($cuda_home)" source
while read -r line; do
  [[ -z "$line" || "$line" == \#* ]] && continue
  name=${line%%==*}; version=${line#*==}
  dist=$(echo "$name" | tr 'A-Z-' 'a-z_')
  if [[ -d "$cuda_home/dist-info/$dist-$version.dist-info" ]]; then
    from_toolkit+=("$dist-$version")
    source=toolkit
  else
    from_pypi+=("$line")
    source=PyPI
  fi
  if [[ $name == nvidia-* ]]; then
    have=$(ls -d "$cuda_home"/dist-info/"$dist"-*.dist-info 2>/dev/null | sed -E "s|.*/$dist-(.*)\.dist-info|\1|" | head -1 || true)
    printf 'setup-torch2: %-24s %-14s %-26s %s\n' "$name" "$version" "${have:-none}" "$source"
  fi
done < "$req"

# Wheels are kept in a cache of their own (pip's HTTP cache stores nothing behind this machine's
# proxy): a second environment on the same machine downloads nothing.
"$venv/bin/python" -m pip download -q --no-deps --only-binary=:all: -d "$wheels" "${from_pypi[@]}"
"$venv/bin/python" -m pip install -q --no-deps --no-index --find-links "$wheels" "${from_pypi[@]}"
# A toolkit package: its libraries linked where the wheel would have put them (its RECORD names
# them relative to site-packages), so torch's RPATH ($ORIGIN/../../nvidia/...) finds them.
for d in "${from_toolkit[@]}"; do
  grep -oE '^[^,]+\.so[.0-9]*' "$cuda_home/dist-info/$d.dist-info/RECORD" | while read -r so; do
    mkdir -p "$site/$(dirname "$so")"
    ln -sf "$cuda_home/lib/$(basename "$so")" "$site/$so"
  done
done
# The preset's CMAKE_PREFIX_PATH: the package root above torch.utils.cmake_prefix_path (share/cmake),
# so that TorchConfig's find_library() finds the wheel's lib/ before any system libtorch.
"$venv/bin/python" -c 'import os, torch.utils; print(os.path.dirname(os.path.dirname(torch.utils.cmake_prefix_path)))' \
  | xargs -I{} ln -sfn {} "$venv/torch-prefix"
cp "$req" "$venv/.requirements"
echo "setup-torch2: torch $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))') in $venv ($(du -sh "$venv" | cut -f1))"
