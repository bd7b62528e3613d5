// Long tests (ctest label "long"): accuracy on real data and tensors over 4 GiB.
//   ctest --test-dir build -L long --output-on-failure
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "nnx/checkpoint/checkpointer.h"
#include "nnx/checkpoint/format/directory.h"
#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/verify.h"
#include "test_util.h"
#include "tools/run_util.h"

using namespace nnx;
namespace stdfs = std::filesystem;

namespace {
double final_accuracy(const std::string& config, const std::string& run_dir) {
  auto r = test::run(test::bin("nnx-train") + " --config " + test::source_dir() + "/configs/" + config + " run.dir=" + run_dir);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  auto recs = test::read_jsonl(run_dir + "/metrics.jsonl");
  EXPECT_FALSE(recs.empty());
  return recs.empty() ? 0.0 : recs.back().value("eval_accuracy", 0.0);
}
}  // namespace

namespace {
// Trains `config` from scratch on Fashion-MNIST and checks the final test accuracy.
void expect_accuracy(const std::string& config, const std::string& name, double at_least) {
  if (!stdfs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) GTEST_SKIP() << "dataset-fashion-mnist missing";
  test::TempDir dir;
  double acc = final_accuracy(config, (dir / name).string());
  std::cout << "[ accuracy ] " << name << " test accuracy after 3 epochs: " << acc << "\n";
  EXPECT_GE(acc, at_least);
}
}  // namespace

TEST(Accuracy, FashionMnistCnnReaches091In3Epochs) { expect_accuracy("fashion_mnist_cnn.yaml", "CNN", 0.91); }

TEST(Accuracy, FashionMnistMlpReaches087) { expect_accuracy("fashion_mnist_mlp.yaml", "MLP", 0.87); }

TEST(BigTensors, TensorOver4GiBRoundTrips) {
  test::TempDir dir;
  if (stdfs::space(dir.path()).available < (int64_t(12) << 30)) GTEST_SKIP() << "needs 12 GiB of free disk";
  // 4.5 GiB of uint8 with a pattern that would reveal misplaced slabs.
  const int64_t rows = 4608, cols = int64_t(1) << 20;
  at::Tensor big = at::arange(rows, at::kLong).remainder(251).to(at::kByte).unsqueeze(1).expand({rows, cols}).contiguous();
  State s;
  s.insert("big", {Param, big, {}});
  checkpoint::Checkpointer ck;
  ck.save(dir / "1", checkpoint::Composite{{"params", checkpoint::StandardSave(s)}});
  State templ;
  templ.insert("big", {Param, at::empty({rows, cols}, at::TensorOptions().dtype(at::kByte).device(at::kMeta)), {}});
  State back = ck.restore(dir / "1", checkpoint::Composite{{"params", checkpoint::StandardRestore(templ)}}).state("params");
  EXPECT_TRUE(at::equal(back.at("big").value, big));
  EXPECT_TRUE(checkpoint::verify(dir / "1").ok);
}
