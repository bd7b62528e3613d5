// nnx-bench's optimizer and eval_shape rows (tools/bench/rows.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/pooling.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <atomic>
#include <thread>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <random>
#include "nnx/checkpoint/async_checkpointer.h"
#include "nnx/checkpoint/shard_planner.h"
#include "nnx/checkpoint/io/device_copies.h"
#include "nnx/checkpoint/format/safetensors.h"
#include "nnx/checkpoint/io/fs.h"
#include "nnx/checkpoint/manager.h"
#include "nnx/framework/compat.h"
#include "nnx/framework/data/dataset.h"
#include "nnx/framework/distributed.h"
#include "nnx/checkpoint/emergency/peer_replicas.h"
#include "nnx/framework/graph.h"
#include "nnx/framework/host_memory.h"
#include "nnx/framework/gradient_reducer.h"
#include "nnx/models/models.h"
#include "nnx/trainer/trainer.h"
#include "nnx/optim/optimizer.h"

#include "bench_common.h"
#include "rows.h"

namespace nnx::bench {

using namespace nnx::checkpoint;

// ---- optimizer: 10 M params in 100 tensors ---------------------------------------------------
void bench_optimizer(int reps, const std::string& condition, double target) {
  const int n = 100;
  const int64_t numel = 100 * 1000;
  auto model = std::make_shared<ModuleDict>();
  std::vector<at::Tensor> plain;
  State g;
  for (int i = 0; i < n; ++i) {
    auto p = at::randn({numel}).requires_grad_(true);
    model->register_variable("p" + std::to_string(i), Param(p));
    auto q = p.detach().clone().requires_grad_(true);
    q.mutable_grad() = at::randn({numel});
    plain.push_back(q);
    g.insert("p" + std::to_string(i), {Param, q.grad(), {}});
  }
  optim::Optimizer ours(model, {optim::adam()});
  torch::optim::Adam theirs(plain, torch::optim::AdamOptions(1e-3));
  for (int w = 0; w < 3; ++w) {
    ours.update(g);
    theirs.step();
  }
  int r = reps * 10;
  double t_ours = median_time(r, [&](int) { ours.update(g); });
  double t_theirs = median_time(r, [&](int) { theirs.step(); });
  add("optimizer update, Adam, 10 M params / 100 tensors (" + condition + ")", t_ours * 1e3, t_theirs * 1e3, " ms",
      "torch::optim::Adam", target);
}

// ---- eval_shape of a 10-billion-parameter GPT --------------------------------------------------
void bench_eval_shape() {
  int64_t before = rss_kb("VmRSS:");
  auto t0 = Clock::now();
  auto m = eval_shape([] {
    auto r = std::make_shared<Rngs>(std::map<std::string, uint64_t>{{"params", 0}, {"dropout", 1}});
    return models::build_model("GPT", {{"vocab_size", 50257}, {"block_size", 2048}, {"d_model", 4096}, {"num_heads", 32}, {"num_layers", 50}}, r);
  });
  double t = secs_since(t0);
  int64_t after = rss_kb("VmRSS:");
  int64_t params = 0;
  for (auto& [p, vs] : state(*m, Param)) params += vs.value.numel();
  rows.push_back({"eval_shape, GPT of " + fmt(params / 1e9, " B params", 2), fmt(t, " s"), "-", "-", "< 1 s", t < 1 ? "ok" : "MISSED"});
  rows.push_back({"eval_shape memory allocated", fmt((after - before) / 1024.0, " MB", 1), "-", "-",
                  "~0 (" + fmt(params * 4 / 1e9, " GB", 1) + " if real)", (after - before) < 64 * 1024 ? "ok" : "MISSED"});
}


}  // namespace nnx::bench
