#include "nnx/checkpoint/manager_options.h"

#include "nnx/framework/error.h"

namespace nnx::checkpoint {

void CheckpointManagerOptions::validate() const {
  NNX_CHECK(!max_to_keep || *max_to_keep >= 1, "max_to_keep must be >= 1, got ", *max_to_keep);
  NNX_CHECK(!keep_period || *keep_period >= 1, "keep_period must be >= 1, got ", *keep_period);
  NNX_CHECK(save_interval_steps >= 1, "save_interval_steps must be >= 1, got ", save_interval_steps);
  NNX_CHECK(best_mode == "min" || best_mode == "max", "best_mode must be 'min' or 'max', got '", best_mode, "'");
  NNX_CHECK(step_format_fixed_length >= 0 && step_format_fixed_length <= 20,
            "step_format_fixed_length must be in [0, 20], got ", step_format_fixed_length);
  NNX_CHECK(step_prefix.find('/') == std::string::npos && step_prefix.find(".tmp-") == std::string::npos,
            "invalid step_prefix '", step_prefix, "'");
  NNX_CHECK(!preservation_policy || (!max_to_keep && !keep_period),
            "set either preservation_policy or max_to_keep/keep_period, not both");
}

SaveDecisionPolicyPtr CheckpointManagerOptions::resolved_save_decision_policy() const {
  if (save_decision_policy) return save_decision_policy;
  return std::make_shared<AnySavePolicy>(std::vector<SaveDecisionPolicyPtr>{
      std::make_shared<FixedIntervalPolicy>(save_interval_steps), std::make_shared<PreemptionCheckpointingPolicy>()});
}

PreservationPolicyPtr CheckpointManagerOptions::resolved_preservation_policy() const {
  if (preservation_policy) return preservation_policy;
  if (!max_to_keep) return std::make_shared<PreserveAll>();
  PreservationPolicyPtr n = std::make_shared<MaxToKeep>(*max_to_keep, best_fn, best_mode, keep_checkpoints_without_metrics);
  if (!keep_period) return n;
  return std::make_shared<AnyPreservationPolicy>(
      std::vector<PreservationPolicyPtr>{n, std::make_shared<EveryNSteps>(*keep_period)});
}

}  // namespace nnx::checkpoint
