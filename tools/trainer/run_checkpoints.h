// A run's checkpoint I/O: both tiers through the multi-tier CheckpointManager, the items a
// save writes, the restore at start, --init-from, and the end.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>

#include "nnx/checkpoint/args.h"
#include "nnx/trainer/train_state.h"

namespace nnx::checkpoint {
class CheckpointManager;
struct Restored;
namespace emergency {
class CheckpointManager;
}
}  // namespace nnx::checkpoint

namespace nnx::trainer {

/// The checkpoint's model no longer matches the one the config builds: their GraphDefs differ.
/// Exit code 2 (bad input: use a new run.dir or the original model settings).
class ModelChangedError : public Error {
 public:
  using Error::Error;
};

/// The checkpoint items of a run, listed once: saved by every save, read back by restore() (all
/// but "graphdef", which restore() reads first, alone, to find a changed model).
struct CheckpointItem {
  const char* name;
  bool is_state;  ///< a State (StandardSave/Restore), else JSON
  bool restored;
};
inline constexpr CheckpointItem kCheckpointItems[] = {
    {"params", true, true},   {"batch_stats", true, true}, {"rngs", true, true},     {"optimizer", true, true},
    {"data", false, true},    {"config", false, true},     {"metrics", false, true}, {"trainer", false, true},
    {"graphdef", false, false}};

/// The checkpoint part of a run: <run.dir>/checkpoints (the persistent tier) and the local tier
/// (checkpoint.local), both through checkpoint::emergency::CheckpointManager. Collective over
/// the ranks where noted. Errors: nnx::Error for bad input (a changed model, a step that does not
/// restore), nnx::IOError for failed I/O.
class RunCheckpoints {
 public:
  /// Creates run.dir (nnx::Error naming where it was set when it cannot) and the managers.
  RunCheckpoints(const RunContext& ctx, TrainState& state);
  ~RunCheckpoints();
  /// Restores the newest step into the state (or --resume-from): from the local tier when every
  /// rank can get a step there no older than the persistent tier's latest, else from the
  /// persistent tier (the manager then discards newer local steps). Returns whether the run
  /// resumed.
  bool restore();
  /// Whether restore() took the local tier (each rank then holds its own state).
  bool resumed_local() const { return resumed_local_; }
  /// --init-from (a torch state dict, safetensors, or a whole training state); with
  /// --import-only saves step 0 (or the source's step) and returns true: the run ends there.
  bool import_initial_state(bool resumed);
  /// After state.step's update: saves each tier that is due (the policy, the last step, or a
  /// preemption, whose decision the ranks agree on); `record` is the step's metrics record (or
  /// null). Never writes non-finite params (nnx::IOError when the persistent tier was due).
  /// Returns whether a preemption stops the run.
  bool save_due(const nlohmann::json& record, double loss, bool finite);
  /// The run ended (also with nothing to train): the newest step, when the persistent tier lacks
  /// it (a resume from the local tier with nothing left to train), is saved there and said so,
  /// then the local tier is removed.
  void close();
  /// The persistent tier.
  checkpoint::CheckpointManager& persistent();
  const checkpoint::emergency::CheckpointManager& tiers() const { return *tiers_; }

 private:
  void check_same_model(int64_t step);
  void apply_restored(const checkpoint::Restored& r, int64_t at, const std::filesystem::path& from);
  void set_data_position(const nlohmann::json& d);
  // The BatchStats a persistent save writes, an explicit collective step: with
  // distributed.batch_stats: local, rank 0's, broadcast into a copy; else this rank's own.
  State batch_stats_to_save();
  // What a save writes at `at_step`; `per_rank`: the local tier's (this rank's optimizer rows
  // under ZeRO-1).
  checkpoint::Composite checkpoint_args(int64_t at_step, const State& batch_stats, bool per_rank);
  bool params_finite() const;
  // A forced persistent save of the current state (--init-from's import).
  void save_now(int64_t at_step);

  const RunContext& ctx_;
  TrainState& state_;
  std::unique_ptr<checkpoint::emergency::CheckpointManager> tiers_;
  bool resumed_local_ = false;
};

}  // namespace nnx::trainer
