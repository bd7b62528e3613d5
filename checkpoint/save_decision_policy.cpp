#include "nnx/checkpoint/save_decision_policy.h"

#include "nnx/framework/error.h"

namespace nnx::checkpoint {

using Infos = std::vector<CheckpointInfo>;

FixedIntervalPolicy::FixedIntervalPolicy(int64_t interval) : interval_(interval) {
  NNX_CHECK(interval >= 1, "FixedIntervalPolicy: interval must be >= 1, got ", interval);
}

bool FixedIntervalPolicy::should_save(const CheckpointInfo& s, const Infos&, const DecisionContext&) const {
  return s.step % interval_ == 0;
}

bool SpecificStepsPolicy::should_save(const CheckpointInfo& s, const Infos&, const DecisionContext&) const {
  return steps_.count(s.step) > 0;
}

bool PreemptionCheckpointingPolicy::should_save(const CheckpointInfo&, const Infos&, const DecisionContext& c) const {
  return c.reached_preemption;
}

bool InitialSavePolicy::should_save(const CheckpointInfo&, const Infos& previous, const DecisionContext&) const {
  return previous.empty();
}

ContinuousCheckpointingPolicy::ContinuousCheckpointingPolicy(int64_t minimum_interval_steps,
                                                             double minimum_interval_seconds)
    : min_steps_(minimum_interval_steps), min_seconds_(minimum_interval_seconds) {
  NNX_CHECK(min_steps_ >= 0 && min_seconds_ >= 0, "ContinuousCheckpointingPolicy: intervals must be >= 0, got ",
            min_steps_, " steps and ", min_seconds_, " s");
}

bool ContinuousCheckpointingPolicy::should_save(const CheckpointInfo& s, const Infos& previous,
                                                const DecisionContext& c) const {
  if (c.is_saving_in_progress) return false;
  if (previous.empty()) return true;
  const CheckpointInfo& last = previous.back();
  return s.step - last.step >= min_steps_ && c.now - last.time >= min_seconds_;
}

AnySavePolicy::AnySavePolicy(std::vector<SaveDecisionPolicyPtr> policies) : policies_(std::move(policies)) {
  NNX_CHECK(!policies_.empty(), "AnySavePolicy needs at least one policy");
  for (const auto& p : policies_) NNX_CHECK(p != nullptr, "AnySavePolicy: a policy is null");
}

bool AnySavePolicy::should_save(const CheckpointInfo& s, const Infos& previous, const DecisionContext& c) const {
  for (const auto& p : policies_)
    if (p->should_save(s, previous, c)) return true;
  return false;
}

}  // namespace nnx::checkpoint
