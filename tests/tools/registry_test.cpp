#include "nnx/trainer/registry.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "nnx/framework/error.h"
#include "nnx/framework/layers.h"
#include "nnx/framework/module_registry.h"
#include "nnx/trainer/datasets.h"
#include "nnx/trainer/trainer.h"
#include "test_util.h"
#include "tools/run_util.h"

using namespace nnx;
using namespace nnx::trainer;

// Expects the statement (the arguments after TEXT) to throw an exception whose what() holds TEXT.
#define EXPECT_THROW_WITH(text, ...)                                                    \
  do {                                                                                  \
    try {                                                                               \
      __VA_ARGS__;                                                                      \
      ADD_FAILURE() << "no exception from " #__VA_ARGS__;                               \
    } catch (const std::exception& e) {                                                 \
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();       \
    }                                                                                   \
  } while (0)

namespace {

// A linear classifier on a registered dataset of 2 blobs (the registry is per process: these
// names are this file's).
void register_test_types() {
  static bool once = [] {
    register_dataset({"test_blobs",
                      [](OptionReader& d) { return nlohmann::json{{"per_class", d.integer("per_class", 64, 2, 100000)}}; },
                      [](const nlohmann::json& o, const Config& c) {
                        const int64_t n = o["per_class"];
                        at::manual_seed(static_cast<int64_t>(c.seed));
                        at::Tensor x = at::cat({at::randn({n, 3}) - 2, at::randn({n, 3}) + 2});
                        at::Tensor y = at::cat({at::zeros({n}, at::kLong), at::ones({n}, at::kLong)});
                        Datasets ds;
                        ds.train = std::make_shared<data::TensorDataset>(x, y);
                        ds.eval = std::make_shared<data::TensorDataset>(x.slice(0, 0, 8), y.slice(0, 0, 8));
                        ds.in_features = 3;
                        ds.num_classes = 2;
                        return ds;
                      }});
    register_model_type({"test_linear",
                         {"test_blobs", "synthetic"},
                         [](OptionReader& m) {
                           auto bias = m.boolean("bias", true);
                           auto act = m.one_of("activation", "none", {"none", "tanh"});
                           if (act == "tanh" && !bias) m.fail("activation", " = 'tanh' needs model.bias");
                           return nlohmann::json{{"bias", bias}, {"activation", act}};
                         },
                         [](const nlohmann::json& o, const Datasets& d, const Config&, std::shared_ptr<Rngs> rngs) {
                           return std::make_shared<Linear>(d.in_features, d.num_classes, *rngs, o["bias"].get<bool>());
                         }});
    // The built-ins' way: a ModuleRegistry type and the sizes it takes from the data, no build().
    ModuleRegistry::add("TestBlobProbe", [](const nlohmann::json& c, Rngs& rngs) {
      return std::make_shared<Linear>(c.at("in").get<int64_t>(), c.at("out").get<int64_t>(), rngs, c.at("bias").get<bool>());
    });
    ModelType probe;
    probe.name = "test_probe";
    probe.datasets = {"test_blobs"};
    probe.options = [](OptionReader& m) { return nlohmann::json{{"bias", m.boolean("bias", false)}}; };
    probe.module = "TestBlobProbe";
    probe.from_data = {{"in", DataSize::kInFeatures}, {"out", DataSize::kNumClasses}};
    register_model_type(probe);
    return true;
  }();
  (void)once;
}

std::string write_yaml(const test::TempDir& dir, const std::string& text) {
  const std::string path = (dir / "c.yaml").string();
  std::ofstream(path) << text;
  return path;
}

}  // namespace

TEST(Registry, RegistrationErrorsNameTheType) {
  register_test_types();
  auto build = [](const nlohmann::json&, const Datasets&, const Config&, std::shared_ptr<Rngs>) { return std::shared_ptr<Module>(); };
  EXPECT_THROW_WITH("model.type 'mlp' is already registered", register_model_type({"mlp", {}, nullptr, build}));
  EXPECT_THROW_WITH("'test_linear' is already registered", register_model_type({"test_linear", {}, nullptr, build}));
  EXPECT_THROW_WITH("register_model_type('nobuild'): build is missing (or a ModuleRegistry type in module)",
                    register_model_type({"nobuild", {}, nullptr, nullptr}));
  EXPECT_THROW_WITH("needs a name", register_model_type({"", {}, nullptr, build}));
  auto load = [](const nlohmann::json&, const Config&) { return Datasets(); };
  EXPECT_THROW_WITH("data.dataset 'text' is built in", register_dataset({"text", nullptr, load}));
  EXPECT_THROW_WITH("'test_blobs' is already registered", register_dataset({"test_blobs", nullptr, load}));
  EXPECT_THROW_WITH("load is missing", register_dataset({"noload", nullptr, nullptr}));
  EXPECT_THROW_WITH("unknown model type 'resnet' (expected mlp, cnn, gpt, test_linear", model_type("resnet"));
  const auto names = model_type_names();
  EXPECT_EQ(std::vector<std::string>(names.begin(), names.begin() + 3), (std::vector<std::string>{"mlp", "cnn", "gpt"}));
  EXPECT_EQ(find_dataset("text"), nullptr);  // built-ins load in load_data, not through the registry
  ASSERT_NE(find_dataset("test_blobs"), nullptr);
}

TEST(Registry, RegisteredTypesReadTheirKeysWithNnxTrainsErrors) {
  register_test_types();
  test::TempDir dir;
  auto c = load_config(write_yaml(dir, "model:\n  type: test_linear\n  bias: false\ndata:\n  per_class: 10\n"));
  EXPECT_EQ(c.data.dataset, "test_blobs");  // the type's first dataset is the default
  EXPECT_EQ(c.model.options, (nlohmann::json{{"bias", false}, {"activation", "none"}}));
  EXPECT_EQ(c.to_json()["data"]["per_class"], 10);  // the dataset's keys are in the resolved config
  EXPECT_EQ(c.to_json()["model"]["bias"], false);
  const std::string path = write_yaml(dir, "model:\n  type: test_linear\n  biass: true\n");
  EXPECT_THROW_WITH(path + ":3:3: unknown key 'model.biass' (did you mean 'model.bias'?)", load_config(path));
  EXPECT_THROW_WITH("'model.bias' must be true or false, got 'yes' (did you mean true?)", load_config(path, {"model.biass=false", "model.bias=yes"}));
  EXPECT_THROW_WITH(":4:15: 'model.activation' = 'tanh' needs model.bias", load_config(write_yaml(dir, "model:\n  type: test_linear\n  bias: false\n  activation: tanh\n")));
  EXPECT_THROW_WITH("'data.per_class' = 1 is out of range [2, 100000]", load_config(write_yaml(dir, "model:\n  type: test_linear\ndata:\n  per_class: 1\n")));
  EXPECT_THROW_WITH("'data.dataset' = 'fashion_mnist' does not fit model.type 'test_linear' (test_linear trains on test_blobs, synthetic)", load_config(write_yaml(dir, "model:\n  type: test_linear\ndata:\n  dataset: fashion_mnist\n")));
  // A built-in model on a registered dataset, which fits only the types that name it.
  EXPECT_THROW_WITH("'data.dataset' = 'test_blobs' does not fit model.type 'mlp' (mlp trains on fashion_mnist, synthetic)", load_config(write_yaml(dir, "model:\n  type: mlp\ndata:\n  dataset: test_blobs\n")));
  // A key of another dataset is unknown to this one.
  EXPECT_THROW_WITH("unknown key 'data.per_class'", load_config(write_yaml(dir, "model:\n  type: mlp\ndata:\n  dataset: synthetic\n  per_class: 3\n")));
}

TEST(Registry, ARegisteredModelTrainsSavesAndResumes) {
  register_test_types();
  test::TempDir dir;
  const std::string yaml = write_yaml(dir, "model:\n  type: test_linear\ntrain:\n  max_steps: 10\n  batch_size: 16\n"
                                           "checkpoint:\n  save_interval_steps: 5\n  async: false\nrun:\n  dir: " +
                                               (dir / "run").string() + "\n");
  RunOptions quiet;
  quiet.quiet = true;
  ASSERT_EQ(train(load_config(yaml), quiet), 0);
  auto first = test::final_states((dir / "run").string()).at("params");
  EXPECT_TRUE(first.contains("kernel") && first.contains("bias"));
  // A longer run resumes from step 10 rather than starting again.
  ASSERT_EQ(train(load_config(yaml, {"train.max_steps=15"}), quiet), 0);
  EXPECT_FALSE(test::final_states((dir / "run").string()).at("params").equal(first));
  EXPECT_TRUE(std::filesystem::exists(dir / "run" / "checkpoints" / "15"));
}

// A model type given as a ModuleRegistry type and its dataset binding (how mlp, cnn and gpt are
// registered): one registration, no build function; it trains, and its options carry the sizes.
TEST(Registry, AModelTypeBuiltThroughTheModuleRegistryTrainsFromOneRegistration) {
  register_test_types();
  test::TempDir dir;
  const std::string yaml = write_yaml(dir, "model:\n  type: test_probe\n  bias: true\ntrain:\n  max_steps: 6\n"
                                           "  batch_size: 16\ncheckpoint:\n  save_interval_steps: 3\n  async: false\n"
                                           "run:\n  dir: " + (dir / "run").string() + "\n");
  RunOptions quiet;
  quiet.quiet = true;
  ASSERT_EQ(train(load_config(yaml), quiet), 0);
  auto params = test::final_states((dir / "run").string()).at("params");
  ASSERT_TRUE(params.contains("kernel") && params.contains("bias"));
  EXPECT_EQ(params.at("kernel").value.sizes(), (std::vector<int64_t>{3, 2}));  // in_features 3, num_classes 2
  EXPECT_EQ(model_type("test_probe").module, "TestBlobProbe");
  ASSERT_EQ(train(load_config(yaml, {"train.max_steps=9"}), quiet), 0);
  EXPECT_TRUE(std::filesystem::exists(dir / "run" / "checkpoints" / "9"));
}
