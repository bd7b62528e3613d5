#include "nnx/framework/compat.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "nnx/framework/error.h"

TEST(Compat, SeededGeneratorsAreReproducible) {
  auto a = nnx::compat::make_generator(c10::Device(c10::kCPU), 99);
  auto b = nnx::compat::make_generator(c10::Device(c10::kCPU), 99);
  EXPECT_TRUE(at::equal(at::empty({16}).uniform_(0, 1, a), at::empty({16}).uniform_(0, 1, b)));
  EXPECT_GE(nnx::compat::cuda_device_count(), 0);
#ifndef NNX_WITH_CUDA
  EXPECT_FALSE(nnx::compat::cuda_available());
  EXPECT_THROW(nnx::compat::make_generator(c10::Device(c10::kCUDA, 0), 1), nnx::Error);
#endif
}
