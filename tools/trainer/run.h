// One nnx-train run: it builds the state (run_build.cpp) and steps it (run.cpp); its
// checkpoints (RunCheckpoints) and its reporting (RunReport) are parts of their own.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <memory>
#include <optional>
#include <utility>

#include "nnx/framework/distributed.h"
#include "nnx/framework/fully_shard.h"
#include "nnx/framework/gradient_reducer.h"
#include "nnx/trainer/datasets.h"
#include "nnx/trainer/run_checkpoints.h"
#include "nnx/trainer/run_report.h"
#include "nnx/trainer/train_state.h"
#include "nnx/trainer/trainer.h"

namespace nnx::trainer {

/// A training run: the objects built from a config, and the loop that steps them.
class Run {
 public:
  /// Build: device, process group, data, model, optimizer, loader, both checkpoint tiers.
  Run(const Config& cfg, const RunOptions& ropts);
  ~Run();
  /// Restore (or initialise), then step / evaluate / save until train.max_steps or a
  /// preemption, then report. Returns the exit code (see train()).
  int execute();

 private:
  using Clock = std::chrono::steady_clock;
  void build_distributed();
  void write_resolved_config();
  void build_model(const Datasets& ds);
  void shard_model();  // distributed.zero_stage: 3
  void build_optimizer();
  void build_loader();
  std::optional<at::ScalarType> autocast_dtype() const;  // train.autocast
  at::Tensor forward(const at::Tensor& x);                // the model's, through ZeRO-3's units when on
  // One optimizer step over train.grad_accum_steps micro-batches: (mean loss, finite).
  std::pair<double, bool> step();
  // Averages the BatchNorm statistics over the ranks (distributed.batch_stats: sync), a
  // collective after each step's backward.
  void sync_batch_stats();
  std::pair<double, double> evaluate();
  std::string describe() const;  // the start line: model, data, device, ranks

  const Config& cfg_;
  Clock::time_point t_start_ = Clock::now();
  RunContext ctx_;
  c10::Device device_;
  distributed::Backend backend_ = distributed::Backend::kGloo;  ///< of CUDA tensors' collectives
  Datasets ds_;
  TrainState state_;
  std::unique_ptr<distributed::GradientReducer> reducer_;  // data parallel with overlap_grad_reduce
  std::unique_ptr<distributed::FullyShardedModel> fsdp_;   // distributed.zero_stage: 3
  std::unique_ptr<RunCheckpoints> checkpoints_;
  std::unique_ptr<RunReport> report_;
};

}  // namespace nnx::trainer
