#include "nnx/framework/filter.h"

#include <gtest/gtest.h>

#include "nnx/framework/error.h"

using namespace nnx;

TEST(Filter, KindPathAndCombinators) {
  Filter bias = PathContains("bias");
  EXPECT_TRUE(bias("fc1/bias", Param));
  EXPECT_FALSE(bias("fc1/biases", Param));  // component-aligned
  EXPECT_TRUE(PathContains("attn/qkv")("blocks/0/attn/qkv/kernel", Param));
  EXPECT_FALSE(PathContains("attn/qkv")("blocks/0/attn/out/kernel", Param));
  Filter p = Param;
  EXPECT_TRUE(p("x", Param));
  EXPECT_FALSE(p("x", BatchStat));
  EXPECT_TRUE(Filter(RngState)("rngs/default/key", RngKey));
  EXPECT_TRUE(PathRegex("^fc[0-9]/kernel$")("fc2/kernel", Param));
  EXPECT_FALSE(PathRegex("^fc[0-9]/kernel$")("x/fc2/kernel", Param));
  EXPECT_THROW(PathRegex("(("), Error);
  EXPECT_TRUE(PathIn({"a", "b/c"})("b/c", Param));
  EXPECT_FALSE(PathIn({"a", "b/c"})("b", Param));
  EXPECT_TRUE(All({Param, PathContains("bias")})("fc/bias", Param));
  EXPECT_FALSE(All({Param, PathContains("bias")})("fc/bias", BatchStat));
  EXPECT_TRUE(Any({BatchStat, PathContains("bias")})("fc/bias", Param));
  EXPECT_TRUE(Not(Param)("m", BatchStat));
  EXPECT_TRUE(Everything()("anything", Cache));
  EXPECT_TRUE(Everything().is_everything());
  EXPECT_FALSE(Nothing()("anything", Cache));
  EXPECT_EQ(All({Param, Not(PathContains("bias"))}).description(), "All(Param, Not(PathContains(bias)))");
}
