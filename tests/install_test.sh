#!/usr/bin/env bash
# Installs nnx-cpp from BUILD_DIR into a temporary prefix, then configures, builds and runs
# examples/custom_module and examples/seed_workflow against the install tree (find_package(nnx),
# headers as <nnx/...>). The seed workflow's C++ must stay within 1.3 x its Python's lines.
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
test ! -e "$tmp/prefix/include/checkpoint"  # no generic top-level paths in a user's include tree
example=examples/seed_workflow
cmake -S "$source_dir/$example" -B "$tmp/seed" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$tmp/prefix" > "$tmp/seed-configure.log" || { cat "$tmp/seed-configure.log"; exit 1; }
cmake --build "$tmp/seed" > "$tmp/seed-build.log" || { cat "$tmp/seed-build.log"; exit 1; }
"$tmp/seed/seed_workflow" "$tmp/seed-ckpt"
test -f "$tmp/seed-ckpt/4/checkpoint.h5" && test ! -e "$tmp/seed-ckpt/1"  # max_to_keep=3 kept 2, 3, 4
py=$(grep -c '^ *// py:' "$source_dir/$example/main.cpp")
cpp=$(grep -v '^ *//' "$source_dir/$example/main.cpp" | grep -c -v '^ *$')
echo "seed workflow: $cpp lines of C++ for $py lines of Python"
(( cpp * 10 <= py * 13 )) || { echo "seed workflow: over 1.3 x the Python"; exit 1; }
echo "install test OK"
