#include "nnx/framework/compat.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include "nnx/framework/error.h"

#ifdef NNX_WITH_CUDA
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace nnx::compat {

at::Generator make_generator(const c10::Device& device, uint64_t seed) {
  if (device.is_cpu() || device.is_meta()) {
    return at::detail::createCPUGenerator(seed);
  }
#ifdef NNX_WITH_CUDA
  if (device.is_cuda()) {
    auto gen = at::make_generator<at::CUDAGeneratorImpl>(device.has_index() ? device.index() : 0);
    gen.set_current_seed(seed);
    return gen;
  }
#endif
  NNX_CHECK(false, "no random generator for device ", device.str(), " in this build");
  return {};
}

bool cuda_available() {
#ifdef NNX_WITH_CUDA
  return c10::cuda::device_count() > 0;
#else
  return false;
#endif
}

int cuda_device_count() {
#ifdef NNX_WITH_CUDA
  return c10::cuda::device_count();
#else
  return 0;
#endif
}

c10::Device training_device(const std::string& name, int local_rank) {
  NNX_CHECK(name == "cpu" || name == "cuda" || name.rfind("cuda:", 0) == 0, "device '", name,
            "' is not cpu, cuda or cuda:N");
  if (name == "cpu") return c10::Device(c10::kCPU);
  const int n = cuda_device_count();
#ifdef NNX_WITH_CUDA
  NNX_CHECK(n > 0, "device '", name, "': this CUDA build sees no GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES), "
            "or set device: cpu");
#else
  NNX_CHECK(n > 0, "device '", name, "': this build has no CUDA (it links a CPU-only libtorch); build against a CUDA "
            "libtorch 2.x (tools/build.sh --torch2, docs/gpu.md), or set device: cpu");
#endif
  c10::Device d(name);
  if (!d.has_index()) d = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(local_rank % n));
  NNX_CHECK(d.index() < n, "device '", name, "' does not exist: ", n, " GPUs visible");
  return d;
}

void set_current_device(const c10::Device& device) {
  if (device.is_cpu()) return;
  c10::impl::VirtualGuardImpl(device.type()).setDevice(device);
}

void set_cudnn_flags(bool benchmark, bool deterministic) {
  at::globalContext().setBenchmarkCuDNN(benchmark);
  at::globalContext().setDeterministicCuDNN(deterministic);
}

namespace {

#if NNX_TORCH_VERSION_AT_LEAST(2, 4)
bool autocast_enabled(c10::DeviceType t) { return at::autocast::is_autocast_enabled(t); }
void set_autocast(c10::DeviceType t, bool on) { at::autocast::set_autocast_enabled(t, on); }
at::ScalarType autocast_dtype(c10::DeviceType t) { return at::autocast::get_autocast_dtype(t); }
void set_autocast_dtype(c10::DeviceType t, at::ScalarType d) { at::autocast::set_autocast_dtype(t, d); }
#else
bool autocast_enabled(c10::DeviceType t) { return t == c10::kCPU ? at::autocast::is_cpu_enabled() : at::autocast::is_enabled(); }
void set_autocast(c10::DeviceType t, bool on) {
  if (t == c10::kCPU) at::autocast::set_cpu_enabled(on);
  else at::autocast::set_enabled(on);
}
at::ScalarType autocast_dtype(c10::DeviceType t) {
  return t == c10::kCPU ? at::autocast::get_autocast_cpu_dtype() : at::autocast::get_autocast_gpu_dtype();
}
void set_autocast_dtype(c10::DeviceType t, at::ScalarType d) {
  if (t == c10::kCPU) at::autocast::set_autocast_cpu_dtype(d);
  else at::autocast::set_autocast_gpu_dtype(d);
}
#endif

}  // namespace

AutocastGuard::AutocastGuard(c10::DeviceType device_type, std::optional<at::ScalarType> dtype) : type_(device_type) {
  if (!dtype) return;
  NNX_CHECK(device_type == c10::kCPU || device_type == c10::kCUDA, "autocast supports cpu and cuda, not ",
            c10::DeviceTypeName(device_type));
  was_enabled_ = autocast_enabled(type_);
  was_dtype_ = autocast_dtype(type_);
  set_autocast_dtype(type_, *dtype);
  set_autocast(type_, true);
  active_ = true;
}

AutocastGuard::~AutocastGuard() {
  if (!active_) return;
  set_autocast(type_, was_enabled_);
  set_autocast_dtype(type_, was_dtype_);
  at::autocast::clear_cache();  // casts cached during this region belong to weights that change next step
}

void synchronize_stream(const c10::Stream& stream) {
  if (stream.device().is_cpu()) return;
  c10::impl::VirtualGuardImpl(stream.device_type()).synchronizeStream(stream);
}

c10::Stream current_stream(const c10::Device& device) {
  return c10::impl::VirtualGuardImpl(device.type()).getStream(device);
}

}  // namespace nnx::compat
