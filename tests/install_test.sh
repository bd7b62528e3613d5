#!/usr/bin/env bash
# Installs nnx-cpp from BUILD_DIR into a temporary prefix, then configures, builds and runs
# examples/custom_module, examples/seed_workflow, examples/custom_trainer and examples/multi_tier
# against the install tree (find_package(nnx), headers as <nnx/...>). The seed workflow's C++
# must stay within 1.3 x its Python's lines. The custom trainer (a model and dataset nnx-train
# does not have) trains from its YAML file, is SIGKILLed and resumes to the same params as an
# uninterrupted run.
# examples/multi_tier resumes 2 ranks from a peer's replica after a kill and a wiped local folder.
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

example=examples/custom_trainer
cmake -S "$source_dir/$example" -B "$tmp/ct" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$tmp/prefix" > "$tmp/ct-configure.log" || { cat "$tmp/ct-configure.log"; exit 1; }
cmake --build "$tmp/ct" > "$tmp/ct-build.log" || { cat "$tmp/ct-build.log"; exit 1; }
# Sync saves: the SIGKILL after step 130 comes milliseconds after step 100's save, and an async
# save can still be committing then (seen once under load: the rerun started from scratch).
trainer=("$tmp/ct/custom_trainer" --config "$source_dir/$example/spirals.yaml" -q train.max_steps=200 checkpoint.async=false)
"${trainer[@]}" run.dir="$tmp/ct-whole" > "$tmp/ct-whole.log" || { cat "$tmp/ct-whole.log"; exit 1; }
rc=0; "${trainer[@]}" run.dir="$tmp/ct-killed" --crash-after-step 130 > "$tmp/ct-killed.log" 2>&1 || rc=$?
(( rc == 137 )) || { echo "custom trainer: expected SIGKILL (137) after step 130, got $rc"; cat "$tmp/ct-killed.log"; exit 1; }
"${trainer[@]}" run.dir="$tmp/ct-killed" > "$tmp/ct-resumed.log" || { cat "$tmp/ct-resumed.log"; exit 1; }
grep -q "step 200 (100 this run" "$tmp/ct-resumed.log" || { echo "custom trainer: the rerun did not resume from step 100"; cat "$tmp/ct-resumed.log"; exit 1; }
"$tmp/prefix/bin/nnx-ckpt" diff "$tmp/ct-whole" 200 "$tmp/ct-killed" 200 > "$tmp/ct-diff.log" \
  || { echo "custom trainer: nnx-ckpt diff found the resumed run's step 200 different (or failed)"; cat "$tmp/ct-diff.log"; exit 1; }
"$tmp/prefix/bin/nnx-ckpt" list "$tmp/ct-killed" | grep -q "best eval_accuracy" \
  || { echo "custom trainer: nnx-ckpt list names no best step"; "$tmp/prefix/bin/nnx-ckpt" list "$tmp/ct-killed"; exit 1; }
rc=0; "${trainer[@]}" run.dir="$tmp/ct-bad" model.width=0 2> "$tmp/ct-bad.log" || rc=$?
(( rc == 2 )) && grep -q "'model.width' = 0 is out of range" "$tmp/ct-bad.log" \
  || { echo "custom trainer: a bad registered key gave exit $rc"; cat "$tmp/ct-bad.log"; exit 1; }
echo "custom trainer: SIGKILL at step 130, resumed, params at step 200 equal an uninterrupted run's"

# The multi-tier CheckpointManager on 2 ranks: rank 1 SIGKILLed after step 13 (local steps every
# 2, persistent every 10), its local folder wiped (a replaced host); the rerun resumes from local
# step 12, rank 1's state from its replica on rank 0, and ends equal to an uninterrupted run.
example=examples/multi_tier
cmake -S "$source_dir/$example" -B "$tmp/mt" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$tmp/prefix" > "$tmp/mt-configure.log" || { cat "$tmp/mt-configure.log"; exit 1; }
cmake --build "$tmp/mt" > "$tmp/mt-build.log" || { cat "$tmp/mt-build.log"; exit 1; }
launch=("$tmp/prefix/bin/nnx-launch" --nproc 2 --)
"${launch[@]}" "$tmp/mt/multi_tier" "$tmp/mt-whole" "$tmp/mt-whole-local" > "$tmp/mt-whole.log" 2>&1 \
  || { cat "$tmp/mt-whole.log"; exit 1; }
rc=0; "${launch[@]}" "$tmp/mt/multi_tier" "$tmp/mt-killed" "$tmp/mt-killed-local" --crash-after 13 --crash-rank 1 \
  > "$tmp/mt-killed.log" 2>&1 || rc=$?
(( rc != 0 )) && test -d "$tmp/mt-killed-local/rank-1-of-2/12" \
  || { echo "multi-tier: expected rank 1 killed after step 13 with its local step 12 (exit $rc)"; cat "$tmp/mt-killed.log"; exit 1; }
rm -rf "$tmp/mt-killed-local/rank-1-of-2"
"${launch[@]}" "$tmp/mt/multi_tier" "$tmp/mt-killed" "$tmp/mt-killed-local" > "$tmp/mt-resumed.log" 2>&1 \
  || { cat "$tmp/mt-resumed.log"; exit 1; }
grep -q "resumed from step 12 (local tier)" "$tmp/mt-resumed.log" && grep -q "came from its replica on rank 0" "$tmp/mt-resumed.log" \
  || { echo "multi-tier: the rerun did not resume from the local tier's step 12 through rank 0's replica"; cat "$tmp/mt-resumed.log"; exit 1; }
test ! -e "$tmp/mt-killed-local/rank-0-of-2" || { echo "multi-tier: close() left the local tier"; exit 1; }
"$tmp/prefix/bin/nnx-ckpt" diff "$tmp/mt-whole" 20 "$tmp/mt-killed" 20 > "$tmp/mt-diff.log" \
  || { echo "multi-tier: the resumed run's step 20 differs from the uninterrupted run's"; cat "$tmp/mt-diff.log"; exit 1; }
echo "multi-tier: rank 1 killed and its local folder wiped; resumed from its replica, step 20 bit-exact"
echo "install test OK"
