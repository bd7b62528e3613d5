#!/usr/bin/env bash
# Installs nnx-cpp from BUILD_DIR into a temporary prefix, then configures, builds and runs
# examples/custom_module against the install tree (find_package(nnx)).
set -euo pipefail
build_dir=$1; source_dir=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build_dir" --prefix "$tmp/prefix" > "$tmp/install.log"
cmake -S "$source_dir/examples/custom_module" -B "$tmp/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$tmp/prefix" > "$tmp/configure.log" || { cat "$tmp/configure.log"; exit 1; }
cmake --build "$tmp/build" > "$tmp/build.log" || { cat "$tmp/build.log"; exit 1; }
"$tmp/build/custom_module" "$tmp/ckpt"
test -f "$tmp/ckpt/100/checkpoint.h5"
echo "install test OK"
