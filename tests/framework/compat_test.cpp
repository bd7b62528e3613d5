#include "nnx/framework/compat.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "nnx/framework/error.h"

TEST(Compat, SeededGeneratorsAreReproducible) {
  auto a = nnx::compat::make_generator(c10::Device(c10::kCPU), 99);
  auto b = nnx::compat::make_generator(c10::Device(c10::kCPU), 99);
  EXPECT_TRUE(at::equal(at::empty({16}).uniform_(0, 1, a), at::empty({16}).uniform_(0, 1, b)));
  EXPECT_EQ(nnx::compat::cuda_device_count() > 0, nnx::compat::cuda_available());
#ifndef NNX_WITH_CUDA
  EXPECT_FALSE(nnx::compat::cuda_available());
  EXPECT_THROW(nnx::compat::make_generator(c10::Device(c10::kCUDA, 0), 1), nnx::Error);
#endif
}

TEST(Compat, TrainingDeviceAndAutocastOnTheCpu) {
  EXPECT_EQ(nnx::compat::training_device("cpu", 3), c10::Device(c10::kCPU));
  EXPECT_THROW(nnx::compat::training_device("tpu", 0), nnx::Error);
  if (!nnx::compat::cuda_available()) {  // the error says what to do, by build
    try {
      nnx::compat::training_device("cuda", 0);
      ADD_FAILURE() << "device cuda without a GPU";
    } catch (const nnx::Error& e) {
#ifdef NNX_WITH_CUDA
      const char* fix = "this CUDA build sees no GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES), or set device: cpu";
#else
      const char* fix = "build against a CUDA libtorch 2.x (tools/build.sh --torch2, docs/gpu.md), or set device: cpu";
#endif
      EXPECT_NE(std::string(e.what()).find(fix), std::string::npos) << e.what();
    }
  }
  const auto a = at::randn({8, 8});
  {
    nnx::compat::AutocastGuard guard(c10::kCPU, at::kBFloat16);
    EXPECT_EQ(at::matmul(a, a).scalar_type(), at::kBFloat16);
    nnx::compat::AutocastGuard none(c10::kCPU, std::nullopt);  // changes nothing
    EXPECT_EQ(at::matmul(a, a).scalar_type(), at::kBFloat16);
  }
  EXPECT_EQ(at::matmul(a, a).scalar_type(), at::kFloat);  // the previous setting is back
  nnx::compat::set_cudnn_flags(false, true);  // ATen keeps the flags even without cuDNN
  EXPECT_TRUE(at::globalContext().deterministicCuDNN());
  EXPECT_FALSE(at::globalContext().benchmarkCuDNN());
}
