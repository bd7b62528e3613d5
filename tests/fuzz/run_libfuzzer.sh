#!/usr/bin/env bash
# Builds the fuzz targets with clang's libFuzzer (+ASan/UBSan) and fuzzes each for SECONDS
# (default 20) from the seed corpora. Usage: tests/fuzz/run_libfuzzer.sh [SECONDS]
# With NNX_FUZZ_RUNS=N each target instead runs N inputs from a fixed seed (-seed=1): the same
# inputs every time, which is what the test suite's smoke run uses.
# Needs Debian's clang and libclang-rt-14-dev (tools/setup.sh --with-test-deps installs them).
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-20}
CXX=${CLANGXX:-$(command -v clang++-14 || command -v clang++)}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flags=(-std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -I"$src")
"$CXX" "${flags[@]}" "$src/tests/fuzz/config_fuzz.cpp" "$src/tools/trainer/config.cpp" -lyaml-cpp -o "$out/config_fuzz"
"$CXX" "${flags[@]}" "$src/tests/fuzz/metadata_fuzz.cpp" "$src/checkpoint/format/metadata.cpp" -o "$out/metadata_fuzz"
for t in config metadata; do
  mkdir -p "$out/work-$t"
  rc=0
  if [[ -n "${NNX_FUZZ_RUNS:-}" ]]; then limit=(-runs="$NNX_FUZZ_RUNS" -seed=1); else limit=(-max_total_time="$secs"); fi
  "$out/${t}_fuzz" "${limit[@]}" -timeout=30 -print_final_stats=1 \
    "$out/work-$t" "$src/tests/fuzz/corpus/$t" > "$out/$t.log" 2>&1 || rc=$?
  grep -E "stat::number_of_executed_units|^==[0-9]+==|ERROR|SUMMARY" "$out/$t.log" || true
  if [[ $rc -ne 0 ]]; then
    tail -40 "$out/$t.log"
    echo "libFuzzer: $t target failed (exit $rc)"
    exit 1
  fi
done
if [[ -n "${NNX_FUZZ_RUNS:-}" ]]; then echo "libFuzzer: no crashes in $NNX_FUZZ_RUNS runs from seed 1 per target"
else echo "libFuzzer: no crashes in ${secs} s per target"; fi
