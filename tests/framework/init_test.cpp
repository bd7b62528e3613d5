#include "nnx/framework/init.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "nnx/framework/rngs.h"

using namespace nnx;

TEST(Init, PyTorchUniformBoundsAndLecunStatistics) {
  RngStream rng(0);
  auto u = init::uniform({1000}, -0.1, 0.1, rng);
  EXPECT_LE(u.max().item<double>(), 0.1);
  EXPECT_GE(u.min().item<double>(), -0.1);
  auto l = init::lecun_normal({256, 256}, 256, rng);
  double std = l.std().item<double>();
  EXPECT_NEAR(std, 1.0 / 16.0, 0.003);  // std 1/sqrt(fan_in) after truncation rescaling
  EXPECT_LE(l.abs().max().item<double>(), 2.0 / 16.0 / 0.87962566103423978 + 1e-6);
  EXPECT_EQ(rng.count(), 2u);
  EXPECT_THROW(init::scheme_from_string("xavier"), Error);
}

TEST(Init, AbstractScopeGivesMetaWithoutDrawing) {
  RngStream rng(0);
  {
    AbstractScope scope;
    EXPECT_TRUE(is_abstract());
    EXPECT_TRUE(init::uniform({1 << 20, 1 << 14}, 0, 1, rng).is_meta());
    EXPECT_TRUE(init::zeros({3}).is_meta());
  }
  EXPECT_FALSE(is_abstract());
  EXPECT_EQ(rng.count(), 0u);
}
