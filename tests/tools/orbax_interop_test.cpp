// Orbax checkpoints of Flax NNX models into nnx-cpp (nnx-ckpt import-orbax), against the real
// jax, flax, optax and orbax-checkpoint of the interop environment (tools/setup-interop.sh);
// without it these tests skip, saying so.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "nnx/checkpoint/format/safetensors.h"
#include "nnx/checkpoint/manager.h"
#include "nnx/framework/graph.h"
#include "nnx/models/models.h"
#include "nnx/optim/optimizer.h"
#include "test_util.h"
#include "tools/run_util.h"

namespace stdfs = std::filesystem;
using namespace nnx;
using namespace nnx::checkpoint;

namespace {

using test::interop_python;

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

struct Case {
  std::string kind, config, overrides, registry_type;
  nlohmann::json options;
};

// JAX trains 5 steps and Orbax saves step 5; nnx-ckpt import-orbax makes it step 5 of a run. The
// C++ model restored from it gives JAX's logits, one more AdamW step on the same batch gives
// JAX's params (so moments and count crossed), and nnx-train resumes from it.
void expect_orbax_step_crosses(const Case& c) {
  test::TempDir dir;
  const std::string orbax = (dir / "orbax").string(), ref = (dir / "jax.safetensors").string(), run = (dir / "run").string();
  auto jax = test::run(interop_python() + " " + test::source_dir() + "/tests/tools/orbax_check.py train-save " + c.kind + " " +
                       orbax + " " + ref);
  ASSERT_EQ(jax.exit_code, 0) << jax.output;
  const std::string train_args = " --config " + test::source_dir() + "/configs/" + c.config + " " + c.overrides + " run.dir=" + run;
  auto imp = test::run(test::bin("nnx-ckpt") + " import-orbax " + orbax + train_args + " --python " + interop_python());
  ASSERT_EQ(imp.exit_code, 0) << imp.output;
  EXPECT_NE(imp.output.find("read step 5 of the Orbax checkpoint"), std::string::npos) << imp.output;

  models::register_models();
  auto model = models::build_model(c.registry_type, c.options, std::make_shared<Rngs>(0));
  optim::AdamOptions ao(1e-3);
  ao.weight_decay = 0.01;  // optax.adamw's decay, on every param as optax applies it
  optim::Optimizer opt(model, {optim::adamw(ao)});
  CheckpointManagerOptions ro;
  ro.read_only = true;
  ro.enable_async_checkpointing = false;
  auto r = CheckpointManager(stdfs::path(run) / "checkpoints", ro)
               .restore(5, Composite{{"params", StandardRestore(state(*model, Param))},
                                     {"batch_stats", StandardRestore(state(*model, BatchStat))},
                                     {"optimizer", StandardRestore(state(opt))}});
  update(*model, r.state("params"), r.state("batch_stats"));
  update(opt, r.state("optimizer"));
  EXPECT_EQ(state(opt).at("step").value.item<int64_t>(), 5);
  std::map<std::string, at::Tensor> want;
  for (auto& [name, t] : read_safetensors(ref).tensors) want[name] = t;

  model->eval();
  EXPECT_LT(max_abs_diff(model->forward(want.at("x_eval")), want.at("logits_eval")), 1e-5) << c.kind << ": logits";
  model->train();
  zero_grad(*model);
  at::cross_entropy_loss(model->forward(want.at("x_step")), want.at("y_step")).backward();
  opt.update(grads(*model));
  int compared = 0;
  for (const auto& [path, vs] : state(*model, Param)) {
    const double diff = max_abs_diff(vs.value, want.at("params_after/" + path));
    // A conv bias right before BatchNorm has a gradient of exactly 0 in exact arithmetic (the
    // normalization removes any shift): both sides' gradients are rounding noise (~1e-9), which
    // Adam's m / sqrt(v) turns into a step of about +-lr with the noise's sign. Bounded by 2 lr.
    const bool before_batchnorm = c.kind == "cnn" && (path == "layers/0/bias" || path == "layers/4/bias");
    EXPECT_LT(diff, before_batchnorm ? 2e-3 : 1e-5) << c.kind << ": " << path << " after one more step";
    ++compared;
  }
  EXPECT_GE(compared, 4);

  auto resumed = test::run(test::bin("nnx-train") + train_args + " train.max_steps=7 eval.max_batches=1");
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from step 5"), std::string::npos) << resumed.output;
}

}  // namespace

TEST(OrbaxInterop, FlaxMlpAndItsAdamWStateCrossToNnxTrain) {
  if (interop_python().empty()) GTEST_SKIP() << "no .venv-interop (tools/setup-interop.sh makes it; it needs PyPI)";
  expect_orbax_step_crosses({"mlp", "tiny_synthetic.yaml", "model.dropout=0", "MLP",
                             {{"in_features", 16}, {"hidden", {32}}, {"num_classes", 4}, {"dropout", 0.0}}});
}

TEST(OrbaxInterop, AnArchitectureThatDoesNotFitIsOneErrorNamingBothSidesAndWritesNothing) {
  if (interop_python().empty()) GTEST_SKIP() << "no .venv-interop (tools/setup-interop.sh makes it; it needs PyPI)";
  test::TempDir dir;
  const std::string orbax = (dir / "orbax").string(), run = (dir / "run").string();
  ASSERT_EQ(test::run(interop_python() + " " + test::source_dir() + "/tests/tools/orbax_check.py train-save mlp " + orbax + " " +
                      (dir / "jax.safetensors").string()).exit_code, 0);
  auto imp = test::run(test::bin("nnx-ckpt") + " import-orbax " + orbax + " --config " + test::source_dir() +
                       "/configs/tiny_synthetic.yaml model.dropout=0 'model.hidden=[64]' run.dir=" + run + " --python " + interop_python());
  EXPECT_EQ(imp.exit_code, 2) << imp.output;
  EXPECT_NE(imp.output.find("the Orbax checkpoint " + orbax + " step 5' tensor 'model/layers/1/bias' -> 'layers/1/bias': "
                            "shape [32] in the file, [64] in the nnx-cpp model"), std::string::npos) << imp.output;
  EXPECT_FALSE(stdfs::exists(stdfs::path(run) / "checkpoints" / "5"));
  EXPECT_FALSE(stdfs::exists(stdfs::path(run) / "config.json"));
  auto missing = test::run(test::bin("nnx-ckpt") + " import-orbax " + (dir / "none").string() + " --config " +
                           test::source_dir() + "/configs/tiny_synthetic.yaml run.dir=" + run + " --python " + interop_python());
  EXPECT_EQ(missing.exit_code, 2) << missing.output;
  EXPECT_NE(missing.output.find("reading the Orbax checkpoint"), std::string::npos) << missing.output;
  // A single StandardSave item of the model (no optimizer): params only, as step 0 to fine-tune from.
  const std::string alone = (dir / "alone").string();
  ASSERT_EQ(test::run(interop_python() + " " + test::source_dir() + "/tests/tools/orbax_check.py save-model mlp " + alone).exit_code, 0);
  auto single = test::run(test::bin("nnx-ckpt") + " import-orbax " + alone + " 3 --config " + test::source_dir() +
                          "/configs/tiny_synthetic.yaml model.dropout=0 run.dir=" + (dir / "single").string() + " --python " +
                          interop_python());
  EXPECT_EQ(single.exit_code, 0) << single.output;
  EXPECT_NE(single.output.find("read step 3 of the Orbax checkpoint"), std::string::npos) << single.output;
  EXPECT_TRUE(stdfs::exists(dir / "single" / "checkpoints" / "0" / "checkpoint.h5")) << single.output;
}

// nnx-train trains; export-orbax writes the step; the seed's workflow restores it into a Flax NNX
// model (and nnx.Optimizer) whose logits equal the nnx-cpp model's on the same batch.
void expect_nnx_step_restores_in_flax(const Case& c) {
  test::TempDir dir;
  const std::string run = (dir / "run").string(), orbax = (dir / "orbax").string();
  const std::string train_args = " --config " + test::source_dir() + "/configs/" + c.config + " " + c.overrides + " run.dir=" + run;
  auto trained = test::run(test::bin("nnx-train") + train_args + " train.max_steps=12 eval.max_batches=1 -q");
  ASSERT_EQ(trained.exit_code, 0) << trained.output;
  auto ex = test::run(test::bin("nnx-ckpt") + " export-orbax " + run + " -o " + orbax + " --python " + interop_python());
  ASSERT_EQ(ex.exit_code, 0) << ex.output;
  EXPECT_NE(ex.output.find("wrote step 12 of"), std::string::npos) << ex.output;

  models::register_models();
  auto model = models::build_model(c.registry_type, c.options, std::make_shared<Rngs>(0));
  CheckpointManagerOptions ro;
  ro.read_only = true;
  ro.enable_async_checkpointing = false;
  auto r = CheckpointManager(stdfs::path(run) / "checkpoints", ro)
               .restore(12, Composite{{"params", StandardRestore(state(*model, Param))},
                                      {"batch_stats", StandardRestore(state(*model, BatchStat))}});
  update(*model, r.state("params"), r.state("batch_stats"));
  model->eval();
  const at::Tensor x = c.kind == "mlp" ? at::randn({5, 16}) : at::randn({5, 1, 28, 28});
  write_safetensors((dir / "x.safetensors").string(), {{"x", x}});
  auto py = test::run(interop_python() + " " + test::source_dir() + "/tests/tools/orbax_check.py restore " + c.kind + " " + orbax +
                      " 12 " + (dir / "x.safetensors").string() + " " + (dir / "jax.safetensors").string());
  ASSERT_EQ(py.exit_code, 0) << py.output;
  std::map<std::string, at::Tensor> jax;
  for (auto& [name, t] : read_safetensors((dir / "jax.safetensors").string()).tensors) jax[name] = t;
  EXPECT_LT(max_abs_diff(model->forward(x), jax.at("logits")), 1e-5) << c.kind;
  EXPECT_EQ(jax.at("count").item<int64_t>(), 12);
  // Orbax never overwrites a step: a second export of it is an error.
  auto again = test::run(test::bin("nnx-ckpt") + " export-orbax " + run + " -o " + orbax + " --python " + interop_python());
  EXPECT_EQ(again.exit_code, 2) << again.output;
}

TEST(OrbaxInterop, AnNnxTrainRunRestoresInFlaxWithTheSeedsWorkflow) {
  if (interop_python().empty()) GTEST_SKIP() << "no .venv-interop (tools/setup-interop.sh makes it; it needs PyPI)";
  expect_nnx_step_restores_in_flax({"mlp", "tiny_synthetic.yaml", "model.dropout=0", "MLP",
                                    {{"in_features", 16}, {"hidden", {32}}, {"num_classes", 4}, {"dropout", 0.0}}});
  if (!stdfs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) return;  // the CNN trains on it
  expect_nnx_step_restores_in_flax({"cnn", "fashion_mnist_cnn.yaml", "'model.channels=[4,8]' model.hidden=16 model.dropout=0 data.limit=256",
                                    "CNN",
                                    {{"in_channels", 1}, {"image_size", 28}, {"channels", {4, 8}}, {"hidden", 16}, {"num_classes", 10},
                                     {"dropout", 0.0}, {"bn_momentum", 0.1}}});
}

TEST(OrbaxInterop, FlaxCnnWithBatchNormCrossesWithConvKernelsTransposed) {
  if (interop_python().empty()) GTEST_SKIP() << "no .venv-interop (tools/setup-interop.sh makes it; it needs PyPI)";
  if (!stdfs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "Fashion-MNIST not installed (dataset-fashion-mnist): nnx-train cannot resume the CNN";
  expect_orbax_step_crosses({"cnn", "fashion_mnist_cnn.yaml", "'model.channels=[4,8]' model.hidden=16 model.dropout=0 data.limit=256",
                             "CNN",
                             {{"in_channels", 1}, {"image_size", 28}, {"channels", {4, 8}}, {"hidden", 16}, {"num_classes", 10},
                              {"dropout", 0.0}, {"bn_momentum", 0.1}}});
}
