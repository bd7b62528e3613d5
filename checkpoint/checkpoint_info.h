// What a CheckpointManager knows about one step without reading it (Orbax's CheckpointInfo).
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>

namespace nnx::checkpoint {

/// One step of a manager's directory, as cached in memory: the step number, when its save
/// started (seconds since the Unix epoch, system clock; from _CHECKPOINT_METADATA's "time" for
/// steps committed by an earlier process) and the metrics saved with it (null when none).
struct CheckpointInfo {
  int64_t step = 0;
  double time = 0;
  nlohmann::json metrics;
};

/// Seconds since the Unix epoch (system clock): the time base of CheckpointInfo::time.
inline double unix_seconds_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace nnx::checkpoint
