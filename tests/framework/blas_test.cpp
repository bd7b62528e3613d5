#include "nnx/framework/blas.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

TEST(Blas, ProviderIsDetectedAfterAMatmul) {
  at::matmul(at::ones({8, 8}), at::ones({8, 8}));
  std::string path = nnx::blas_library_path();
  if (path.empty()) GTEST_SKIP() << "libtorch here does not call an external sgemm_";
  // A BLAS library of its own (Debian's libtorch), or one built into libtorch_cpu (PyTorch's
  // wheels: MKL, seen with torch 2.11 on the GPU machine).
  EXPECT_TRUE(path.find("blas") != std::string::npos || path.find("libtorch_cpu") != std::string::npos) << path;
  // tools/setup.sh selects OpenBLAS; the reference BLAS would be ~25x slower.
  EXPECT_FALSE(nnx::blas_is_reference()) << path;
}
