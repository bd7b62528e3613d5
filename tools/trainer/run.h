// One nnx-train run in named stages: build, restore, step, evaluate, save, report.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "nnx/checkpoint/manager.h"
#include "nnx/framework/data/loader.h"
#include "nnx/framework/distributed.h"
#include "nnx/framework/gradient_reducer.h"
#include "nnx/framework/module.h"
#include "nnx/optim/optimizer.h"
#include "nnx/trainer/datasets.h"
#include "nnx/checkpoint/emergency/checkpoint_manager.h"
#include "nnx/trainer/trainer.h"

namespace nnx::trainer {

/// The checkpoint's model no longer matches the one the config builds: their GraphDefs differ.
/// Exit code 2 (bad input: use a new run.dir or the original model settings).
class ModelChangedError : public Error {
 public:
  using Error::Error;
};

/// The checkpoint items of a run, listed once: saved by save(), read back by restore() (all but
/// "graphdef", which restore() reads first, alone, to find a changed model).
struct CheckpointItem {
  const char* name;
  bool is_state;  ///< a State (StandardSave/Restore), else JSON
  bool restored;
};
inline constexpr CheckpointItem kCheckpointItems[] = {
    {"params", true, true},   {"batch_stats", true, true}, {"rngs", true, true},     {"optimizer", true, true},
    {"data", false, true},    {"config", false, true},     {"metrics", false, true}, {"trainer", false, true},
    {"graphdef", false, false}};

/// A training run: the objects built from a config, and the stages that use them.
class Run {
 public:
  /// Build: device, process group, data, model, optimizer, loader, checkpoint manager.
  Run(const Config& cfg, const RunOptions& ropts);
  /// Restore (or initialise), then step / evaluate / save until train.max_steps or a
  /// preemption, then report. Returns the exit code (see train()).
  int execute();

 private:
  using Clock = std::chrono::steady_clock;
  void build_distributed();
  void write_resolved_config();
  void build_model(const Datasets& ds);
  void build_optimizer();
  void build_loader_and_manager();
  bool restore();
  void check_same_model(int64_t step);
  void apply_restored(const checkpoint::Restored& r, int64_t at, const std::filesystem::path& from);
  void set_data_position(const nlohmann::json& d);
  bool import_initial_state();  // --init-from
  // One optimizer step over train.grad_accum_steps micro-batches: (mean loss, finite).
  std::optional<at::ScalarType> autocast_dtype() const;  // train.autocast
  std::pair<double, bool> step();
  std::pair<double, double> evaluate();
  // The BatchStats a persistent save writes: with distributed.batch_stats: local, rank 0's,
  // broadcast into a copy (a collective: every rank calls it); else this rank's own.
  State batch_stats_to_save();
  // What a save writes at `at_step`; `per_rank`: the local tier's (this rank's optimizer rows
  // under ZeRO-1).
  checkpoint::Composite checkpoint_args(int64_t at_step, const State& batch_stats, bool per_rank);
  bool params_finite() const;
  // Throws nnx::IOError (nothing written) unless `params_ok` (params_finite()).
  void save(int64_t at_step, const nlohmann::json& metrics, bool force, bool params_ok);
  // Both tiers' end: close() writes a step resumed from the local tier that the persistent
  // tier lacks, then removes the local tier.
  void close_tiers();
  nlohmann::json report_step(double loss);
  void report_start() const;
  void report_done() const;
  bool after_step(double loss, bool finite);

  const Config& cfg_;
  const RunOptions& ropts_;
  Clock::time_point t_start_ = Clock::now();
  c10::Device device_;
  distributed::Env env_;
  std::shared_ptr<distributed::ProcessGroup> pg_, ckpt_pg_;
  distributed::Backend backend_ = distributed::Backend::kGloo;  ///< of CUDA tensors' collectives
  bool lead_ = true;
  std::ostream* out_;
  std::ostream* progress_ = nullptr;  // out_, or nothing with --quiet
  Datasets ds_;
  std::shared_ptr<Module> model_;
  std::unique_ptr<optim::Optimizer> optimizer_;
  std::unique_ptr<distributed::GradientReducer> reducer_;  // data parallel with overlap_grad_reduce
  bool zero1_ = false;
  std::unique_ptr<data::DataLoader> loader_;
  int64_t global_batch_ = 0;
  std::unique_ptr<checkpoint::emergency::CheckpointManager> tiers_;  // the local tier above the persistent one
  checkpoint::CheckpointManager* manager_ = nullptr;                  // tiers_->persistent()
  bool resumed_local_ = false;
  std::filesystem::path metrics_path_;
  nlohmann::json history_ = nlohmann::json::array();
  int64_t step_ = 0, skipped_ = 0, first_step_ = 0;
  double last_loss_ = 0;
  bool resumed_ = false;
  Clock::time_point window_start_ = Clock::now();
  int64_t window_examples_ = 0, window_steps_ = 0;
};

}  // namespace nnx::trainer
