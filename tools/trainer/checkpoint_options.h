// The CheckpointManager options a run's `checkpoint:` section describes.
#pragma once

#include <nlohmann/json.hpp>

#include "nnx/checkpoint/manager.h"
#include "nnx/trainer/config.h"

namespace nnx::trainer {

/// A union of the save decision policies of a checkpoint.save list (CheckpointConfig::save),
/// plus PreemptionCheckpointingPolicy: nnx-train always saves on SIGTERM/SIGINT.
checkpoint::SaveDecisionPolicyPtr save_decision_policy(const std::vector<SavePolicyConfig>& save);

/// A union of the preservation policies of a checkpoint.keep list (CheckpointConfig::keep).
checkpoint::PreservationPolicyPtr preservation_policy(const std::vector<KeepPolicyConfig>& keep);

/// Options for the run's manager: policies from checkpoint.save / checkpoint.keep when set, else
/// from save_interval_steps, max_to_keep, keep_period and best_metric (which also ranks
/// best_step()). The process group is left to the caller.
checkpoint::CheckpointManagerOptions manager_options(const CheckpointConfig& c);

}  // namespace nnx::trainer
