// The one place where libtorch 1.13 (Debian, CPU) and libtorch 2.x (CUDA builds) differ.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <torch/version.h>

#include <cstdint>

#define NNX_TORCH_VERSION_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace nnx::compat {

/// A generator for `device` seeded with `seed` (CPU: Philox-free mt19937 of ATen's CPU generator;
/// CUDA: a new Philox generator). Throws nnx::Error for devices this build cannot serve.
at::Generator make_generator(const c10::Device& device, uint64_t seed);

/// True when this build links a CUDA libtorch and at least one GPU is visible.
bool cuda_available();

/// Number of visible CUDA devices (0 without CUDA).
int cuda_device_count();

}  // namespace nnx::compat
