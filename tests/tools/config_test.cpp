#include "nnx/trainer/config.h"
#include "nnx/trainer/checkpoint_options.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "nnx/framework/error.h"
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
  // Errors about run.dir name where it was set: a command line's override is not the YAML's.
  EXPECT_EQ(c.run_dir_origin, "override 'run.dir=/tmp/x'");
  EXPECT_NE(load_config(test::source_dir() + "/configs/tiny_synthetic.yaml").run_dir_origin.find("tiny_synthetic.yaml:5:"),
            std::string::npos);
  try {
    load_config(test::source_dir() + "/configs/tiny_synthetic.yaml", {"train.max_steps=abc"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("override 'train.max_steps=abc'"), std::string::npos) << e.what();
  }
  // Booleans are YAML 1.2's true/false only: yaml-cpp alone took "yes" silently.
  try {
    load_config(test::source_dir() + "/configs/tiny_synthetic.yaml", {"checkpoint.async=yes"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("override 'checkpoint.async=yes': 'checkpoint.async' must be true or false, got "
                                         "'yes' (did you mean true?)"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(load_config(test::source_dir() + "/configs/tiny_synthetic.yaml", {"checkpoint.async=False"}).checkpoint.async);
  EXPECT_THROW(load_config(test::source_dir() + "/configs/tiny_synthetic.yaml", {"novalue"}), Error);
  EXPECT_THROW(load_config(test::source_dir() + "/configs/tiny_synthetic.yaml", {"trian.max_steps=1"}), Error);
}

TEST(Config, SnapshotTimingAndBusyPolicy) {
  const std::string yaml = test::source_dir() + "/configs/tiny_synthetic.yaml";
  auto d = load_config(yaml);
  EXPECT_EQ(d.checkpoint.snapshot, checkpoint::io::SnapshotTiming::kDeferred);  // nnx-train's default
  EXPECT_EQ(d.checkpoint.busy_policy, checkpoint::BusyPolicy::kWait);
  auto c = load_config(yaml, {"checkpoint.snapshot=in_save", "checkpoint.busy_policy=skip"});
  EXPECT_EQ(c.to_json()["checkpoint"]["snapshot"], "in_save");
  EXPECT_EQ(c.to_json()["checkpoint"]["busy_policy"], "skip");
  try {
    load_config(yaml, {"checkpoint.snapshot=lazy"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("deferred"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_config(yaml, {"checkpoint.busy_policy=later"}), Error);
  EXPECT_EQ(load_config(yaml, {"checkpoint.busy_policy=second_buffer"}).checkpoint.busy_policy, checkpoint::BusyPolicy::kSecondBuffer);
}

// Each word option is typed at load, its words listed once (config.h), and every value, key
// and policy error suggests the nearest word the same way; the JSON round trip keeps words.
TEST(Config, WordOptionsAreTypedAndAWrongOneSuggestsTheNearest) {
  const std::string yaml = test::source_dir() + "/configs/tiny_synthetic.yaml";
  auto c = load_config(yaml, {"optimizer.type=adam", "train.nonfinite=stop", "model.dtype=bfloat16", "distributed.batch_stats=local"});
  EXPECT_EQ(c.optimizer.type, OptimizerType::kAdam);
  EXPECT_EQ(load_config(yaml, {"optimizer.type=adam", "optimizer.weight_decay=null"}).optimizer.weight_decay, 0.0);  // adam's default
  EXPECT_EQ(c.train.nonfinite, Nonfinite::kStop);
  EXPECT_EQ(c.model.dtype, ParamDType::kBFloat16);
  EXPECT_EQ(c.distributed.batch_stats, BatchStatsMode::kLocal);
  const nlohmann::json j = c.to_json();
  EXPECT_EQ(j["optimizer"]["type"], "adam");
  EXPECT_EQ(j["train"]["nonfinite"], "stop");
  EXPECT_EQ(j["model"]["dtype"], "bfloat16");
  EXPECT_EQ(j["distributed"]["batch_stats"], "local");
  for (const auto& [override, suggestion] : std::vector<std::pair<std::string, std::string>>{
           {"optimizer.type=adamww", "(did you mean 'adamw'?)"},
           {"checkpoint.busy_policy=skp", "(did you mean 'skip'?)"},
           {"train.nonfinit=stop", "(did you mean 'train.nonfinite'?)"},
           {"trian.max_steps=1", "(did you mean 'train'?)"}}) {
    try {
      load_config(yaml, {override});
      ADD_FAILURE() << override << " loaded";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(suggestion), std::string::npos) << override << ": " << e.what();
    }
  }
  try {
    load_config(yaml, {"optimizer.type=sgd"});  // nothing near: no suggestion
    ADD_FAILURE() << "optimizer.type=sgd loaded";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find("did you mean"), std::string::npos) << e.what();
  }
}

TEST(Config, DeviceCudnnAndAutocast) {
  const std::string yaml = test::source_dir() + "/configs/tiny_synthetic.yaml";
  auto d = load_config(yaml);
  EXPECT_EQ(d.train.autocast, Autocast::kNone);
  EXPECT_FALSE(d.cudnn.benchmark);
  EXPECT_TRUE(d.cudnn.deterministic);  // what a bit-exact resume on a GPU needs
  auto b = load_config(yaml, {"cudnn.benchmark=true", "train.autocast=bfloat16", "device=cuda:1"});
  EXPECT_FALSE(b.cudnn.deterministic);  // benchmark implies non-deterministic kernels
  EXPECT_EQ(b.to_json()["train"]["autocast"], "bfloat16");
  EXPECT_EQ(b.device, "cuda:1");
  EXPECT_THROW(load_config(yaml, {"cudnn.benchmark=true", "cudnn.deterministic=true"}), Error);
  EXPECT_THROW(load_config(yaml, {"train.autocast=fp8"}), Error);
  EXPECT_THROW(load_config(yaml, {"device=gpu"}), Error);
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

// checkpoint.save and checkpoint.keep: lists of Orbax policies, normalized, built into the
// manager's options, and each policy behaving as its YAML says.
TEST(Config, CheckpointPolicyListsParseAndBuild) {
  test::TempDir dir;
  const stdfs::path f = dir / "p.yaml";
  std::ofstream(f) << "model: {type: mlp}\n"
                      "checkpoint:\n"
                      "  best_metric: eval_accuracy\n"
                      "  save:\n"
                      "    - fixed_interval: 1000\n"
                      "    - specific_steps: [50, 75]\n"
                      "    - initial_save: true\n"
                      "    - continuous: {minimum_interval_steps: 10, minimum_interval_seconds: 60}\n"
                      "  keep:\n"
                      "    - latest_n: 3\n"
                      "    - every_n_steps: 4000\n"
                      "    - best_n: 2\n"
                      "    - best_n: {n: 1, metric: loss, keep_checkpoints_without_metrics: false}\n"
                      "    - every_n_seconds: 3600\n"
                      "    - custom_steps: [3000]\n"
                      "    - latest_duration_seconds: 86400\n";
  auto c = load_config(f.string());
  // Typed at load: each entry's kind and its parameters.
  ASSERT_TRUE(c.checkpoint.save && c.checkpoint.keep);
  ASSERT_EQ(c.checkpoint.save->size(), 4u);
  ASSERT_EQ(c.checkpoint.keep->size(), 7u);
  EXPECT_EQ(c.checkpoint.save->at(3).kind, SavePolicyKind::kContinuous);
  EXPECT_EQ(c.checkpoint.save->at(3).minimum_interval_seconds, 60.0);
  EXPECT_EQ(c.checkpoint.keep->at(3).kind, KeepPolicyKind::kBestN);
  EXPECT_EQ(c.checkpoint.keep->at(3).metric, "loss");
  // Printed (and saved with every checkpoint) normalized, as the lists were before they were typed.
  const nlohmann::json printed = c.to_json()["checkpoint"];
  EXPECT_EQ(printed["save"], nlohmann::json::parse(R"([{"fixed_interval": 1000}, {"specific_steps": [50, 75]},
      {"initial_save": true}, {"continuous": {"minimum_interval_steps": 10, "minimum_interval_seconds": 60.0}}])"));
  EXPECT_EQ(printed["keep"][2], nlohmann::json::parse(
      R"({"best_n": {"n": 2, "metric": "eval_accuracy", "mode": "max", "keep_checkpoints_without_metrics": true}})"));
  EXPECT_EQ(printed["keep"][3], nlohmann::json::parse(
      R"({"best_n": {"n": 1, "metric": "loss", "mode": "min", "keep_checkpoints_without_metrics": false}})"));
  EXPECT_EQ(printed["keep"], nlohmann::json::parse(R"([{"latest_n": 3}, {"every_n_steps": 4000}, {"best_n": {"n": 2,
      "metric": "eval_accuracy", "mode": "max", "keep_checkpoints_without_metrics": true}}, {"best_n": {"n": 1,
      "metric": "loss", "mode": "min", "keep_checkpoints_without_metrics": false}}, {"every_n_seconds": 3600.0},
      {"custom_steps": [3000]}, {"latest_duration_seconds": 86400.0}])"));
  auto mo = manager_options(c.checkpoint);
  EXPECT_FALSE(mo.max_to_keep.has_value());
  ASSERT_TRUE(mo.preservation_policy && mo.save_decision_policy);
  // Steps 1000..10000, step s saved at t = s seconds; eval_accuracy rises, 2000 is the best by loss.
  std::vector<checkpoint::CheckpointInfo> infos;
  for (int64_t s = 1000; s <= 10000; s += 1000)
    infos.push_back({s, static_cast<double>(s), {{"eval_accuracy", 1e-4 * s}, {"loss", s == 2000 ? 0.1 : 1.0}}});
  // latest_n: 8000-10000; every_n_steps: 4000, 8000; best_n by accuracy: 9000, 10000; by loss:
  // 2000; every_n_seconds: 1000, 5000, 9000; custom_steps: 3000; nothing younger than a day.
  auto flags = mo.preservation_policy->should_preserve(infos, {10000.0 + 86400});
  std::vector<int64_t> kept;
  for (size_t i = 0; i < infos.size(); ++i)
    if (flags[i]) kept.push_back(infos[i].step);
  EXPECT_EQ(kept, (std::vector<int64_t>{1000, 2000, 3000, 4000, 5000, 8000, 9000, 10000}));
  checkpoint::DecisionContext ctx;
  ctx.now = 100;
  auto saves = [&](int64_t step, std::vector<checkpoint::CheckpointInfo> prev) {
    return mo.save_decision_policy->should_save({step, ctx.now, nullptr}, prev, ctx);
  };
  EXPECT_TRUE(saves(1, {}));                     // initial_save
  EXPECT_TRUE(saves(50, {{1, 99, nullptr}}));    // specific_steps
  EXPECT_FALSE(saves(51, {{1, 99, nullptr}}));   // continuous: under 60 s since step 1
  EXPECT_TRUE(saves(51, {{1, 30, nullptr}}));    // continuous: 50 steps and 70 s
  ctx.reached_preemption = true;                 // nnx-train always saves on preemption
  EXPECT_TRUE(saves(52, {{51, 99, nullptr}}));
  // Overrides take the same lists; an error inside one names the override.
  auto o = load_config(test::source_dir() + "/configs/tiny_synthetic.yaml",
                       {"checkpoint.keep=[{latest_n: 2}, {every_n_steps: 10}]", "checkpoint.max_to_keep=null"});
  EXPECT_EQ(o.to_json()["checkpoint"]["keep"], nlohmann::json::parse(R"([{"latest_n": 2}, {"every_n_steps": 10}])"));
  try {
    load_config(test::source_dir() + "/configs/tiny_synthetic.yaml", {"checkpoint.save=[{fixed_interval: 0}]"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("override 'checkpoint.save=[{fixed_interval: 0}]': 'checkpoint.save[0].fixed_interval' = 0 is out of range"),
              std::string::npos) << e.what();
  }
}

// A shortened run of a config with a warmup schedule: the warmup is clamped below decay_steps
// (which follows train.max_steps), with a warning; a decay_steps the config gives stays strict.
TEST(Config, ShortRunsClampTheWarmupWithAWarning) {
  auto c = load_config(test::source_dir() + "/configs/char_gpt.yaml", {"train.max_steps=100"});
  EXPECT_EQ(c.schedule.decay_steps, 100);
  EXPECT_EQ(c.schedule.warmup_steps, 99);
  ASSERT_EQ(c.warnings.size(), 1u);
  EXPECT_NE(c.warnings[0].find("schedule.warmup_steps"), std::string::npos) << c.warnings[0];
  EXPECT_THROW(load_config(test::source_dir() + "/configs/char_gpt.yaml",
                           {"train.max_steps=100", "schedule.decay_steps=50", "schedule.warmup_steps=60"}),
               Error);
  EXPECT_TRUE(load_config(test::source_dir() + "/configs/tiny_synthetic.yaml").warnings.empty());
}
