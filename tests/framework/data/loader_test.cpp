#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>

#include "nnx/framework/data/dataset.h"
#include "nnx/framework/data/idx.h"
#include "nnx/framework/data/loader.h"
#include "nnx/framework/error.h"
#include "test_util.h"

using namespace nnx;
using namespace nnx::data;

TEST(Data, LoaderOrderIsPureFunctionOfSeedAndEpochAndPositionResumes) {
  auto ds = make_synthetic(100, 3, 4, 0);
  LoaderOptions o;
  o.batch_size = 8;
  o.seed = 11;
  DataLoader a(ds, o);
  EXPECT_EQ(a.batches_per_epoch(), 12);
  std::vector<at::Tensor> seen;
  for (int i = 0; i < 30; ++i) seen.push_back(a.next().targets);
  EXPECT_EQ(a.epoch(), 2);
  EXPECT_EQ(a.index(), 6);
  DataLoader b(ds, o);
  b.set_position(1, 5);
  for (int i = 17; i < 30; ++i) EXPECT_TRUE(at::equal(b.next().targets, seen[i])) << i;
  // A different epoch is a different permutation; a different seed too.
  DataLoader c(ds, o);
  auto e0 = c.next().inputs;
  c.set_position(1, 0);
  EXPECT_FALSE(at::equal(c.next().inputs, e0));
  EXPECT_THROW(b.set_position(0, 13), Error);
}

TEST(Data, RanksTakeDisjointShards) {
  auto ds = make_synthetic(64, 2, 3, 1);
  LoaderOptions o;
  o.batch_size = 4;
  o.world_size = 2;
  o.shuffle = false;
  o.rank = 0;
  DataLoader r0(ds, o);
  o.rank = 1;
  DataLoader r1(ds, o);
  auto b0 = r0.next().inputs, b1 = r1.next().inputs;
  EXPECT_TRUE(at::equal(b0, ds->inputs().slice(0, 0, 4)));
  EXPECT_TRUE(at::equal(b1, ds->inputs().slice(0, 4, 8)));
  EXPECT_EQ(r0.batches_per_epoch(), 8);
}
