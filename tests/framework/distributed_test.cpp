// Single-process checks of the distributed layer; multi-rank behaviour is tested through
// nnx-launch in tests/tools/launch_test.cpp (dist_helper, nnx-train).
#include "nnx/framework/distributed.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <stdlib.h>

namespace {
struct EnvGuard {
  ~EnvGuard() {
    for (const char* v : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"})
      ::unsetenv(v);
  }
};
}  // namespace

TEST(Distributed, EnvironmentFromTorchrunAndMpirunVariables) {
  EnvGuard g;
  auto none = nnx::distributed::env_from_environment();
  EXPECT_EQ(none.world_size, 1);
  ::setenv("RANK", "2", 1);
  ::setenv("WORLD_SIZE", "4", 1);
  ::setenv("MASTER_PORT", "1234", 1);
  auto e = nnx::distributed::env_from_environment();
  EXPECT_EQ(e.rank, 2);
  EXPECT_EQ(e.local_rank, 2);
  EXPECT_EQ(e.master_port, 1234);
  ::setenv("RANK", "4", 1);
  EXPECT_THROW(nnx::distributed::env_from_environment(), nnx::Error);
  ::setenv("RANK", "x", 1);
  EXPECT_THROW(nnx::distributed::env_from_environment(), nnx::Error);
  ::unsetenv("RANK");
  ::unsetenv("WORLD_SIZE");
  ::setenv("OMPI_COMM_WORLD_RANK", "1", 1);
  ::setenv("OMPI_COMM_WORLD_SIZE", "3", 1);
  auto m = nnx::distributed::env_from_environment();
  EXPECT_EQ(m.rank, 1);
  EXPECT_EQ(m.world_size, 3);
}

TEST(Distributed, OneRankGroupCollectivesAreIdentities) {
  nnx::distributed::Env env;
  env.master_port = 0;  // let the store pick a free port
  auto pg = nnx::distributed::ProcessGroup::create(env, std::chrono::seconds(10));
  std::vector<at::Tensor> v = {at::arange(4, at::kFloat)};
  pg->all_reduce_sum(v);
  EXPECT_TRUE(at::equal(v[0], at::arange(4, at::kFloat)));
  pg->barrier();
  pg->store_set("k", "v");
  EXPECT_EQ(pg->store_get("k"), "v");
}
