// The names the docs' C++ snippets assume (a model, its state, a manager, a step...), so that
// every snippet compiles as written (tests/docs/extract_snippets.py). Compiled, never run.
#pragma once

#include <ATen/ATen.h>

#include <nnx/nnx.h>
#include <nnx/trainer/datasets.h>
#include <nnx/trainer/registry.h>
#include <nnx/trainer/trainer.h>

namespace ocp = nnx::checkpoint;   // docs/from-flax.md's Orbax table
using namespace nnx::optim;        // docs/from-flax.md's optimizer table names nnx::optim's functions

/// The docs' user module (M, Net): one Linear.
struct M : nnx::ModuleBase<M> {
  explicit M(nnx::Rngs& rngs) { register_module("linear", std::make_shared<nnx::Linear>(2, 3, rngs)); }
  at::Tensor forward(const at::Tensor& x) override { return child("linear").forward(x); }
};
using Net = M;

/// README's registered model, with examples/custom_trainer's constructor.
struct ResMLP : nnx::ModuleBase<ResMLP> {
  ResMLP(int64_t in, int64_t width, int64_t depth, double dropout, int64_t classes, std::shared_ptr<nnx::Rngs> rngs) {
    register_module("rngs", rngs);
    register_module("hidden", std::make_shared<nnx::Linear>(in, width, *rngs));
    register_module("head", std::make_shared<nnx::Linear>(width, classes, *rngs));
  }
  at::Tensor forward(const at::Tensor& x) override { return child("head").forward(at::relu(child("hidden").forward(x))); }
};

/// A user's item kind (from-flax: a custom CheckpointHandler).
struct SaveArgs {};
struct RestoreArgs {};

/// Each snippet is a scope of run(), a member of a Module: register_variable and friends resolve
/// as in a constructor.
struct DocSnippets : nnx::ModuleBase<DocSnippets> {
  using T = int;
  int run(int argc, char** argv);
  void train_step() {}
  ocp::Composite checkpoint_args() const { return {}; }
  nlohmann::json metrics() const { return {}; }

  nnx::Rngs rngs{0};
  std::shared_ptr<M> model = std::make_shared<M>(rngs);
  nnx::State state = nnx::state(*model), p = state, abstract_state = state;
  nnx::GraphDef graphdef = nnx::graphdef(*model);
  at::Tensor x = at::zeros({2, 2}), loss = x.sum();
  std::vector<int64_t> shape = {2, 3};
  double lr = 1e-3, l = 0.5;
  int64_t step = 1, start = 0, max_steps = 10, w = 100, d = 1000;
  std::string dir = "ckpts", path = "ckpts/1", item = "extra";
  Optimizer opt{model, {adam(AdamOptions(lr))}};
  ocp::CheckpointManagerOptions o;
  ocp::CheckpointManager mngr{dir, o};
  ocp::Composite args;
  ocp::Restored r;
  std::shared_ptr<const ocp::ItemHandler> handler;
};
