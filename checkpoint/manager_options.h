// Options of a CheckpointManager and the policies they resolve to.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "nnx/checkpoint/busy_policy.h"
#include "nnx/checkpoint/io/host_snapshot.h"
#include "nnx/checkpoint/preservation_policy.h"
#include "nnx/checkpoint/save_decision_policy.h"

namespace nnx::distributed {
class ProcessGroup;
}

namespace nnx::checkpoint {

/// Options of a CheckpointManager (ocp.CheckpointManagerOptions).
struct CheckpointManagerOptions {
  /// Keep exactly this many steps once that many exist (MaxToKeep): the latest, then the best
  /// by best_fn among the steps that have a finite metric, then the newest steps without one.
  /// Unset = all (unless preservation_policy).
  std::optional<int> max_to_keep;
  /// With max_to_keep: steps divisible by keep_period are kept too (EveryNSteps); unset = none.
  std::optional<int64_t> keep_period;
  /// Without save_decision_policy: save steps divisible by this (FixedIntervalPolicy), and
  /// after a preemption signal (PreemptionCheckpointingPolicy).
  int64_t save_interval_steps = 1;
  /// Metric to rank steps by (from the metrics passed to save), for max_to_keep and best_step().
  /// A NaN or infinite value, or a throw, never counts as best.
  MetricFn best_fn;
  /// "min" or "max".
  std::string best_mode = "min";
  /// With best_fn and max_to_keep: steps without a finite metric fill the places the best
  /// leave (newest first); false: only the latest and the best are kept.
  bool keep_checkpoints_without_metrics = true;
  /// When to save (Orbax's save_decision_policy). Unset: FixedIntervalPolicy(save_interval_steps)
  /// or PreemptionCheckpointingPolicy.
  SaveDecisionPolicyPtr save_decision_policy;
  /// Which committed steps retention keeps (Orbax's preservation_policy); the latest is always
  /// kept as well. Unset: from max_to_keep, keep_period and best_fn (see above); setting both
  /// this and max_to_keep or keep_period is an error.
  PreservationPolicyPtr preservation_policy;
  /// Step directories are named "<step_prefix>_<step>" when set, else "<step>".
  std::string step_prefix;
  /// Zero-pad step numbers to this width (0 = no padding).
  int step_format_fixed_length = 0;
  /// Create the directory when missing (else a missing directory is an error).
  bool create = true;
  /// Never write or delete (no lock is taken): should_save() is false, save() returns false and
  /// delete_step() does nothing (each with a warning). Such a manager rereads the directory on
  /// every listing, since someone else writes it.
  bool read_only = false;
  /// Saves return after snapshotting to host memory; writing and committing go on in the
  /// background.
  bool enable_async_checkpointing = true;
  /// Async saves: when the host snapshot copies (io::SnapshotTiming). kInSave: inside save(),
  /// after which the caller may change its tensors any way it likes. kDeferred: save() returns
  /// once it recorded what to copy and the copy runs beside the next training step; in-place
  /// writers of saved tensors must pass the write fence (nnx::prepare_write; the framework's
  /// own writers do), and a write that skipped it fails the save instead of committing torn
  /// state. Either way one snapshot's host buffers are kept and reused.
  io::SnapshotTiming snapshot_timing = io::SnapshotTiming::kInSave;
  /// Async saves: what save() does while the previous save is still being written.
  BusyPolicy busy_policy = BusyPolicy::kWait;
  /// Write datasets of 1 MiB or more with O_DIRECT (WriteOptions::direct_io); off: through
  /// the page cache.
  bool direct_io = true;
  /// Remove <step>.tmp-* leftovers of interrupted saves at start-up.
  bool cleanup_tmp_directories = true;
  /// Off by default, as in Orbax: a library leaves the process's signals alone, and Ctrl-C stops
  /// a program as usual. true: the manager catches SIGTERM and SIGINT (its handlers only set a
  /// process-wide flag; the previous handlers come back at close()), so that
  /// reached_preemption(step) of every manager reports them and the loop can save and exit
  /// (README, "Preemption in your own loop"). nnx-train sets it on its persistent tier's manager.
  bool handle_preemption_signals = false;
  /// Data parallel: every rank creates a manager on the same directory with the same options
  /// and calls save() with the same replicated items. Saves become collective (see
  /// Checkpointer::process_group); only rank 0 takes the lock, cleans up, and applies
  /// retention. Use a group of its own (ProcessGroup::new_group): async saves run collectives
  /// on a background thread.
  std::shared_ptr<distributed::ProcessGroup> process_group;

  /// Throws nnx::Error naming the bad value.
  void validate() const;
  /// save_decision_policy, or the one the flags above describe.
  SaveDecisionPolicyPtr resolved_save_decision_policy() const;
  /// preservation_policy, or the one the flags above describe (PreserveAll without them).
  PreservationPolicyPtr resolved_preservation_policy() const;
};

}  // namespace nnx::checkpoint
