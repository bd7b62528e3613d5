// Built only when the Torch found has CUDA (NNX_WITH_CUDA); skips without a visible GPU.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "nnx/checkpoint/async_checkpointer.h"
#include "nnx/framework/compat.h"
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
  for (const auto& [p, vs] : state(opt)) if (p != "step") EXPECT_TRUE(vs.value.is_cuda()) << p;
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
