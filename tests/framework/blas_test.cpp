#include "nnx/framework/blas.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

TEST(Blas, ProviderIsDetectedAfterAMatmul) {
  at::matmul(at::ones({8, 8}), at::ones({8, 8}));
  std::string path = nnx::blas_library_path();
  if (path.empty()) GTEST_SKIP() << "libtorch here does not call an external sgemm_";
  EXPECT_NE(path.find("blas"), std::string::npos) << path;
  // tools/setup.sh selects OpenBLAS; the reference BLAS would be ~25x slower.
  EXPECT_FALSE(nnx::blas_is_reference()) << path;
}
