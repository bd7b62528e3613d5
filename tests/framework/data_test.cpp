#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>

#include "framework/data/dataset.h"
#include "framework/data/idx.h"
#include "framework/data/loader.h"
#include "framework/error.h"
#include "test_util.h"

using namespace nnx;
using namespace nnx::data;

namespace {
void write_gz(const std::filesystem::path& p, const std::string& bytes) {
  gzFile f = gzopen(p.c_str(), "wb");
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}
std::string idx_header(int ndim, std::vector<uint32_t> dims) {
  std::string h = {0, 0, 8, static_cast<char>(ndim)};
  for (auto d : dims) {
    h.push_back(static_cast<char>(d >> 24));
    h.push_back(static_cast<char>(d >> 16));
    h.push_back(static_cast<char>(d >> 8));
    h.push_back(static_cast<char>(d));
  }
  return h;
}
}  // namespace

TEST(Data, IdxReaderParsesAndRejectsBadFiles) {
  test::TempDir dir;
  std::string body = idx_header(3, {2, 2, 3}) + std::string("\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c", 12);
  write_gz(dir / "ok.gz", body);
  at::Tensor t = read_idx_gz((dir / "ok.gz").string());
  EXPECT_EQ(t.sizes(), (std::vector<int64_t>{2, 2, 3}));
  EXPECT_EQ(t[1][1][2].item<int>(), 12);
  write_gz(dir / "short.gz", body.substr(0, body.size() - 3));
  try {
    read_idx_gz((dir / "short.gz").string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("short.gz"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos);
  }
  write_gz(dir / "float.gz", std::string("\0\0\x0d\x01", 4) + std::string(8, '\0'));
  EXPECT_THROW(read_idx_gz((dir / "float.gz").string()), Error);
  EXPECT_THROW(read_idx_gz((dir / "missing.gz").string()), Error);
}

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

TEST(Data, CharTextDatasetShiftsTargets) {
  CharTextDataset ds("hello world", 4);
  EXPECT_EQ(ds.vocab_size(), 8);
  EXPECT_EQ(ds.size(), 7);
  auto b = ds.get_batch(at::tensor(std::vector<int64_t>{0, 1}));
  EXPECT_EQ(b.inputs.sizes(), (std::vector<int64_t>{2, 4}));
  EXPECT_TRUE(at::equal(b.inputs[1], b.targets[0]));
  EXPECT_THROW(CharTextDataset("abc", 3), Error);
}
