#include "nnx/framework/blas.h"

#include <ATen/ATen.h>
#include <dlfcn.h>
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

// nnx-train's `threads` reaches OpenBLAS's own pool (at::set_num_threads does not), so ranks
// sharing a host do not each start one BLAS thread per core.
TEST(Blas, SetBlasNumThreadsReachesOpenBlas) {
  at::matmul(at::ones({8, 8}), at::ones({8, 8}));
  using Get = int (*)();
  auto get = reinterpret_cast<Get>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  if (get == nullptr) GTEST_SKIP() << "the BLAS here is not OpenBLAS";
  const int before = get();
  EXPECT_TRUE(nnx::set_blas_num_threads(1));
  EXPECT_EQ(get(), 1);
  EXPECT_TRUE(nnx::set_blas_num_threads(before));
  EXPECT_EQ(get(), before);
}
