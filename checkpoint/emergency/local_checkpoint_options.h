// The local tier's options: a fast tier of frequent saves in each host's memory.
#pragma once

#include <cstdint>
#include <string>

namespace nnx::checkpoint::emergency {

/// The local tier of a multi-tier CheckpointManager (Orbax's LocalCheckpointOptions), and
/// nnx-train's `checkpoint.local` section.
struct LocalCheckpointOptions {
  int64_t save_interval_steps = 0;  ///< 0 = no local tier
  int max_to_keep = 2;              ///< steps kept per rank (the tier's memory bound)
  /// The tier's folder; each rank uses <directory>/rank-<r>-of-<n>. "" = default_local_directory()
  /// of the run (nnx-train) or of the persistent directory (the multi-tier CheckpointManager).
  std::string directory;
  bool async = true;  ///< write in the background (busy saves skipped); false: inside the step
  /// Copies of every local step kept on the next ranks ((rank + k) mod world_size, k = 1..replicas;
  /// at most world_size - 1 are made); 0 = none.
  int replicas = 1;
};

}  // namespace nnx::checkpoint::emergency
