#!/usr/bin/env bash
# Builds the fuzz targets (config, metadata, checkpoint, safetensors) with clang's libFuzzer
# (+ASan/UBSan) and fuzzes each for SECONDS (default 20) from the seed corpora.
# Usage: tests/fuzz/run_libfuzzer.sh [SECONDS]
# The checkpoint and safetensors targets link the static libraries of the build in
# NNX_BUILD_DIR (default build/): its harness is instrumented, the reader code and HDF5 are not,
# so its guidance is coarser than the other targets'; crashes anywhere are still caught.
# With NNX_FUZZ_RUNS=N each target instead runs N inputs from a fixed seed (-seed=1): the same
# inputs every time, which is what the test suite's smoke run uses.
# Needs Debian's clang and libclang-rt-14-dev (tools/setup.sh --with-test-deps installs them).
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-20}
CXX=${CLANGXX:-$(command -v clang++-14 || command -v clang++)}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mkdir -p "$out/include/nnx"  # <nnx/...> includes, laid out as the build and install lay them out
for part in framework optim checkpoint models nnx.h; do ln -s "$src/$part" "$out/include/nnx/$part"; done
ln -s "$src/tools/trainer" "$out/include/nnx/trainer"
flags=(-std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -I"$src" -I"$out/include")
"$CXX" "${flags[@]}" "$src/tests/fuzz/config_fuzz.cpp" "$src/tools/trainer/config.cpp" "$src/tools/trainer/registry.cpp" -lyaml-cpp -o "$out/config_fuzz"
"$CXX" "${flags[@]}" "$src/tests/fuzz/metadata_fuzz.cpp" "$src/checkpoint/format/metadata.cpp" -o "$out/metadata_fuzz"
targets=(config metadata)
build=${NNX_BUILD_DIR:-$src/build}
# The libtorch that build was configured with (the test suite passes it; Debian's by default) and
# the C++ standard it needs (libtorch 2.x: C++20).
torch=${NNX_TORCH_PREFIX:-/usr}
torch_std=${NNX_TORCH_CXX_STD:-c++17}
torch_cuda=()  # a CUDA libtorch: the framework's CUDA path (NNX_WITH_CUDA) needs its CUDA libraries
[[ -f "$torch/lib/libtorch_cuda.so" ]] && torch_cuda=(-ltorch_cuda -lc10_cuda)
torch_inc=()  # never -isystem /usr/include: it breaks libstdc++'s #include_next <stdlib.h>
[[ "$torch" != /usr ]] && torch_inc=(-isystem "$torch/include")
if [[ -f "$build/checkpoint/libnnx_checkpoint.a" && -f "$build/framework/libnnx_framework.a" ]]; then
  "$CXX" "${flags[@]}" -std="$torch_std" -I/usr/include/hdf5/serial "${torch_inc[@]}" \
    -isystem "$torch/include/torch/csrc/api/include" \
    "$src/tests/fuzz/checkpoint_fuzz.cpp" "$build/checkpoint/libnnx_checkpoint.a" "$build/framework/libnnx_framework.a" \
    -L/usr/lib/x86_64-linux-gnu/hdf5/serial -L"$torch/lib" -Wl,-rpath,"$torch/lib" \
    -lhdf5 -ltorch -ltorch_cpu "${torch_cuda[@]}" -lc10 -lxxhash -lspdlog -lfmt -lz -lpthread \
    -o "$out/checkpoint_fuzz"
  # safetensors: its reader compiled here, instrumented; the rest from the same libraries.
  "$CXX" "${flags[@]}" -std="$torch_std" "${torch_inc[@]}" \
    "$src/tests/fuzz/safetensors_fuzz.cpp" "$src/checkpoint/format/safetensors.cpp" \
    "$build/checkpoint/libnnx_checkpoint.a" "$build/framework/libnnx_framework.a" \
    -L"$torch/lib" -Wl,-rpath,"$torch/lib" -ltorch -ltorch_cpu "${torch_cuda[@]}" -lc10 -lxxhash -lspdlog -lfmt -lpthread \
    -o "$out/safetensors_fuzz"
  targets+=(checkpoint safetensors)
else
  echo "libFuzzer: no static libraries in $build; the checkpoint target is skipped"
fi
for t in "${targets[@]}"; do
  mkdir -p "$out/work-$t"
  rc=0
  runs=${NNX_FUZZ_RUNS:-}
  [[ $t == checkpoint && -n "$runs" ]] && runs=${NNX_FUZZ_RUNS_CHECKPOINT:-$runs}  # inputs of ~270 KB: fewer
  if [[ -n "$runs" ]]; then limit=(-runs="$runs" -seed=1); else limit=(-max_total_time="$secs"); fi
  # HDF5 (not instrumented) leaks a few hundred bytes when it gives up on a malformed file: the
  # checkpoint target leaves leak detection off; crashes and ASan errors still fail it.
  extra=() asan=${ASAN_OPTIONS:-}
  [[ $t == checkpoint ]] && extra=(-detect_leaks=0) && asan="detect_leaks=0${asan:+:$asan}"
  ASAN_OPTIONS=$asan "$out/${t}_fuzz" "${limit[@]}" "${extra[@]}" -timeout=30 -print_final_stats=1 \
    "$out/work-$t" "$src/tests/fuzz/corpus/$t" > "$out/$t.log" 2>&1 || rc=$?
  grep -E "stat::number_of_executed_units|^==[0-9]+==|ERROR|SUMMARY" "$out/$t.log" || true
  if [[ $rc -ne 0 ]]; then
    tail -40 "$out/$t.log"
    echo "libFuzzer: $t target failed (exit $rc)"
    exit 1
  fi
done
if [[ -n "${NNX_FUZZ_RUNS:-}" ]]; then echo "libFuzzer: no crashes in $NNX_FUZZ_RUNS runs from seed 1 per target (checkpoint: ${NNX_FUZZ_RUNS_CHECKPOINT:-$NNX_FUZZ_RUNS})"
else echo "libFuzzer: no crashes in ${secs} s per target"; fi
