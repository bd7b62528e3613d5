// checkpoint.local: a fast tier of frequent saves in this host's memory, above the persistent one.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "nnx/checkpoint/args.h"
#include "nnx/checkpoint/manager.h"
#include "tools/trainer/config.h"

namespace nnx::distributed {
class ProcessGroup;
}

namespace nnx::trainer {

/// Where a run's local tier lives by default: /dev/shm/nnx-local/<run dir's name>-<hash of its
/// absolute path> (the temp directory where there is no /dev/shm).
std::filesystem::path default_local_directory(const std::filesystem::path& run_dir);

/// The local tier of one rank: a CheckpointManager of its own (one process, no coordination)
/// under <directory>/rank-<r>-of-<n>, holding exactly this rank's state (its BatchNorm
/// statistics, RNG streams, optimizer state and data position as it holds them), saved every
/// save_interval_steps. The world size in the folder's name keeps a restart at another world
/// size from reading it. Commits are atomic as in the persistent tier; a folder that cannot be
/// made and a failed save (a full /dev/shm) are warnings, and training goes on with the
/// persistent tier. Not built yet: replicas on peer ranks.
class LocalTier {
 public:
  /// Off when cfg.save_interval_steps is 0, or (with a warning) when its folder cannot be made.
  /// `run_dir` names the default directory.
  LocalTier(const LocalTierConfig& cfg, const std::filesystem::path& run_dir, int rank, int world_size);
  ~LocalTier();
  bool enabled() const { return manager_ != nullptr; }
  /// This rank's folder (empty when off).
  const std::filesystem::path& directory() const { return dir_; }
  /// Whether the interval asks for a save at `step`.
  bool due(int64_t step) const { return manager_ && manager_->should_save(step); }
  /// Saves `args` at `step` when the interval says so (or `force`); failures are warnings.
  void maybe_save(int64_t step, const checkpoint::Composite& args, bool force = false);
  /// The newest step that every rank has committed in its local tier, agreed over `pg` (null:
  /// this rank alone); nullopt when there is none. A collective: every rank calls it.
  std::optional<int64_t> newest_common_step(distributed::ProcessGroup* pg) const;
  /// Where `step` is (or would be) committed in this rank's folder.
  std::filesystem::path step_path(int64_t step) const { return manager_ ? manager_->step_path(step) : std::filesystem::path(); }
  /// This rank's state at `step` (checksums verified). Throws nnx::Error.
  checkpoint::Restored restore(int64_t step, const checkpoint::Composite& args) const;
  /// Waits for a save in flight (its failure is a warning).
  void wait_until_finished();
  /// The run finished: waits, then removes this rank's folder (and the run's, once empty).
  void remove();

 private:
  std::filesystem::path dir_;
  bool failing_ = false;  // a save failed: warn once per failure streak
  std::unique_ptr<checkpoint::CheckpointManager> manager_;
};

}  // namespace nnx::trainer
