// nnx-bench's manager row (tools/bench/rows.h).
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

// ---- CheckpointManager: should_save + retention per step, by the number of committed steps ----
// The manager nnx-train builds by default (saves every 100 steps or on preemption; max_to_keep
// and best by eval_loss), reopened on a directory of `n` committed steps (read once). Per step:
// one should_save(), plus one evaluation of the preservation policy over the cached step
// information, which a manager runs only after a save (counted at every step here: a bound).
struct ManagerStepCost {
  double should_save_us, retention_us;
};

ManagerStepCost manager_step_cost(const stdfs::path& dir, int64_t n) {
  CheckpointManagerOptions o;
  o.enable_async_checkpointing = false;
  o.handle_preemption_signals = false;
  o.save_interval_steps = 100;
  o.max_to_keep = static_cast<int>(n);  // keeps all n: every step is still there at the end
  o.best_fn = metric_key("eval_loss");
  State tiny = make_state(1, 16);
  {
    CheckpointManager m(dir, o);
    for (int64_t s = 1; s <= n; ++s) {
      nlohmann::json metrics = {{"loss", 1.0 / static_cast<double>(s)}};
      if (s % 3 == 0) metrics["eval_loss"] = std::abs(std::sin(static_cast<double>(s)));  // some steps have no eval
      m.save(s * 100, Composite{{"params", StandardSave(tiny)}}, metrics, /*force=*/true);
    }
  }
  CheckpointManager m(dir, o);
  NNX_CHECK(m.all_steps().size() == static_cast<size_t>(n), "expected ", n, " committed steps in ", dir.string());
  const int64_t calls = 200000, first = (n + 1) * 100;
  bool sink = false;
  auto t0 = Clock::now();
  for (int64_t s = first; s < first + calls; ++s) sink |= m.should_save(s);
  const double should_save_us = secs_since(t0) / calls * 1e6;
  const auto infos = m.checkpoints();
  const auto policy = o.resolved_preservation_policy();
  const int reps = 2000;
  size_t kept = 0;
  t0 = Clock::now();
  for (int i = 0; i < reps; ++i) {
    auto flags = policy->should_preserve(infos, PreservationContext{unix_seconds_now()});
    kept += static_cast<size_t>(std::count(flags.begin(), flags.end(), true));
  }
  const double retention_us = secs_since(t0) / reps * 1e6;
  NNX_CHECK(kept == static_cast<size_t>(n) * reps && sink, "unexpected retention result");  // every 100th step saves
  return {should_save_us, retention_us};
}

void bench_manager(const stdfs::path& dir) {
  std::map<int64_t, ManagerStepCost> cost;
  for (int64_t n : {10, 1000}) {
    auto t0 = Clock::now();
    cost[n] = manager_step_cost(dir / ("manager-" + std::to_string(n)), n);
    std::cerr << "  " << n << " steps: " << secs_since(t0) << " s (saves included)\n";
  }
  const ManagerStepCost& big = cost[1000];
  const ManagerStepCost& small = cost[10];
  add("CheckpointManager should_save per step, 1,000 committed steps (flat: vs 10)", big.should_save_us,
      small.should_save_us, " us", "10 steps", 1.5);
  // Retention evaluates the policy over every cached step (as Orbax's policies do): linear.
  add("CheckpointManager retention per save, 1,000 committed steps (vs 10)", big.retention_us, small.retention_us,
      " us", "10 steps", 0);
  const double total = big.should_save_us + big.retention_us;
  rows.push_back({"CheckpointManager should_save + retention per step (retention counted every step), 1,000 steps",
                  fmt(total, " us", 2), "-", "-", "< 50 us", total < 50 ? "ok" : "MISSED"});
}


}  // namespace nnx::bench
