#!/usr/bin/env bash
# The README's test command: install, build, run the whole default test suite.
# Long tests (label "long": accuracy on real data, stress) are excluded; run them with
#   ctest --test-dir build -L long --output-on-failure
set -euo pipefail
cd "$(dirname "$0")/.."
tools/build.sh --with-test-deps
ctest --test-dir "${NNX_BUILD_DIR:-build}" -LE long --output-on-failure -j 2 --timeout 600
