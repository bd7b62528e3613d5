#include "nnx/trainer/checkpoint_options.h"

#include <set>
#include <string>
#include <vector>

#include "nnx/framework/error.h"
#include "nnx/trainer/policy_kinds.h"

namespace nnx::trainer {

namespace ck = nnx::checkpoint;

namespace {
std::set<int64_t> step_set(const std::vector<int64_t>& steps) { return {steps.begin(), steps.end()}; }

ck::SaveDecisionPolicyPtr build(const SavePolicyConfig& p) {
  switch (p.kind) {
    case SavePolicyKind::kFixedInterval: return std::make_shared<ck::FixedIntervalPolicy>(p.interval_steps);
    case SavePolicyKind::kSpecificSteps: return std::make_shared<ck::SpecificStepsPolicy>(step_set(p.steps));
    case SavePolicyKind::kPreemption: return std::make_shared<ck::PreemptionCheckpointingPolicy>();
    case SavePolicyKind::kContinuous:
      return std::make_shared<ck::ContinuousCheckpointingPolicy>(p.minimum_interval_steps, p.minimum_interval_seconds);
    case SavePolicyKind::kInitialSave: return std::make_shared<ck::InitialSavePolicy>();
  }
  return nullptr;
}

ck::PreservationPolicyPtr build(const KeepPolicyConfig& p) {
  switch (p.kind) {
    case KeepPolicyKind::kLatestN: return std::make_shared<ck::LatestN>(static_cast<int>(p.n));
    case KeepPolicyKind::kBestN:
      return std::make_shared<ck::BestN>(ck::metric_key(p.metric), p.mode, static_cast<int>(p.n),
                                         p.keep_checkpoints_without_metrics);
    case KeepPolicyKind::kEveryNSteps: return std::make_shared<ck::EveryNSteps>(p.n);
    case KeepPolicyKind::kEveryNSeconds: return std::make_shared<ck::EveryNSeconds>(p.seconds);
    case KeepPolicyKind::kCustomSteps: return std::make_shared<ck::CustomSteps>(step_set(p.steps));
    case KeepPolicyKind::kLatestDurationSeconds: return std::make_shared<ck::LatestDuration>(p.seconds);
  }
  return nullptr;
}
}  // namespace

ck::SaveDecisionPolicyPtr save_decision_policy(const std::vector<SavePolicyConfig>& save) {
  std::vector<ck::SaveDecisionPolicyPtr> all;
  for (const auto& p : save) all.push_back(build(p));
  all.push_back(std::make_shared<ck::PreemptionCheckpointingPolicy>());
  return std::make_shared<ck::AnySavePolicy>(std::move(all));
}

ck::PreservationPolicyPtr preservation_policy(const std::vector<KeepPolicyConfig>& keep) {
  std::vector<ck::PreservationPolicyPtr> all;
  for (const auto& p : keep) all.push_back(build(p));
  return std::make_shared<ck::AnyPreservationPolicy>(std::move(all));
}

ck::CheckpointManagerOptions manager_options(const CheckpointConfig& c) {
  ck::CheckpointManagerOptions mo;
  if (!c.keep) {
    mo.max_to_keep = c.max_to_keep;
    if (c.keep_period > 0) mo.keep_period = c.keep_period;
  } else {
    mo.preservation_policy = preservation_policy(*c.keep);
  }
  mo.save_interval_steps = c.save_interval_steps;
  if (c.save) mo.save_decision_policy = save_decision_policy(*c.save);
  mo.enable_async_checkpointing = c.async;
  mo.handle_preemption_signals = true;  // SIGTERM/SIGINT: finish the step, save, exit 0
  mo.direct_io = c.direct_io;
  mo.snapshot_timing = c.snapshot;
  mo.busy_policy = c.busy_policy;
  if (!c.best_metric.empty()) {
    mo.best_fn = ck::metric_key(c.best_metric);
    mo.best_mode = c.best_mode;
  }
  return mo;
}

}  // namespace nnx::trainer
