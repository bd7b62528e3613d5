#!/usr/bin/env bash
# Installs the Debian packages nnx-cpp needs, and makes OpenBLAS the libblas.so.3 provider.
# Idempotent: when everything is present it installs nothing and changes nothing.
# Usage: tools/setup.sh [--with-test-deps]   (test deps: python3-torch, python3-h5py)
set -euo pipefail

pkgs=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libgloo-dev libopenblas0-pthread
  libhdf5-dev libyaml-cpp-dev nlohmann-json3-dev libcli11-dev libxxhash-dev zlib1g-dev
  libgtest-dev libgmock-dev libbenchmark-dev libspdlog-dev
  dataset-fashion-mnist gnuplot-nox
)
if [[ "${1:-}" == "--with-test-deps" ]]; then
  pkgs+=(python3-torch python3-h5py python3-numpy clang-14 libclang-rt-14-dev)
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

if (( ${#missing[@]} )); then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# OpenBLAS as libblas.so.3: the reference BLAS is ~25x slower on a 1024^3 float matmul.
arch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
for lib in libblas.so.3 liblapack.so.3; do
  want="/usr/lib/${arch}/openblas-pthread/${lib}"
  link="/usr/lib/${arch}/${lib}"
  if [[ -e "$want" ]] && [[ "$(update-alternatives --query "${lib}-${arch}" 2>/dev/null | awk '/^Value:/{print $2}')" != "$want" ]]; then
    echo "setup: selecting OpenBLAS for ${lib}"
    $SUDO update-alternatives --set "${lib}-${arch}" "$want" >/dev/null
  fi
done
exit 0
