#include "tools/trainer/config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "framework/error.h"
#include "test_util.h"
#include "tools/run_util.h"

using namespace nnx;
using namespace nnx::trainer;
namespace stdfs = std::filesystem;

TEST(Config, ShippedConfigsLoad) {
  for (const char* name : {"tiny_synthetic", "fashion_mnist_mlp", "fashion_mnist_cnn", "char_gpt"}) {
    auto c = load_config(test::source_dir() + "/configs/" + name + ".yaml");
    EXPECT_FALSE(c.model.type.empty()) << name;
    EXPECT_GT(c.train.max_steps, 0) << name;
  }
  auto cnn = load_config(test::source_dir() + "/configs/fashion_mnist_cnn.yaml");
  EXPECT_EQ(cnn.model.options["channels"], nlohmann::json({32, 64}));
  EXPECT_EQ(cnn.checkpoint.best_mode, "max");  // best_metric eval_accuracy
}

TEST(Config, DottedOverridesApplyAndAreNamedInErrors) {
  auto c = load_config(test::source_dir() + "/configs/tiny_synthetic.yaml",
                       {"train.max_steps=7", "checkpoint.async=false", "model.hidden=[8, 4]", "seed=3", "run.dir=/tmp/x",
                        "checkpoint.direct_io=false"});
  EXPECT_EQ(c.train.max_steps, 7);
  EXPECT_FALSE(c.checkpoint.async);
  EXPECT_FALSE(c.checkpoint.direct_io);
  EXPECT_EQ(c.to_json()["checkpoint"]["direct_io"], false);
  EXPECT_TRUE(load_config(test::source_dir() + "/configs/tiny_synthetic.yaml").checkpoint.direct_io);
  EXPECT_EQ(c.model.options["hidden"], nlohmann::json({8, 4}));
  EXPECT_EQ(c.seed, 3u);
  EXPECT_EQ(c.to_json()["run"]["dir"], "/tmp/x");
  try {
    load_config(test::source_dir() + "/configs/tiny_synthetic.yaml", {"train.max_steps=abc"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("override 'train.max_steps=abc'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_config(test::source_dir() + "/configs/tiny_synthetic.yaml", {"novalue"}), Error);
  EXPECT_THROW(load_config(test::source_dir() + "/configs/tiny_synthetic.yaml", {"trian.max_steps=1"}), Error);
}

TEST(Config, ErrorsNameFileLineAndColumn) {
  try {
    load_config(test::tests_dir() / "data/bad_configs/02_unknown_nested_key.yaml");
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("02_unknown_nested_key.yaml:4:3: unknown key 'optimizer.learing_rate'"), std::string::npos) << m;
  }
  try {
    load_config(test::tests_dir() / "data/bad_configs/06_max_steps_string.yaml");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("06_max_steps_string.yaml:3:20:"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_config("/nonexistent.yaml"), Error);
}

TEST(Config, StructuralAndOtherDifferences) {
  auto a = load_config(test::source_dir() + "/configs/tiny_synthetic.yaml").to_json();
  auto b = load_config(test::source_dir() + "/configs/tiny_synthetic.yaml", {"model.hidden=[64]", "optimizer.learning_rate=0.5"}).to_json();
  auto s = structural_differences(a, b);
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0], "model.hidden: [32] -> [64]");
  auto o = other_differences(a, b);
  ASSERT_EQ(o.size(), 1u);
  EXPECT_EQ(o[0], "optimizer.learning_rate: 0.01 -> 0.5");
}

// Every file in tests/data/bad_configs gives one error line (its "# expect:" text, naming the
// file for config errors) from nnx-train, and exit code 2.
TEST(Config, BadConfigCorpusExitsTwoWithOneLineError) {
  test::TempDir dir;
  int n = 0;
  std::vector<stdfs::path> files;
  for (const auto& e : stdfs::directory_iterator(test::tests_dir() / "data/bad_configs")) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    std::ifstream in(f);
    std::string first;
    std::getline(in, first);
    ASSERT_EQ(first.rfind("# expect: ", 0), 0u) << f;
    const std::string expect = first.substr(10);
    auto r = test::run(test::bin("nnx-train") + " --config '" + f.string() + "' run.dir=" + (dir / f.stem().string()).string());
    EXPECT_EQ(r.exit_code, 2) << f << "\n" << r.output;
    // The error is the last line, on one line, prefixed and without a stack trace.
    std::string out = r.output;
    while (!out.empty() && out.back() == '\n') out.pop_back();
    std::string last = out.substr(out.rfind('\n') == std::string::npos ? 0 : out.rfind('\n') + 1);
    EXPECT_EQ(last.rfind("nnx-train: error: ", 0), 0u) << f << ": " << last;
    EXPECT_NE(last.find(expect), std::string::npos) << f << "\nexpected: " << expect << "\ngot: " << last;
    EXPECT_EQ(last.find("frame #"), std::string::npos);
    ++n;
  }
  EXPECT_GE(n, 30);
}
