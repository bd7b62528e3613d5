#!/usr/bin/env bash
# Installs what is missing (tools/setup.sh), configures and builds.
# Usage: tools/build.sh [--with-test-deps] [--torch2] [extra cmake args...]
#   default:  Debian's libtorch 1.13 (CPU) into build/ (programs in build/bin/)
#   --torch2: PyPI's torch 2.15 (CUDA 13.2 wheel; tools/setup-torch2.sh makes .venv-torch2) with
#             the CUDA path on (NNX_WITH_CUDA), CMake preset torch2, into build-torch2/
set -euo pipefail
cd "$(dirname "$0")/.."
setup_args=(); torch2=0
while [[ "${1:-}" == --with-test-deps || "${1:-}" == --torch2 ]]; do
  [[ "$1" == --with-test-deps ]] && setup_args+=(--with-test-deps)
  [[ "$1" == --torch2 ]] && torch2=1
  shift
done
tools/setup.sh "${setup_args[@]}"
if (( torch2 )); then
  tools/setup-torch2.sh
  BUILD_DIR=build-torch2
  [[ -f "$BUILD_DIR/CMakeCache.txt" ]] || cmake --preset torch2 "$@"
else
  BUILD_DIR=${NNX_BUILD_DIR:-build}
  [[ -f "$BUILD_DIR/CMakeCache.txt" ]] || cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
fi
cmake --build "$BUILD_DIR" -j "${NNX_JOBS:-2}"
