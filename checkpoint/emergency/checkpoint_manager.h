// The multi-tier CheckpointManager: a local tier per rank with peer replicas, above the
// persistent CheckpointManager (Orbax's experimental.emergency.CheckpointManager).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>

#include "nnx/checkpoint/args.h"
#include "nnx/checkpoint/emergency/local_checkpoint_options.h"
#include "nnx/checkpoint/manager_options.h"

namespace nnx::distributed {
class ProcessGroup;
}
namespace nnx::checkpoint {
class CheckpointManager;
}

namespace nnx::checkpoint::emergency {

class LocalTier;

/// Both tiers' options. `persistent.process_group` null: a group of the manager's `pg` made for
/// the persistent tier (its background commits never interleave with other collectives).
struct CheckpointManagerOptions {
  LocalCheckpointOptions local;
  checkpoint::CheckpointManagerOptions persistent;
};

/// What one save() writes to each tier. Every rank passes the same shape: both tiers' saves are
/// collective, so a rank that leaves `persistent` empty while another sets it makes the others
/// wait until the process group's timeout ("rank 0 saves" is not a pattern here: every rank
/// saves its part).
struct TierArgs {
  /// This rank's whole state for its local tier (each rank restores exactly what it held: its
  /// RNG streams, BatchNorm statistics, optimizer rows). When the local tier is due and this is
  /// empty, this rank writes nothing at this step (e.g. non-finite params), and still takes part
  /// in the ranks' agreement on replicas.
  std::optional<Composite> local;
  /// The run's state for the persistent tier, as checkpoint::CheckpointManager::save takes it.
  /// Empty: no persistent save at this step.
  std::optional<Composite> persistent;
};

/// How restore() chooses its step.
struct RestoreOptions {
  /// Restore this persistent step (the local tier is not read). Empty: the newest step.
  std::optional<int64_t> step;
  /// When the persistent tier's latest step does not restore, restore the newest one that does
  /// and set the newer ones aside (CheckpointManager::restore_newest_valid, set_aside).
  bool fallback_to_verified = false;
  /// Called with the persistent step about to be restored (the latest, before any fallback),
  /// e.g. to compare the model it describes with the one restoring; it may throw.
  std::function<void(int64_t step)> before_persistent_restore;
};

/// What restore() restored.
struct RestoredStep {
  int64_t step = -1;
  Restored restored;
  std::filesystem::path path;  ///< the step's folder (this rank's, for the local tier)
  bool from_local_tier = false;
};

/// A local tier per rank (LocalTier: each rank's own state in host memory, every
/// local.save_interval_steps, with local.replicas copies on peer ranks), above the persistent
/// CheckpointManager on shared storage. A preempted or crashed run resumes from the newest step
/// that every rank can get from some tier, agreed by all ranks; a rank whose local folder is
/// gone (a replaced host) gets its state from a peer's replica. Checksums are verified on every
/// restore. Every method is collective over the ranks of `pg` where noted.
/// Errors: bad options throw nnx::Error; failures of the local tier are warnings (training goes
/// on with the persistent tier); the persistent tier's failures throw as CheckpointManager's do.
class CheckpointManager {
 public:
  /// The persistent tier in `persistent_directory`; the local tier in options.local.directory,
  /// or "" = default_local_directory(persistent_directory). `pg`: the ranks (null: one).
  /// Collective: the replicas' process group is created here.
  CheckpointManager(std::filesystem::path persistent_directory, CheckpointManagerOptions options,
                    std::shared_ptr<distributed::ProcessGroup> pg = nullptr);
  ~CheckpointManager();
  CheckpointManager(const CheckpointManager&) = delete;
  CheckpointManager& operator=(const CheckpointManager&) = delete;

  /// Whether the persistent tier's policy saves `step` (collective with a process group).
  bool should_save(int64_t step) const;
  /// Whether the local tier saves `step` (the same on every rank).
  bool local_due(int64_t step) const;
  /// Saves `step` to the local tier when local_due(step) (collective) and to the persistent tier
  /// when args.persistent is set and should_save(step) or `force` (collective). `metrics` go to
  /// the persistent tier (best-step policies). Returns whether the persistent tier saved.
  bool save(int64_t step, const TierArgs& args, const nlohmann::json& metrics = nullptr, bool force = false);
  /// The same state to both tiers, each when due.
  bool save(int64_t step, const Composite& args, const nlohmann::json& metrics = nullptr, bool force = false);
  /// Collective. The newest step every rank can restore: the local tier's (each rank its own
  /// state, from its folder or a peer's replica) when no older than the persistent tier's latest
  /// and it restores on every rank, else the persistent tier's. Empty when no tier holds a step.
  /// Local steps newer than the restored one (or all, when none) are then deleted: they belong to
  /// a timeline this run does not continue. Throws what CheckpointManager::restore throws when
  /// the persistent step does not restore.
  std::optional<RestoredStep> restore(const Composite& args, const RestoreOptions& options = {});
  /// The persistent tier's newest step (the local tier's steps are per rank; restore() agrees).
  std::optional<int64_t> latest_step() const;
  /// True once a preemption signal arrived (CheckpointManager::reached_preemption).
  bool reached_preemption(int64_t step) const;
  /// Waits for both tiers' saves in flight; rethrows the persistent tier's failure.
  void wait_until_finished();
  /// After a preemption save: waits, then stops the replicas (collective). The local tier stays
  /// for the resume: do not close() after it (close() removes the tier).
  void stop();
  /// The run finished (collective; every rank passes a callback, or none). The newest step given
  /// to save() or restored must be in the persistent tier before the local tier goes: when it
  /// is not (a run killed after its last local save resumes with nothing left to train; a
  /// last step whose persistent save was not forced), it is saved there as
  /// `state_at(step)` gives it (the caller's state now, at that step), with `metrics`. Without a
  /// callback the local tier is then kept, with a warning, so that step is not lost. Then saves
  /// are waited for, the local tier is removed (its folder, the replicas it holds, this run's
  /// folders at other world sizes) and the persistent tier closed. Returns the step it saved to
  /// the persistent tier, if any. Idempotent.
  std::optional<int64_t> close(const std::function<Composite(int64_t step)>& state_at = nullptr,
                               const nlohmann::json& metrics = nullptr);

  checkpoint::CheckpointManager& persistent() { return *persistent_; }
  const checkpoint::CheckpointManager& persistent() const { return *persistent_; }
  LocalTier& local() { return *local_; }
  const LocalTier& local() const { return *local_; }

 private:
  std::optional<RestoredStep> restore_local(const Composite& args);
  std::optional<RestoredStep> restore_persistent(const Composite& args, const RestoreOptions& options);
  void discard_newer_than(int64_t step);
  bool persistent_lacks_newest() const;

  std::shared_ptr<distributed::ProcessGroup> pg_;
  std::unique_ptr<checkpoint::CheckpointManager> persistent_;
  std::unique_ptr<LocalTier> local_;
  int64_t newest_ = -1;  // the newest step saved (either tier) or restored, for close()
  bool closed_ = false;
};

}  // namespace nnx::checkpoint::emergency
