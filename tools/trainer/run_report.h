// What a run reports: metrics records (metrics.jsonl), progress lines, and its start and end.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>

#include "nnx/trainer/train_state.h"

namespace nnx::distributed {
struct GatherStats;
}

namespace nnx::checkpoint::emergency {
class CheckpointManager;
}

namespace nnx::trainer {

/// "1h02m03s" ("?" for a negative or non-finite number of seconds).
std::string format_duration(double seconds);

/// The reporting part of a run: <run.dir>/metrics.jsonl (rank 0), the step lines, and the
/// summaries at start and end. Reads the TrainState; appends to its history.
class RunReport {
 public:
  using Clock = std::chrono::steady_clock;
  /// `t_start`: when the run began (the end's summary counts from it).
  RunReport(const RunContext& ctx, TrainState& state, Clock::time_point t_start);
  /// Rewrites metrics.jsonl from the history (rank 0): after a restore, records newer than the
  /// resumed step go. Throws nnx::IOError when it cannot be written.
  void rewrite_metrics_file() const;
  /// Counts one micro-batch's examples towards the examples/s of the next record.
  void count_examples(int64_t n) { window_examples_ += n; }
  /// One optimizer step taken (state.step already counts it), with its mean loss.
  void count_step(double loss);
  /// The step's metrics record when it is due (train.log_every, eval.every_steps, the last
  /// step), evaluating through `evaluate` (eval loss, accuracy) on rank 0 when eval is due;
  /// appended to the history and metrics.jsonl and printed. Null when not due.
  nlohmann::json record_step(double loss, const std::function<std::pair<double, double>()>& evaluate);
  /// The line before the first step: `what` (model, data, device, ranks) as Run describes it.
  void start(const std::string& what);
  /// The summary after the last step: steps, time, loss, the tiers' saves and where things are.
  void done(const checkpoint::emergency::CheckpointManager& tiers, const distributed::GatherStats* gathers) const;
  const std::filesystem::path& metrics_path() const { return metrics_path_; }

 private:
  const RunContext& ctx_;
  TrainState& state_;
  std::filesystem::path metrics_path_;
  Clock::time_point t_start_;
  Clock::time_point window_start_ = Clock::now();
  int64_t window_examples_ = 0, window_steps_ = 0;
  int64_t first_step_ = 0;
  double last_loss_ = 0;
};

}  // namespace nnx::trainer
