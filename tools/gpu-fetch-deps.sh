#!/usr/bin/env bash
# Run on a machine with Debian 12's package archive (the CPU machine): fills gpu-deps/ (ignored by
# git, carried to the GPU machine beside the repository) with what tools/gpu-check.sh needs there,
# where there is no network: the Debian packages of the build's dependencies other than libtorch
# (extracted with dpkg -x / ar into a prefix, never into /), and the Fashion-MNIST files.
# Usage: tools/gpu-fetch-deps.sh [DEST]   (default: gpu-deps; about 45 MB with the dataset)
set -euo pipefail
dest=${1:-gpu-deps}
mkdir -p "$dest/debs" "$dest/fallback-debs" "$dest/fashion-mnist"
# Build dependencies (headers, CMake configs, static and shared libraries).
(cd "$dest/debs" && apt-get download \
  libhdf5-dev libhdf5-103-1 libhdf5-hl-100 libhdf5-cpp-103-1 libhdf5-hl-cpp-100 libsz2 libaec0 libaec-dev \
  libyaml-cpp-dev libyaml-cpp0.7 libgtest-dev googletest nlohmann-json3-dev libxxhash-dev libxxhash0 \
  libcli11-dev libgloo-dev zlib1g-dev libbenchmark-dev libbenchmark1debian libspdlog-dev libspdlog1.10 \
  libfmt-dev libfmt9)
# HDF5's runtime needs libcurl and libssl; used only for sonames the GPU machine lacks (gpu-check.sh
# links those alone into its library path, so the machine's own copies win where it has them).
(cd "$dest/fallback-debs" && apt-get download \
  libcurl4 libssl3 libbrotli1 libcom-err2 libffi8 libgmp10 libgnutls30 libgssapi-krb5-2 libhogweed6 libidn2-0 \
  libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 libldap-2.5-0 libnettle8 libnghttp2-14 libp11-kit0 libpsl5 \
  librtmp1 libsasl2-2 libsasl2-modules-db libssh2-1 libtasn1-6 libunistring2)
cp /usr/share/datasets/fashion-mnist/*.gz "$dest/fashion-mnist/"
du -sh "$dest"
