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

#include "checkpoint/args.h"
#include "checkpoint/checkpointer.h"

namespace nnx::checkpoint {

namespace fs {
class DirectoryLock;
}

/// Options of a CheckpointManager (ocp.CheckpointManagerOptions).
struct CheckpointManagerOptions {
  /// Keep at most this many steps (the latest always, the best by metric alongside); unset = all.
  std::optional<int> max_to_keep;
  /// Steps divisible by keep_period are never deleted by retention; unset = none.
  std::optional<int64_t> keep_period;
  /// should_save(step) is true when step % save_interval_steps == 0.
  int64_t save_interval_steps = 1;
  /// Metric to rank steps by (from the metrics passed to save); with it, retention keeps the
  /// best max_to_keep steps plus the latest. A NaN or infinite value never counts as best.
  std::function<double(const nlohmann::json& metrics)> best_fn;
  /// "min" or "max".
  std::string best_mode = "min";
  /// With best_fn: keep steps saved without metrics (else they may be deleted).
  bool keep_checkpoints_without_metrics = true;
  /// Step directories are named "<step_prefix>_<step>" when set, else "<step>".
  std::string step_prefix;
  /// Zero-pad step numbers to this width (0 = no padding).
  int step_format_fixed_length = 0;
  /// Create the directory when missing (else a missing directory is an error).
  bool create = true;
  /// Never write or delete (no lock is taken); save() and delete_step() throw.
  bool read_only = false;
  /// Saves return after snapshotting to host memory; writing and committing go on in the
  /// background.
  bool enable_async_checkpointing = true;
  /// Write datasets of 1 MiB or more with O_DIRECT (WriteOptions::direct_io); off: through
  /// the page cache.
  bool direct_io = true;
  /// Remove <step>.tmp-* leftovers of interrupted saves at start-up.
  bool cleanup_tmp_directories = true;
  /// Catch SIGTERM/SIGINT so reached_preemption() can report them (restored by close()).
  bool handle_preemption_signals = true;
  /// Data parallel: every rank creates a manager on the same directory with the same options
  /// and calls save() with the same replicated items. Saves become collective (see
  /// Checkpointer::process_group); only rank 0 takes the lock, cleans up, and applies
  /// retention. Use a group of its own (ProcessGroup::new_group): async saves run collectives
  /// on a background thread.
  std::shared_ptr<distributed::ProcessGroup> process_group;

  /// Throws nnx::Error naming the bad value.
  void validate() const;
};

/// Manages the checkpoints of one run under `directory` (layout: docs/checkpoint-format.md).
/// One writer per directory: a second writing manager gets an error naming the holder's pid.
/// Bookkeeping (steps, metrics) is read from the committed steps, so it survives restarts.
class CheckpointManager {
 public:
  /// Opens `directory`; throws nnx::Error when it is missing (and create is false), locked by
  /// another writer, or options are invalid.
  CheckpointManager(std::filesystem::path directory, CheckpointManagerOptions options = {});
  /// Waits for the save in flight and closes (errors are reported on stderr, not thrown).
  ~CheckpointManager();

  /// Saves `args` as `step` when should_save(step) or `force`; returns whether it saved.
  /// `metrics` (a JSON object) is stored in the step's metadata. Throws nnx::Error when the step
  /// is already committed, and rethrows a failed previous async save.
  bool save(int64_t step, const Composite& args, const nlohmann::json& metrics = nlohmann::json(),
            bool force = false);
  /// Restores `args` from `step` (default: the latest). Throws nnx::Error naming the directory
  /// when there is no such step.
  Restored restore(std::optional<int64_t> step, const Composite& args) const;
  /// What restore_newest_valid() restored, and why newer steps were skipped.
  struct FallbackResult {
    int64_t step = -1;
    Restored restored;
    std::vector<std::string> skipped;  ///< "step N: <error>" for each newer step that failed
  };
  /// Restores the newest committed step that restores cleanly (sizes, format, checksums of
  /// every item read), trying older steps when a newer one is corrupt. Throws nnx::Error listing
  /// every failure when no step restores.
  FallbackResult restore_newest_valid(const Composite& args) const;
  /// Committed steps, ascending.
  std::vector<int64_t> all_steps() const;
  std::optional<int64_t> latest_step() const;
  /// The best committed step by best_fn (finite metrics only); nullopt without best_fn/metrics.
  std::optional<int64_t> best_step() const;
  /// Whether save(step) would save: step % save_interval_steps == 0 or a preemption was seen,
  /// and step is newer than the latest committed one. With a process group a preemption seen by
  /// this rank does not count (ranks see signals at different steps and must save together):
  /// all-reduce reached_preemption() over the ranks and pass force to save().
  bool should_save(int64_t step) const;
  /// Deletes a committed step (renamed away atomically first, then removed).
  void delete_step(int64_t step);
  /// True once SIGTERM or SIGINT was received (the run should save and stop).
  bool reached_preemption(int64_t step) const;
  /// Blocks until the async save in flight has committed; rethrows its failure.
  void wait_until_finished();
  /// The metrics saved with `step` (null when none).
  nlohmann::json metrics(int64_t step) const;
  /// The directory of `step`.
  std::filesystem::path step_path(int64_t step) const;
  /// Waits for saves, releases the lock and the signal handlers.
  void close();
  const std::filesystem::path& directory() const { return directory_; }
  const CheckpointManagerOptions& options() const { return options_; }

 private:
  std::optional<int64_t> parse_step(const std::string& name) const;
  void apply_retention();
  void cleanup_leftovers();

  std::filesystem::path directory_;
  CheckpointManagerOptions options_;
  std::unique_ptr<fs::DirectoryLock> lock_;
  std::unique_ptr<AsyncCheckpointer> async_;
  Checkpointer sync_;
  mutable std::mutex mu_;
  bool closed_ = false;
  bool signals_installed_ = false;
};

/// The signal (SIGTERM/SIGINT) seen by managers' handlers, or 0.
int preemption_signal();
/// Forgets a seen preemption signal (tests).
void reset_preemption();

}  // namespace nnx::checkpoint
