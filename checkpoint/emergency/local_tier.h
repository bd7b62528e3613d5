// checkpoint.local: a fast tier of frequent saves in this host's memory, above the persistent one.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "nnx/checkpoint/args.h"
#include "nnx/checkpoint/manager.h"
#include "nnx/checkpoint/emergency/local_checkpoint_options.h"
#include "nnx/checkpoint/emergency/peer_replicas.h"

namespace nnx::distributed {
class ProcessGroup;
}

namespace nnx::checkpoint::emergency {

class ProtectedSteps;

/// Where local tiers live by default: /dev/shm/nnx-local (<temp directory>/nnx-local where
/// there is no /dev/shm). The last tier there to be removed removes it.
std::filesystem::path default_local_root();

/// Where a run's local tier lives by default: default_local_root()/<run dir's name>-<hash of
/// its absolute path>, stable across restarts of the run.
std::filesystem::path default_local_directory(const std::filesystem::path& run_dir);

/// The local tier of one rank: a CheckpointManager of its own (one process, no coordination)
/// under <directory>/rank-<r>-of-<n>, holding exactly this rank's state (its BatchNorm
/// statistics, RNG streams, optimizer state and data position as it holds them), saved every
/// save_interval_steps. The world size in the folder's name keeps a restart at another world
/// size from reading it. Commits are atomic as in the persistent tier; a folder that cannot be
/// made and a failed save (a full /dev/shm) are warnings, and training goes on with the
/// persistent tier. With cfg.replicas > 0 and several ranks, every committed step is also
/// copied to the next ranks (PeerReplicas, under <folder>/replicas/), so a rank whose folder is
/// gone (a replaced host) gets its state back from a peer. The ranks agree on which steps they
/// replicate, and keep (beyond max_to_keep, in their folders and in the replicas they hold) the
/// newest step whose replicas every peer confirmed, so once one replication finished there is a
/// step every rank can get, however far the transfers lag behind the training steps.
class LocalTier {
 public:
  /// Off when cfg.save_interval_steps is 0, or (with a warning) when its folder cannot be made.
  /// cfg.directory must be set (nnx::Error otherwise; default_local_directory() gives one).
  /// With `pg` (world_size > 1) and cfg.replicas > 0 it is collective: it creates the
  /// replication's process group.
  LocalTier(const LocalCheckpointOptions& cfg, int rank, int world_size, std::shared_ptr<distributed::ProcessGroup> pg = nullptr);
  ~LocalTier();
  /// Whether the config asks for a local tier (the same on every rank, unlike enabled()).
  bool configured() const { return configured_; }
  /// Whether this rank's tier works.
  bool enabled() const { return manager_ != nullptr; }
  /// The replicas this rank keeps for its peers and sends them (null: none).
  const PeerReplicas* replicas() const { return replicas_.get(); }
  /// This rank's folder (empty when off).
  const std::filesystem::path& directory() const { return dir_; }
  /// Whether `step` is on the local interval (the same answer on every rank).
  bool due(int64_t step) const { return configured_ && step % interval_ == 0; }
  /// Saves `args` at `step` (a due one) unless `args` is empty (params not finite), this rank's
  /// tier is off, or it is still writing the previous save (then this one is skipped); failures
  /// are warnings. With replicas it is a collective of every rank, whatever happened here (one
  /// all-reduce of three numbers): the step goes to the peers only when every rank saved it and
  /// no rank's sender is busy, so all ranks replicate the same steps. Kept beyond max_to_keep:
  /// the newest step every rank's peers confirmed holding, and the step being replicated; a
  /// folder holds at most max_to_keep + 2 steps.
  void maybe_save(int64_t step, const std::optional<checkpoint::Composite>& args);
  /// The newest step every rank's peers confirmed holding, agreed by all ranks (-1: none yet):
  /// kept in this rank's folder and in the replicas it holds of its peers.
  int64_t replicated_step() const { return replicated_; }
  /// Local saves that were due on this rank, written, and skipped because the previous one was
  /// still being written (async; training never waits for this tier).
  int64_t saves_due() const { return saves_due_; }
  int64_t saves_written() const { return saves_written_; }
  int64_t saves_skipped() const { return saves_skipped_; }
  /// Waits until this rank's replica sender is idle (its last transfer committed at the peers,
  /// or failed). For nnx-train's --crash-after-step test hook.
  void wait_for_replicas() const;
  /// A local step every rank can get (prepare_restore), and this rank's failure in getting it.
  struct RestorePlan {
    int64_t step = 0;
    std::exception_ptr failure;  ///< null: this rank has the step; else its error, type kept
  };
  /// A collective of every rank where configured(). Agrees on the newest step that every rank
  /// can restore from the local tier, from its own copy or from a replica a peer holds, when
  /// there is one no older than `not_before` and older than `below` (unset: any); a rank without
  /// its own copy then receives the replica into its folder. Returns nullopt when there is no
  /// such step. When a rank failed to get it, the caller agrees on that (any rank's failure is
  /// every rank's) and may ask again below the step.
  std::optional<RestorePlan> prepare_restore(std::optional<int64_t> not_before,
                                             std::optional<int64_t> below = std::nullopt);
  /// Where `step` is (or would be) committed in this rank's folder.
  std::filesystem::path step_path(int64_t step) const { return manager_ ? manager_->step_path(step) : std::filesystem::path(); }
  /// This rank's state at `step` (checksums verified). Throws nnx::Error.
  checkpoint::Restored restore(int64_t step, const checkpoint::Composite& args) const;
  /// Waits for a save in flight (its failure is a warning).
  void wait_until_finished();
  /// Stops replicating (every rank calls it: a barrier when there are replicas), after every
  /// rank's last transfer was received; the tier stays (a preempted run resumes from it).
  void stop_replicas();
  /// Deletes this rank's local steps and the replicas it holds that are newer than `step` (the
  /// step the run resumed from; -1: a fresh start). Failures are warnings.
  void discard_newer_than(int64_t step);
  /// The run finished (every rank calls it: a barrier when there are replicas): waits, stops
  /// replicating, then removes this rank's folder, the folders of this run's local tier at other
  /// world sizes that this host holds (and the run's, once empty; and the default directory's
  /// base, /dev/shm/nnx-local, once empty).
  void remove();

 private:
  std::vector<std::vector<std::vector<int64_t>>> gather_holdings() const;
  std::exception_ptr fetch_from_peer(int64_t step, int rank, int holder, int slot);
  void start_replicas(const LocalCheckpointOptions& cfg, int world_size);
  void find_other_world_sizes(const std::filesystem::path& root, int world_size);
  bool save_here(int64_t step, const checkpoint::Composite& args);
  void agree_and_replicate(int64_t step, bool saved);
  void replicate(int64_t step);
  void protect();

  std::filesystem::path dir_;
  bool configured_ = false;
  bool default_directory_ = false;  // under default_local_root(), which the last run to finish removes
  std::vector<std::filesystem::path> other_world_sizes_;  // this run's tiers at other world sizes
  int64_t saves_due_ = 0, saves_written_ = 0, saves_skipped_ = 0;
  int64_t interval_ = 1;
  int listed_ = 0;  // steps each folder reports when agreeing on a restore: all it can hold
  std::shared_ptr<ProtectedSteps> protected_;  // kept beyond max_to_keep: the two below
  checkpoint::PreservationPolicyPtr retention_;  // the newest max_to_keep and protected_: own folder and replicas
  int64_t replicated_ = -1;    // the newest step every rank's peers confirmed holding
  int64_t last_offered_ = -1;  // the step being (or last) replicated
  bool failing_ = false;  // a save failed: warn once per failure streak
  std::atomic<bool> async_failing_{false};  // the same, for failures the replica sender saw
  std::shared_ptr<distributed::ProcessGroup> pg_;
  std::unique_ptr<checkpoint::CheckpointManager> manager_;
  std::unique_ptr<PeerReplicas> replicas_;
  int n_replicas_ = 0;  // replicas per step, the same on every rank
};

}  // namespace nnx::checkpoint::emergency
