// CheckpointManager: steps, retention, best-by-metric, async saves, preemption (ocp.CheckpointManager).
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "nnx/checkpoint/args.h"
#include "nnx/checkpoint/checkpoint_info.h"
#include "nnx/checkpoint/manager_options.h"
#include "nnx/checkpoint/preemption.h"
#include "nnx/checkpoint/async_checkpointer.h"
#include "nnx/checkpoint/preservation_policy.h"
#include "nnx/checkpoint/save_decision_policy.h"

namespace nnx::checkpoint {

namespace io {
class DirectoryLock;
}

/// Manages the checkpoints of one run under `directory` (layout: docs/checkpoint-format.md).
/// One writer per directory: a second writing manager gets an error naming the holder's pid.
/// Step information (steps, times, metrics) is read from the directory once, at construction,
/// kept in memory, updated by this manager's own saves and deletes, and reread by reload().
/// Its methods may be called from several threads (save() from one at a time).
class CheckpointManager {
 public:
  /// Opens `directory`; throws nnx::Error when it is missing (and create is false), locked by
  /// another writer, or options are invalid. With a process group of world_size > 1 it is
  /// collective (it creates a group of its own for save decisions).
  CheckpointManager(std::filesystem::path directory, CheckpointManagerOptions options = {});
  /// Waits for the save in flight and closes (errors are reported on stderr, not thrown).
  ~CheckpointManager();

  /// Saves `args` as `step` when should_save(step) or `force`; returns whether it saved (an
  /// async save is also skipped, unforced, under BusyPolicy::kSkip while the previous one is
  /// still being written).
  /// `metrics` (a JSON object) is stored in the step's metadata. Throws nnx::Error when the step
  /// is already committed, and rethrows a failed previous async save. An async save is listed
  /// by all_steps() and latest_step() as soon as save() returns; restore() of it waits for it.
  /// A read-only manager returns false with a warning.
  bool save(int64_t step, const Composite& args, const nlohmann::json& metrics = nlohmann::json(),
            bool force = false);
  /// Saves one State as the item "default": Orbax's save(step, args=StandardSave(state)).
  bool save(int64_t step, const StandardSave& args, const nlohmann::json& metrics = nlohmann::json(),
            bool force = false);
  /// Restores `args` from `step` (default: the latest), waiting first when that step's save is
  /// in flight. Throws nnx::Error naming the directory when there is no such step, or when its
  /// save failed.
  Restored restore(std::optional<int64_t> step, const Composite& args) const;
  /// restore(latest_step(), args).
  Restored restore(const Composite& args) const { return restore(std::nullopt, args); }
  /// The State of the item "default" (saved by save(step, StandardSave)): Orbax's
  /// restore(step, args=StandardRestore(abstract_state)); the latest step when `step` is unset.
  State restore(std::optional<int64_t> step, const StandardRestore& args) const;
  /// restore(latest_step(), args) for the item "default".
  State restore(const StandardRestore& args) const { return restore(std::nullopt, args); }
  /// What restore_newest_valid() restored, and why newer steps were skipped.
  struct FallbackResult {
    int64_t step = -1;
    Restored restored;
    std::vector<std::string> skipped;  ///< "step N: <error>" for each newer step that failed
    std::vector<int64_t> skipped_steps;  ///< those steps, newest first
  };
  /// Restores the newest committed step that restores cleanly (sizes, format, checksums of
  /// every item read), trying older steps when a newer one is corrupt. Throws nnx::Error listing
  /// every failure when no step restores.
  FallbackResult restore_newest_valid(const Composite& args) const;
  /// Steps, ascending: the committed ones and the save in flight.
  std::vector<int64_t> all_steps() const;
  std::optional<int64_t> latest_step() const;
  /// The best committed step by best_fn (finite metrics only); nullopt without best_fn/metrics.
  std::optional<int64_t> best_step() const;
  /// Whether save(step) would save: step is newer than the latest step and the save decision
  /// policy says so. Reads no file. With a process group of world_size > 1 it is collective
  /// (one small all-reduce; every rank calls it at the same steps) and every rank gets the same
  /// answer: a preemption seen by any rank counts, and the other decisions must hold on every
  /// rank (so no rank waits for a save in flight). False on a read-only manager.
  bool should_save(int64_t step) const;
  /// Deletes a committed step (renamed away atomically first, then removed); a read-only
  /// manager skips it with a warning. Throws nnx::Error when there is no such step or its save
  /// is in flight.
  void delete_step(int64_t step);
  /// Moves committed step `step` out of this manager's steps, to "<dir>/<step>.unrestorable-<unix
  /// seconds>", kept for inspection: neither listed, nor restored, nor removed by retention. For
  /// a step that does not restore (restore_newest_valid skipped it): a run that resumed from an
  /// older step then saves that step anew instead of keeping a corrupt one as latest or best.
  /// Collective with a process group (rank 0 renames). Returns the new path (empty on other
  /// ranks, and on a read-only manager, which skips it with a warning). Throws nnx::Error when
  /// there is no such step or its save is in flight, nnx::IOError when it cannot be renamed.
  std::filesystem::path set_aside(int64_t step);
  /// True once SIGTERM or SIGINT was received (the run should save and stop): the process-wide
  /// flag that the handlers of a manager made with options.handle_preemption_signals set (without
  /// one, nothing catches the signals and this stays false). With a process group, after
  /// should_save(step) at this step: whether any rank had received one.
  bool reached_preemption(int64_t step) const;
  /// Blocks until the async save in flight has committed; rethrows its failure. Several threads
  /// may wait at once; each of them sees the failure, and none clears it but the thread that
  /// saved: its next wait_until_finished() or save() raises it too, then it is cleared (Orbax's
  /// rule; a monitoring thread never swallows the training loop's error).
  void wait_until_finished();
  /// Whether an async save has not committed yet.
  bool is_saving_in_progress() const;
  /// Rereads the directory's steps (for a directory another process changed); the save in
  /// flight stays listed. Metadata of steps already known is not parsed again.
  void reload();
  /// The cached information (step, save time, metrics) of every committed step, ascending; the
  /// save in flight is not among them. Reads no file (a read-only manager rereads the directory).
  std::vector<CheckpointInfo> checkpoints() const;
  /// The metrics saved with `step` (null when none).
  nlohmann::json metrics(int64_t step) const;
  /// The directory of `step`.
  std::filesystem::path step_path(int64_t step) const;
  /// Waits for saves, releases the lock and the signal handlers.
  void close();
  const std::filesystem::path& directory() const { return directory_; }
  const CheckpointManagerOptions& options() const { return options_; }
  /// Deletes the committed steps its preservation policy does not keep (save() does it after
  /// each commit; after reload() found steps another writer committed, this applies it to them).
  void apply_retention();

 private:
  std::optional<int64_t> parse_step(const std::string& name) const;
  void refresh_locked() const;
  std::vector<int64_t> steps_locked() const;
  void add_committed_locked(const CheckpointInfo& info);
  std::vector<std::filesystem::path> retention_locked();
  CheckpointInfo committed_info(const CheckpointInfo& mine, const std::filesystem::path& path) const;
  bool previous_save_busy() const;
  void remove_renamed(const std::vector<std::filesystem::path>& gone) const;
  std::filesystem::path rename_away_locked(int64_t step);
  bool agree(int64_t step, bool local_save, bool local_save_if_preempted, bool preempted) const;
  void wait_for_pending(int64_t step) const;
  Restored restore_existing(int64_t step, const Composite& args) const;
  void cleanup_leftovers();
  bool leader() const;

  std::filesystem::path directory_;
  CheckpointManagerOptions options_;
  SaveDecisionPolicyPtr save_policy_;
  PreservationPolicyPtr keep_policy_;
  std::unique_ptr<io::DirectoryLock> lock_;
  std::unique_ptr<AsyncCheckpointer> async_;
  Checkpointer sync_;
  std::shared_ptr<distributed::ProcessGroup> decision_group_;  // should_save's all-reduce
  mutable std::mutex mu_;                                      // guards the step information
  mutable std::vector<CheckpointInfo> committed_;              // ascending steps
  std::vector<CheckpointInfo> pending_;  // the async saves in flight (at most 2), by step
  bool pending_locked(int64_t step) const;
  void erase_pending_locked(int64_t step);
  void record_committed(const CheckpointInfo& info, const std::filesystem::path& path);
  mutable std::optional<std::pair<int64_t, bool>> agreed_preemption_;  // (step, any rank saw one)
  bool closed_ = false;
  bool signals_installed_ = false;
};


}  // namespace nnx::checkpoint
