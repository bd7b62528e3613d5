// Single-process checks of the distributed layer; multi-rank behaviour is tested through
// nnx-launch in tests/tools/launch_test.cpp (dist_helper, nnx-train).
#include "nnx/framework/distributed.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <functional>

#include "nnx/framework/compat.h"
#include "nnx/framework/error.h"
#include "nnx/framework/fully_shard.h"
#include "nnx/framework/graph.h"
#include "nnx/framework/layers.h"
#include "nnx/framework/sharding.h"

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

TEST(Distributed, BackendFollowsTheDeviceAndTheBuild) {
  using nnx::distributed::Backend;
  using nnx::distributed::resolve_backend;
  const c10::Device cpu(c10::kCPU), gpu(c10::kCUDA, 0);
  const bool nccl = nnx::distributed::nccl_built();
  EXPECT_EQ(resolve_backend("auto", cpu), Backend::kGloo);
  EXPECT_EQ(resolve_backend("gloo", cpu), Backend::kGloo);
  EXPECT_EQ(resolve_backend("gloo", gpu), Backend::kGloo);
  EXPECT_EQ(resolve_backend("auto", gpu), nccl ? Backend::kNccl : Backend::kGloo);
  if (nccl) {
    EXPECT_EQ(resolve_backend("nccl", gpu), Backend::kNccl);
  }
  auto message_of = [](const std::string& name, const c10::Device& d) {
    try {
      resolve_backend(name, d);
    } catch (const nnx::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message_of("mpi", cpu).find("'mpi' is not auto, gloo or nccl"), std::string::npos);
  EXPECT_NE(message_of("nccl", cpu).find(nccl ? "needs a CUDA device; the device is cpu" : "this build has no NCCL"),
            std::string::npos)
      << message_of("nccl", cpu);
  EXPECT_STREQ(nnx::distributed::backend_name(Backend::kNccl), "nccl");
}

TEST(Distributed, AnNcclGroupWithoutAGpuIsAClearError) {
  if (nnx::compat::cuda_available()) GTEST_SKIP() << "a GPU is visible: tests/cuda makes NCCL groups";
  nnx::distributed::Env env;
  env.master_port = 0;
  try {
    nnx::distributed::ProcessGroup::create(env, std::chrono::seconds(10), nnx::distributed::Backend::kNccl);
    ADD_FAILURE() << "an NCCL group was made without a GPU";
  } catch (const nnx::Error& e) {
    const std::string why = nnx::distributed::nccl_built() ? "no GPU is visible" : "this build has no NCCL";
    EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
  }
  auto gloo = nnx::distributed::ProcessGroup::create(env, std::chrono::seconds(10));
  EXPECT_EQ(gloo->backend(), nnx::distributed::Backend::kGloo);
}

namespace {
// Linear(4 -> 3), ReLU, BatchNorm(3), Linear(3 -> 2) in a Sequential under "net", and a root
// param "scale" of no unit.
struct ShardNet : nnx::ModuleBase<ShardNet> {
  explicit ShardNet(nnx::Rngs& rngs) {
    auto s = std::make_shared<nnx::Sequential>();
    s->push_back(std::make_shared<nnx::Linear>(4, 3, rngs));
    s->push_back(std::make_shared<nnx::ReLU>());
    s->push_back(std::make_shared<nnx::BatchNorm>(3, 0));
    s->push_back(std::make_shared<nnx::Linear>(3, 2, rngs));
    register_module("net", s);
    register_variable("scale", nnx::Param(at::full({2}, 1.5)));
  }
  at::Tensor forward(const at::Tensor& x) override { return child("net").forward(x) * variable("scale").value(); }
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const nnx::Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

// One rank: the units and the cycle (gather, run, free; recompute in backward) give the plain
// model's loss and gradients bitwise; the paths and GraphDef stay; bad unit paths are errors
// that change nothing. (2 and 3 ranks against ZeRO-0: ZeroThree.* under nnx-launch.)
TEST(FullyShardedModel, OneRankMatchesThePlainModelAndBadUnitsAreClearErrors) {
  nnx::distributed::Env env;
  env.master_port = 0;
  auto pg = nnx::distributed::ProcessGroup::create(env, std::chrono::seconds(10));
  nnx::Rngs r1(0), r2(0);
  auto plain = std::make_shared<ShardNet>(r1), sharded = std::make_shared<ShardNet>(r2);
  const auto graph_before = nnx::graphdef(*sharded).to_json();
  for (const auto& bad : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"net/9"}, "'net/9' names no module"},
           {{"nope/0"}, "'nope/0' names no module (no 'nope')"},
           {{"net", "net/0"}, "'net/0' overlaps 'net'"},
           {{"net/1"}, "'net/1' holds no param"}}) {
    nnx::distributed::FullyShardOptions o;
    o.units = bad.first;
    EXPECT_NE(error_of([&] { nnx::distributed::FullyShardedModel(sharded, pg, o); }).find(bad.second), std::string::npos)
        << bad.second;
  }
  EXPECT_TRUE(nnx::state(*sharded).equal(nnx::state(*plain)));  // nothing changed by the errors
  nnx::distributed::FullyShardedModel fs(sharded, pg);
  EXPECT_EQ(fs.unit_paths(), (std::vector<std::string>{"net/0", "net/2", "net/3"}));
  EXPECT_EQ(nnx::graphdef(*sharded).to_json(), graph_before);
  EXPECT_EQ(nnx::get_partition_spec(nnx::state(*sharded).at("net/0/kernel").metadata).sharded_dim(), 0);
  const at::Tensor x = at::sin(at::arange(20, at::kFloat).reshape({5, 4}));
  for (int step = 0; step < 2; ++step) {
    nnx::zero_grad(*plain);
    nnx::zero_grad(*sharded);
    at::Tensor a = plain->forward(x).pow(2).sum(), b = fs.forward(x).pow(2).sum();
    a.backward();
    b.backward();
    EXPECT_TRUE(at::equal(a, b));
    EXPECT_TRUE(nnx::grads(*sharded).equal(nnx::grads(*plain))) << nnx::grads(*sharded).first_difference(nnx::grads(*plain));
    EXPECT_TRUE(nnx::state(*sharded, nnx::BatchStat).equal(nnx::state(*plain, nnx::BatchStat)));  // updated once a step
  }
}
