#include "nnx/optim/transform.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "nnx/framework/error.h"
#include "nnx/framework/module.h"

using namespace nnx;
using namespace nnx::optim;

TEST(Transform, ClipByGlobalNormScalesLikeClipGradNorm) {
  std::vector<std::string> paths = {"a", "b"};
  std::vector<at::Tensor> params = {at::zeros({2}), at::zeros({1})};
  std::vector<at::Tensor> grads = {at::tensor({3.0f, 0.0f}), at::tensor({4.0f})};  // norm 5
  ModuleDict state;
  ClipByGlobalNorm clip(1.0);
  UpdateContext ctx{paths, params, grads, 0, state};
  clip.apply(ctx);
  EXPECT_NEAR(clip.last_norm(), 5.0, 1e-6);
  EXPECT_NEAR(grads[0][0].item<double>(), 3.0 / (5.0 + 1e-6), 1e-6);
  EXPECT_NEAR(grads[1][0].item<double>(), 4.0 / (5.0 + 1e-6), 1e-6);
  // Below the threshold nothing changes.
  std::vector<at::Tensor> small = {at::tensor({0.3f, 0.0f}), at::tensor({0.4f})};
  UpdateContext ctx2{paths, params, small, 0, state};
  ClipByGlobalNorm(1.0).apply(ctx2);
  EXPECT_FLOAT_EQ(small[0][0].item<float>(), 0.3f);
  EXPECT_THROW(ClipByGlobalNorm(0.0), Error);
}

TEST(Transform, AdamOptionsValidateNamingTheValue) {
  AdamOptions o;
  o.beta1 = 1.0;
  try {
    adam(o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("beta1: 1"), std::string::npos) << e.what();
  }
  AdamOptions lr;
  lr.learning_rate = -1.0;
  EXPECT_THROW(adam(lr), Error);
  EXPECT_EQ(adamw()->to_json()["type"], "adamw");
}

// PyTorch's defaults: AdamW decays by 0.01 unless told otherwise, Adam not at all; an explicit
// value (0 included) is kept.
TEST(Transform, WeightDecayDefaultsFollowPyTorch) {
  EXPECT_EQ(adamw()->to_json()["weight_decay"], 0.01);
  EXPECT_EQ(adam()->to_json()["weight_decay"], 0.0);
  AdamOptions none;
  none.weight_decay = 0.0;
  EXPECT_EQ(adamw(none)->to_json()["weight_decay"], 0.0);
  AdamOptions bad;
  bad.weight_decay = -0.1;
  EXPECT_THROW(adamw(bad), Error);
}
