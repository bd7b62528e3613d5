// checkpoint.local: a fast tier of frequent saves in this host's memory, above the persistent one.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nnx/checkpoint/args.h"
#include "nnx/checkpoint/manager.h"
#include "tools/trainer/config.h"
#include "tools/trainer/peer_replicas.h"

namespace nnx::distributed {
class ProcessGroup;
}

namespace nnx::trainer {

class ProtectedSteps;

/// Where a run's local tier lives by default: /dev/shm/nnx-local/<run dir's name>-<hash of its
/// absolute path> (the temp directory where there is no /dev/shm).
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
/// replicate, and each keeps the last two it offered beyond max_to_keep, so a step that every
/// rank can get (from its own folder or a peer's replica) survives steps shorter than a transfer.
class LocalTier {
 public:
  /// Off when cfg.save_interval_steps is 0, or (with a warning) when its folder cannot be made.
  /// `run_dir` names the default directory. With `pg` (world_size > 1) and cfg.replicas > 0 it
  /// is collective: it creates the replication's process group.
  LocalTier(const LocalTierConfig& cfg, const std::filesystem::path& run_dir, int rank, int world_size,
            std::shared_ptr<distributed::ProcessGroup> pg = nullptr);
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
  /// Saves `args` at `step` (a due one) unless this rank's tier is off or still writing the
  /// previous save (then this one is skipped); failures are warnings. With replicas it is a
  /// collective of every rank (one all-reduce of one number): the step goes to the peers only
  /// when every rank saved it and no rank's sender is busy, so all ranks replicate the same
  /// steps. The last two steps offered (the one in flight and the one before it, which every
  /// peer holds) are kept beyond max_to_keep: the tier holds at most max_to_keep + 2 steps.
  void maybe_save(int64_t step, const checkpoint::Composite& args);
  /// A collective of every rank where configured(). Agrees on the newest step that every rank
  /// can restore from the local tier, from its own copy or from a replica a peer holds, when
  /// there is one no older than `not_before`; a rank without its own copy then receives the
  /// replica into its folder. Returns nullopt when there is no such step. When it returns a
  /// step, `failure` is this rank's error in getting it ("" = none): the caller agrees on it.
  std::optional<int64_t> prepare_restore(std::optional<int64_t> not_before, std::string& failure);
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
  /// replicating, then removes this rank's folder (and the run's, once empty).
  void remove();

 private:
  std::vector<std::vector<std::vector<int64_t>>> gather_holdings() const;
  std::string fetch_from_peer(int64_t step, int rank, int holder, int slot);
  void start_replicas(const LocalTierConfig& cfg, int world_size);
  bool save_here(int64_t step, const checkpoint::Composite& args);
  bool all_ranks(bool mine) const;
  void replicate(int64_t step);

  std::filesystem::path dir_;
  bool configured_ = false;
  int64_t interval_ = 1;
  std::shared_ptr<ProtectedSteps> protected_;  // kept beyond max_to_keep: the last steps offered
  int64_t last_offered_ = -1;
  bool failing_ = false;  // a save failed: warn once per failure streak
  std::atomic<bool> async_failing_{false};  // the same, for failures the replica sender saw
  std::shared_ptr<distributed::ProcessGroup> pg_;
  std::unique_ptr<checkpoint::CheckpointManager> manager_;
  std::unique_ptr<PeerReplicas> replicas_;
  int n_replicas_ = 0;  // replicas per step, the same on every rank
};

}  // namespace nnx::trainer
