// The GPU path: built in every build, skips where no GPU is visible (tools/gpu-check.sh runs it).
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include "nnx/checkpoint/async_checkpointer.h"
#include "nnx/checkpoint/checkpointer.h"
#include "nnx/framework/error.h"
#include "nnx/framework/compat.h"
#include "nnx/framework/distributed.h"
#include "nnx/framework/graph.h"
#include "nnx/framework/layers.h"
#include "nnx/optim/optimizer.h"
#include "test_util.h"

using namespace nnx;

TEST(Cuda, ModuleOptimizerAndCheckpointOnTheGpu) {
  if (!compat::cuda_available()) GTEST_SKIP() << "no CUDA device visible";
  const c10::Device gpu(c10::kCUDA, 0);
  Rngs rngs({{"params", 0}, {"dropout", 1}});
  auto model = std::make_shared<Sequential>();
  model->push_back(std::make_shared<Linear>(8, 16, rngs)).push_back(std::make_shared<Dropout>(0.5, rngs)).push_back(
      std::make_shared<Linear>(16, 4, rngs));
  model->to(gpu);
  for (const auto& [p, vs] : state(*model, Param)) EXPECT_TRUE(vs.value.is_cuda()) << p;
  optim::Optimizer opt(model, {optim::adam()});
  for (const auto& [p, vs] : state(opt)) {
    if (p != "step") {
      EXPECT_TRUE(vs.value.is_cuda()) << p;
    }
  }
  for (int i = 0; i < 3; ++i) {
    zero_grad(*model);
    model->forward(at::randn({5, 8}, at::TensorOptions().device(gpu))).sum().backward();
    opt.step();
  }
  test::TempDir dir;
  checkpoint::AsyncCheckpointer ck;
  State saved = state(*model).clone();
  ck.save(dir / "1", checkpoint::Composite{{"model", checkpoint::StandardSave(state(*model))}});
  ck.wait_until_finished();
  auto back = ck.restore(dir / "1", checkpoint::Composite{{"model", checkpoint::StandardRestore(state(*model))}}).state("model");
  EXPECT_TRUE(back.at("0/kernel").value.is_cuda());
  EXPECT_TRUE(back.to(c10::Device(c10::kCPU)).equal(saved.to(c10::Device(c10::kCPU))));
}

namespace {
// A small model and its optimizer on `device`, after `steps` Adam steps.
struct Trained {
  std::shared_ptr<Sequential> model;
  std::unique_ptr<optim::Optimizer> opt;
};
Trained trained_on(const c10::Device& device, int steps) {
  Rngs rngs({{"params", 0}});
  auto model = std::make_shared<Sequential>();
  model->push_back(std::make_shared<Linear>(64, 256, rngs)).push_back(std::make_shared<Linear>(256, 8, rngs));
  model->to(device);
  auto opt = std::make_unique<optim::Optimizer>(model, std::vector<std::shared_ptr<optim::Transform>>{optim::adam()});
  for (int i = 0; i < steps; ++i) {
    zero_grad(*model);
    model->forward(at::randn({16, 64}, at::TensorOptions().device(device))).pow(2).mean().backward();
    opt->step();
  }
  return {model, std::move(opt)};
}
State on_cpu(const State& s) { return s.to(c10::Device(c10::kCPU)); }
}  // namespace

TEST(Cuda, CheckpointsMoveBetweenGpuAndCpu) {
  if (!compat::cuda_available()) GTEST_SKIP() << "no CUDA device visible";
  const c10::Device gpu(c10::kCUDA, 0), cpu(c10::kCPU);
  test::TempDir dir;
  checkpoint::Checkpointer ck;
  auto g = trained_on(gpu, 2);
  ck.save(dir / "from_gpu", checkpoint::Composite{{"model", checkpoint::StandardSave(state(*g.model))}});
  auto c = trained_on(cpu, 0);  // a CPU template of the same structure restores the GPU's values
  auto on_host = ck.restore(dir / "from_gpu", checkpoint::Composite{{"model", checkpoint::StandardRestore(state(*c.model))}})
                     .state("model");
  EXPECT_TRUE(on_host.at("0/kernel").value.is_cpu());
  EXPECT_TRUE(on_host.equal(on_cpu(state(*g.model))));
  // And back: a CPU checkpoint into GPU templates (pinned staging, asynchronous copies).
  auto c2 = trained_on(cpu, 3);
  ck.save(dir / "from_cpu", checkpoint::Composite{{"model", checkpoint::StandardSave(state(*c2.model))}});
  auto on_gpu = ck.restore(dir / "from_cpu", checkpoint::Composite{{"model", checkpoint::StandardRestore(state(*g.model))}})
                    .state("model");
  EXPECT_TRUE(on_gpu.at("1/kernel").value.is_cuda());
  EXPECT_TRUE(on_cpu(on_gpu).equal(state(*c2.model)));
}

TEST(Cuda, AsyncSnapshotsOfGpuStateEqualTheStateAtSave) {
  if (!compat::cuda_available()) GTEST_SKIP() << "no CUDA device visible";
  const c10::Device gpu(c10::kCUDA, 0);
  for (auto timing : {checkpoint::io::SnapshotTiming::kInSave, checkpoint::io::SnapshotTiming::kDeferred}) {
    SCOPED_TRACE(timing == checkpoint::io::SnapshotTiming::kInSave ? "in_save" : "deferred");
    test::TempDir dir;
    auto t = trained_on(gpu, 1);
    checkpoint::AsyncCheckpointer ck;
    ck.snapshot_timing = timing;
    for (int save = 1; save <= 3; ++save) {  // the pinned buffers are reused from the second save
      const State model_at_save = on_cpu(state(*t.model)), opt_at_save = on_cpu(state(*t.opt));
      ck.save(dir / std::to_string(save), checkpoint::Composite{{"model", checkpoint::StandardSave(state(*t.model))},
                                                                {"opt", checkpoint::StandardSave(state(*t.opt))}});
      // Every kind of write right after save(): the optimizer's update (fenced) and a user's
      // in-place write through the API.
      zero_grad(*t.model);
      t.model->forward(at::randn({16, 64}, at::TensorOptions().device(gpu))).pow(2).mean().backward();
      t.opt->step();
      {
        c10::NoGradGuard no_grad;  // a user's in-place write to a parameter, outside autograd
        t.model->child<Linear>("0").variable("bias").mutable_value().add_(1.0f);
      }
      ck.wait_until_finished();
      auto r = ck.restore(dir / std::to_string(save), checkpoint::Composite{{"model", checkpoint::StandardRestore(state(*t.model))},
                                                                            {"opt", checkpoint::StandardRestore(state(*t.opt))}});
      EXPECT_TRUE(on_cpu(r.state("model")).equal(model_at_save)) << "save " << save;
      EXPECT_TRUE(on_cpu(r.state("opt")).equal(opt_at_save)) << "save " << save;
      EXPECT_FALSE(on_cpu(state(*t.model)).equal(model_at_save));
    }
  }
}

TEST(Cuda, DevicesAutocastAndCudnnFlags) {
  if (!compat::cuda_available()) GTEST_SKIP() << "no CUDA device visible";
  const int n = compat::cuda_device_count();
  EXPECT_EQ(compat::training_device("cuda", 3), c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(3 % n)));
  EXPECT_EQ(compat::training_device("cuda:0", 5), c10::Device(c10::kCUDA, 0));
  EXPECT_THROW(compat::training_device("cuda:" + std::to_string(n), 0), Error);
  const auto a = at::randn({8, 8}, at::TensorOptions().device(c10::kCUDA));
  {
    compat::AutocastGuard guard(c10::kCUDA, at::kBFloat16);
    EXPECT_EQ(at::matmul(a, a).scalar_type(), at::kBFloat16);
  }
  EXPECT_EQ(at::matmul(a, a).scalar_type(), at::kFloat);
  compat::set_cudnn_flags(false, true);
  EXPECT_TRUE(at::globalContext().deterministicCuDNN());
}

// One rank on NCCL: CUDA tensors go to NCCL, CPU tensors to the group's Gloo, in one group
// (torch.distributed's "cuda:nccl,cpu:gloo"). Two ranks run in tools/gpu-check.sh.
TEST(Cuda, NcclGroupCarriesCudaTensorsAndGlooTheCpuOnes) {
  if (!compat::cuda_available()) GTEST_SKIP() << "no CUDA device visible";
  ASSERT_TRUE(distributed::nccl_built()) << "a CUDA build without NCCL: the GPU machine's build must have it";
  distributed::Env env;
  env.master_port = 0;
  auto pg = distributed::ProcessGroup::create(env, std::chrono::seconds(60), distributed::Backend::kNccl);
  EXPECT_EQ(pg->backend(), distributed::Backend::kNccl);
  const auto on_gpu = at::TensorOptions().device(c10::kCUDA);
  std::vector<at::Tensor> g = {at::arange(6, on_gpu.dtype(at::kFloat))}, c = {at::arange(3, at::kLong)};
  pg->all_reduce_sum(g);
  pg->all_reduce_max(c);
  EXPECT_TRUE(at::equal(g[0].cpu(), at::arange(6, at::kFloat)));
  EXPECT_TRUE(at::equal(c[0], at::arange(3, at::kLong)));
  auto pending = pg->all_reduce_sum_async(g[0]);
  pending.wait();
  std::vector<at::Tensor> out = {at::empty({6}, on_gpu.dtype(at::kFloat))};
  pg->all_gather(out, g[0]);
  EXPECT_TRUE(at::equal(out[0].cpu(), at::arange(6, at::kFloat)));
  std::vector<at::Tensor> b = {at::ones({4}, on_gpu.dtype(at::kBFloat16))};
  pg->broadcast(b);
  EXPECT_TRUE(at::equal(b[0].cpu(), at::ones({4}, at::kBFloat16)));
  pg->barrier();
  EXPECT_EQ(pg->new_group("cpu-side")->backend(), distributed::Backend::kGloo);
}
