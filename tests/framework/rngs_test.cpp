#include "nnx/framework/rngs.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "nnx/framework/error.h"
#include "nnx/framework/graph.h"
#include "nnx/framework/layers.h"

using namespace nnx;

TEST(Rngs, StreamsAreStateAndDrawsAdvanceCount) {
  Rngs rngs({{"params", 0}, {"dropout", 1}});
  State s = state(rngs);
  EXPECT_EQ(s.paths(), (std::vector<std::string>{"dropout/key", "dropout/count", "params/key", "params/count"}));
  EXPECT_EQ(s.at("params/key").kind, RngKey);
  uint64_t a = rngs.next_seed("params");
  uint64_t b = rngs.next_seed("params");
  EXPECT_NE(a, b);
  EXPECT_EQ(rngs.stream("params")->count(), 2u);
  EXPECT_EQ(rngs.stream("dropout")->count(), 0u);
  // Unknown stream falls back to "default" when present, else errors.
  Rngs d(7);
  EXPECT_EQ(d.stream("anything").get(), d.stream("default").get());
  EXPECT_THROW(rngs.stream("noise"), Error);
}

TEST(Rngs, RestoredStateReproducesDraws) {
  Rngs rngs(3);
  rngs.next_seed("default");
  State saved = state(rngs).clone();
  uint64_t x = rngs.next_seed("default");
  update(rngs, saved);
  EXPECT_EQ(rngs.next_seed("default"), x);
}

TEST(Rngs, ForkGivesDistinctReproducibleStreams) {
  Rngs rngs(5);
  auto r0 = rngs.fork(0), r1 = rngs.fork(1), r0b = rngs.fork(0);
  uint64_t s0 = r0->next_seed("default"), s1 = r1->next_seed("default"), s0b = r0b->next_seed("default");
  EXPECT_NE(s0, s1);
  EXPECT_EQ(s0, s0b);
  EXPECT_EQ(rngs.stream("default")->count(), 0u);  // forking does not advance the parent
}

TEST(Rngs, DropoutMaskReproducedFromRestoredState) {
  Rngs rngs({{"params", 0}, {"dropout", 42}});
  Dropout drop(0.5, rngs);
  auto x = at::ones({64});
  auto first = drop.forward(x);
  State saved = state(drop).clone();
  auto second = drop.forward(x);
  EXPECT_FALSE(at::equal(first, second));
  update(drop, saved);
  EXPECT_TRUE(at::equal(drop.forward(x), second));
  // Inverted-dropout scaling and eval mode.
  auto kept = second.ne(0);
  EXPECT_TRUE(at::allclose(second.masked_select(kept), at::full({kept.sum().item<int64_t>()}, 2.0)));
  drop.eval();
  EXPECT_TRUE(at::equal(drop.forward(x), x));
  EXPECT_THROW(Dropout(1.0, rngs), Error);
}

// rngs.params() and rngs.dropout() are the named streams (or "default"), as in Flax.
TEST(Rngs, ParamsAndDropoutShorthands) {
  Rngs two({{"params", 0}, {"dropout", 1}});
  EXPECT_EQ(&two.params(), two.stream("params").get());
  EXPECT_EQ(&two.dropout(), two.stream("dropout").get());
  Rngs one(7);
  EXPECT_EQ(&one.params(), one.stream("default").get());
  Rngs only({{"noise", 3}});
  EXPECT_THROW(only.params(), Error);
}
