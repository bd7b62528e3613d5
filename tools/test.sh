#!/usr/bin/env bash
# The README's test command: install, build and run the whole default test suite in two builds:
#   build/         Debian's libtorch 1.13 (CPU), always;
#   build-torch2/  PyPI's torch 2.15 with the CUDA path compiled (tools/build.sh --torch2), where the
#                  CUDA toolkit and PyPI are present (CI's machine); elsewhere one line says why not.
#                  NNX_TORCH2=0 skips it, NNX_TORCH2=1 makes its absence an error.
# Long tests (label "long": accuracy on Fashion-MNIST, a 4.5 GiB tensor) are excluded; the stress
# tests run with a few trials (NNX_STRESS_TRIALS for more, docs/development.md). Long ones:
#   ctest --test-dir build -L long --output-on-failure
set -uo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s); rc=0
run_suite() {  # build dir
  ctest --test-dir "$1" -LE long --output-on-failure -j 2 --timeout 600
}
tools/build.sh --with-test-deps || exit 1
# The Python libraries the interop tests check files against (jax, flax, orbax, safetensors):
# where PyPI is reachable; elsewhere those tests skip, saying why.
if why=$(tools/setup-interop.sh --check); then tools/setup-interop.sh || rc=1
else echo "test.sh: no interop environment ($why): the safetensors/Orbax interop tests skip"; fi
run_suite "${NNX_BUILD_DIR:-build}" || rc=1
t1=$(date +%s)
echo "test.sh: libtorch 1.13 build and suite: $(( t1 - t0 )) s"

if [[ "${NNX_TORCH2:-auto}" == 0 ]]; then
  echo "test.sh: skipped the torch2 build (libtorch 2.15, CUDA path): NNX_TORCH2=0"
elif why=$(tools/setup-torch2.sh --check); then
  if tools/build.sh --torch2; then run_suite build-torch2 || rc=1; else rc=1; fi
  echo "test.sh: torch 2.15 build and suite: $(( $(date +%s) - t1 )) s"
else
  echo "test.sh: skipped the torch2 build (libtorch 2.15, CUDA path): $why"
  [[ "${NNX_TORCH2:-auto}" == 1 ]] && rc=1
fi
echo "test.sh: $(( $(date +%s) - t0 )) s in all, $([[ $rc == 0 ]] && echo passed || echo FAILED)"
exit $rc
