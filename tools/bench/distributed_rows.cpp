// nnx-bench's distributed rows (tools/bench/rows.h).
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

// One rank of the 2-rank save row (run under nnx-launch by bench_distributed_save).
int dist_save_rank(const std::string& dir, int reps) {
  nnx::trainer::keep_freed_memory();  // as the 1-rank contender
  auto env = distributed::env_from_environment();
  auto pg = distributed::ProcessGroup::create(env, std::chrono::seconds(120));
  at::manual_seed(0);  // the same replicated state on every rank
  State s = make_state(100, 1000 * 1000);
  Checkpointer ck;
  ck.process_group = pg->new_group("ckpt");
  double t = median_time(reps, [&](int i) {
    pg->barrier();
    ck.save(stdfs::path(dir) / ("dist" + std::to_string(i)), Composite{{"params", StandardSave(s)}});
  });
  if (env.rank == 0) std::cout << t << "\n";
  return 0;
}

// One rank of the overlapped all-reduce row (launched by nnx-launch, 2 ranks): the same MLP on
// every rank (784 inputs, 8 hidden layers of 1024, 10 classes: 8.2 M params, 33 MB of fp32
// gradients in 3 buckets; one intra-op thread per rank: 2 ranks on 2 cores), a rank-specific
// batch of 32; steps with the gradients all-reduced
// while backward runs (GradientReducer, 25 MB buckets) and after it (all_reduce_mean), the two
// alternating, `rounds` of each after 3 of each to warm up. Rank 0 prints the per-round times.
int dp_step_rank(int rounds) {
  auto env = distributed::env_from_environment();
  auto pg = distributed::ProcessGroup::create(env, std::chrono::seconds(120));
  at::set_num_threads(1);
  models::register_models();
  auto model = models::build_model("MLP", {{"in_features", 784}, {"hidden", std::vector<int64_t>(8, 1024)}, {"num_classes", 10},
                                            {"dropout", 0.0}},
                                   std::make_shared<Rngs>(0));
  distributed::GradientReducer reducer(*model, pg);
  at::manual_seed(env.rank);
  const at::Tensor x = at::randn({32, 784}), y = at::randint(0, 10, {32}, at::kLong);
  auto step = [&](bool overlap) {
    return time_once([&] {
      zero_grad(*model, false);
      if (overlap) reducer.arm();
      at::cross_entropy_loss(model->forward(x), y).backward();
      if (overlap) reducer.finish();
      else distributed::all_reduce_mean(grads(*model), *pg);
    });
  };
  for (int i = 0; i < 3; ++i) step(true), step(false);
  std::ostringstream out;
  for (int i = 0; i < rounds; ++i) {
    const bool first = i % 2 == 0;  // alternate which goes first
    const double a = step(first), b = step(!first);
    out << (first ? a : b) * 1e3 << " " << (first ? b : a) * 1e3 << " ";
  }
  if (env.rank == 0) std::cout << out.str() << "\n";
  return 0;
}

void bench_overlapped_all_reduce(int reps) {
  const int rounds = 8 * reps;
  std::string out = run_capture(std::string(NNX_BIN_DIR) + "/nnx-launch --nproc 2 -- " + NNX_BIN_DIR + "/nnx-bench --dp-step-rank " +
                                std::to_string(rounds) + " 2>/dev/null");
  auto pos = out.find("[rank 0] ");
  std::vector<double> overlapped, after;
  if (pos != std::string::npos) {
    std::istringstream in(out.substr(pos + 9));
    for (double a, b; in >> a >> b;) overlapped.push_back(a), after.push_back(b);
  }
  if (overlapped.empty()) {
    rows.push_back({"2-rank step, all-reduce during vs after backward", "failed", out.substr(0, 200), "-", "reported", ""});
    return;
  }
  add_rounds("2-rank step (Gloo, MLP 8.2 M params): gradients all-reduced while backward runs vs after it", overlapped, after,
             " ms", "all-reduce after backward", 0);
}

void bench_distributed_save(const stdfs::path& dir, int reps) {
  at::manual_seed(0);
  State s = make_state(100, 1000 * 1000);
  Checkpointer ck;
  double one = median_time(reps, [&](int i) { ck.save(dir / ("one" + std::to_string(i)), Composite{{"params", StandardSave(s)}}); });
  std::string out = run_capture(std::string(NNX_BIN_DIR) + "/nnx-launch --nproc 2 -- " + NNX_BIN_DIR + "/nnx-bench --dist-save-rank " +
                                dir.string() + " --reps " + std::to_string(reps) + " 2>/dev/null");
  auto pos = out.find("[rank 0] ");
  if (pos == std::string::npos) {
    rows.push_back({"2-rank save vs 1-rank save (400 MB)", "failed", out.substr(0, 200), "-", "reported", ""});
    return;
  }
  double two = std::stod(out.substr(pos + 9));
  add("2-rank save vs 1-rank save (400 MB, same disk)", two, one, " s", "1 rank", 0);
}


}  // namespace nnx::bench
