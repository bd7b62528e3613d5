#!/usr/bin/env bash
# Installs what is missing (tools/setup.sh), configures and builds into build/ (programs in build/bin/).
# Usage: tools/build.sh [--with-test-deps] [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."
setup_args=()
if [[ "${1:-}" == "--with-test-deps" ]]; then setup_args+=(--with-test-deps); shift; fi
tools/setup.sh "${setup_args[@]}"
BUILD_DIR=${NNX_BUILD_DIR:-build}
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
fi
cmake --build "$BUILD_DIR" -j "${NNX_JOBS:-2}"
