// The one place where libtorch 1.13 (Debian, CPU) and libtorch 2.x (CUDA builds) differ.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/Stream.h>
#include <torch/version.h>

#include <cstdint>
#include <optional>

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

/// The device a process with local rank `local_rank` trains on, from the config's `device`:
/// "cpu"; "cuda" means cuda:(local_rank mod GPUs visible), torchrun's convention (with one GPU,
/// every rank shares it); "cuda:N" is taken as given. Throws nnx::Error for other names, or
/// for CUDA without a usable GPU in this build (naming the count visible).
c10::Device training_device(const std::string& name, int local_rank);

/// Makes `device` the current device of this thread (CUDA); nothing for the CPU.
void set_current_device(const c10::Device& device);

/// cuDNN's algorithm search (`benchmark`: fastest kernels, chosen per shape; not reproducible)
/// and deterministic algorithms (`deterministic`: what a bit-exact resume on a GPU needs).
/// Harmless in a build without cuDNN.
void set_cudnn_flags(bool benchmark, bool deterministic);

/// Autocast (mixed precision) for ops on `device_type` in lower precision `dtype` (bf16 on CPU
/// and CUDA) while alive; the previous setting comes back on destruction. libtorch 2.4 renamed
/// the per-device setters; this hides the difference.
class AutocastGuard {
 public:
  /// `dtype` nullopt: a guard that changes nothing.
  AutocastGuard(c10::DeviceType device_type, std::optional<at::ScalarType> dtype);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  c10::DeviceType type_;
  bool active_ = false;
  bool was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kFloat;
};

/// Blocks the calling thread until the work queued so far on `stream` has run (a no-op on the
/// CPU). libtorch 1.13's c10::Event cannot be waited for from the host; its streams can.
void synchronize_stream(const c10::Stream& stream);

/// The current stream of `device` on this thread (the CPU's default stream on the CPU).
c10::Stream current_stream(const c10::Device& device);

}  // namespace nnx::compat
