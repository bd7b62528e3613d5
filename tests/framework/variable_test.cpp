#include "nnx/framework/variable.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "nnx/framework/error.h"

NNX_DEFINE_KIND(LoraParam, &nnx::Param);
NNX_DEFINE_KIND(MyStat);

TEST(Variable, KindsAndUserKinds) {
  EXPECT_EQ(nnx::Param.name(), "Param");
  EXPECT_TRUE(nnx::RngKey.is_a(nnx::RngState));
  EXPECT_FALSE(nnx::RngState.is_a(nnx::RngKey));
  EXPECT_TRUE(LoraParam.is_a(nnx::Param));
  EXPECT_FALSE(MyStat.is_a(nnx::Param));
  EXPECT_EQ(nnx::Kind::from_name("MyStat"), MyStat);
  EXPECT_THROW(nnx::Kind::from_name("NoSuchKind"), nnx::Error);
  EXPECT_THROW(nnx::Kind::define("MyStat", &nnx::Param), nnx::Error);
  EXPECT_EQ(nnx::Kind::define("LoraParam"), LoraParam);  // lookup keeps the parent
}

TEST(Variable, SharedHandleSeesReplacement) {
  nnx::Variable a = nnx::Param(at::zeros({2}), {{"sharding", "[\"data\"]"}});
  nnx::Variable b = a;  // weight tying: same slot
  b.set_value(at::ones({3}));
  EXPECT_TRUE(a.is(b));
  EXPECT_EQ(a.value().size(0), 3);
  EXPECT_EQ(a.metadata().at("sharding"), "[\"data\"]");
  nnx::Variable c = nnx::Param(at::ones({3}));
  EXPECT_FALSE(a.is(c));
}

// A Param (and a kind of Param) is trainable as made, as in Flax: floating values require grad
// on a tensor of their own (the caller's keeps its flag); other kinds, integer and meta values
// are left as they are.
TEST(Variable, ParamsOfFloatsRequireGradAsMade) {
  at::Tensor w = at::zeros({3});
  auto p = nnx::Param(w);
  EXPECT_TRUE(p.value().requires_grad());
  EXPECT_FALSE(w.requires_grad());
  EXPECT_EQ(p.value().data_ptr(), w.data_ptr());  // the same storage
  EXPECT_TRUE(LoraParam(at::ones({2})).value().requires_grad());
  EXPECT_FALSE(nnx::BatchStat(at::ones({2})).value().requires_grad());
  EXPECT_FALSE(nnx::Param(at::zeros({2}, at::kLong)).value().requires_grad());
  EXPECT_FALSE(nnx::Param(at::empty({2}, at::TensorOptions().device(at::kMeta))).value().requires_grad());
}
