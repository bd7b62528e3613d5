#include "nnx/framework/compat.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>

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

}  // namespace nnx::compat
