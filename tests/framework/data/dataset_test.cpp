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

TEST(Data, FashionMnistLoadsWhenInstalled) {
  const std::string root = "/usr/share/datasets/fashion-mnist";
  if (!std::filesystem::exists(root + "/t10k-images-idx3-ubyte.gz")) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  auto test = load_fashion_mnist(root, "test");
  EXPECT_EQ(test->inputs().sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  EXPECT_EQ(test->targets().sizes(), (std::vector<int64_t>{10000}));
  EXPECT_EQ(test->targets().max().item<int64_t>(), 9);
  EXPECT_NEAR(test->inputs().mean().item<double>(), 0.0, 0.05);  // normalised
  EXPECT_THROW(load_fashion_mnist(root, "validation"), Error);
  EXPECT_THROW(load_fashion_mnist("/nonexistent", "test"), Error);
}

TEST(Data, CharTextDatasetShiftsTargets) {
  CharTextDataset ds("hello world", 4);
  EXPECT_EQ(ds.vocab_size(), 8);
  EXPECT_EQ(ds.size(), 7);
  auto b = ds.get_batch(at::tensor(std::vector<int64_t>{0, 1}));
  EXPECT_EQ(b.inputs.sizes(), (std::vector<int64_t>{2, 4}));
  EXPECT_TRUE(at::equal(b.inputs[1], b.targets[0]));
  EXPECT_THROW(CharTextDataset("abc", 3), Error);
}
