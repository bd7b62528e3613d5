#!/usr/bin/env bash
# The corrupt-checkpoint experiment of issue 18, end to end: flip 1-8 random bytes of a tiny
# run's checkpoint.h5, then run `nnx-ckpt show` and an nnx-train resume on the copy, TRIALS
# times (default 200). Counts crashes (death by a signal), silent resumes (exit 0 from a
# corrupt file) and clean errors (exit 1 or 2 with one "error:" line). Deterministic (seeded).
# Usage: tests/tools/flip_bytes.sh [TRIALS] [BUILD_DIR]
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
trials=${1:-200}
bin=${2:-$src/build}/bin
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cfg="$src/configs/tiny_synthetic.yaml"
"$bin/nnx-train" --config "$cfg" run.dir="$work/run" train.max_steps=20 checkpoint.save_interval_steps=20 \
  checkpoint.async=false > /dev/null
h5="$work/run/checkpoints/20/checkpoint.h5"
size=$(stat -c %s "$h5")
crashes=0 silent=0 clean=0
RANDOM=7
for ((t = 0; t < trials; t++)); do
  rm -rf "$work/c" && cp -r "$work/run" "$work/c"
  f="$work/c/checkpoints/20/checkpoint.h5"
  for ((k = 0; k < 1 + RANDOM % 8; k++)); do
    off=$(( (RANDOM * 32768 + RANDOM) % size ))
    byte=$(od -An -tu1 -j "$off" -N1 "$f" | tr -d ' ')
    printf "$(printf '\\%03o' $(( byte ^ (1 + RANDOM % 255) )))" | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
  done
  for cmd in "$bin/nnx-ckpt show $work/c/checkpoints" \
             "$bin/nnx-train --config $cfg run.dir=$work/c train.max_steps=25 checkpoint.async=false"; do
    rc=0
    $cmd > "$work/out" 2>&1 || rc=$?
    if (( rc > 128 )); then crashes=$((crashes + 1)); echo "CRASH (exit $rc): $cmd"; tail -3 "$work/out"
    elif (( rc == 0 )); then silent=$((silent + 1)); echo "SILENT: $cmd"
    else clean=$((clean + 1)); fi
  done
done
echo "flip_bytes: $trials corrupted checkpoints, $((2 * trials)) runs: $clean clean errors, $silent silent, $crashes crashes"
(( crashes == 0 && silent == 0 ))
