// The CheckpointManager options a run's `checkpoint:` section describes.
#pragma once

#include <nlohmann/json.hpp>

#include "nnx/checkpoint/manager.h"
#include "nnx/trainer/config.h"

namespace nnx::trainer {

/// A union of the save decision policies of a normalized checkpoint.save list (see
/// CheckpointConfig::save), plus PreemptionCheckpointingPolicy: nnx-train always saves on
/// SIGTERM/SIGINT. Throws nnx::Error for an entry load_config() would not produce.
checkpoint::SaveDecisionPolicyPtr save_decision_policy(const nlohmann::json& save);

/// A union of the preservation policies of a normalized checkpoint.keep list (see
/// CheckpointConfig::keep). Throws nnx::Error for an entry load_config() would not produce.
checkpoint::PreservationPolicyPtr preservation_policy(const nlohmann::json& keep);

/// Options for the run's manager: policies from checkpoint.save / checkpoint.keep when set, else
/// from save_interval_steps, max_to_keep, keep_period and best_metric (which also ranks
/// best_step()). The process group is left to the caller.
checkpoint::CheckpointManagerOptions manager_options(const CheckpointConfig& c);

}  // namespace nnx::trainer
