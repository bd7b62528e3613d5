#include "nnx/trainer/checkpoint_options.h"

#include <set>
#include <string>
#include <vector>

#include "nnx/framework/error.h"
#include "nnx/trainer/policy_kinds.h"

namespace nnx::trainer {

namespace ck = nnx::checkpoint;

namespace {
// The one (kind, value) pair of a normalized policy entry.
std::pair<std::string, nlohmann::json> kind_of(const nlohmann::json& entry) {
  NNX_CHECK(entry.is_object() && entry.size() == 1, "a checkpoint policy must be {kind: value}, got ", entry.dump());
  return {entry.begin().key(), entry.begin().value()};
}
}  // namespace

namespace {
// The kind named by `kind` in `names`; nnx::Error naming `what` when it is unknown (load_config()
// produces none).
template <class E, size_t N>
E kind_named(const std::string& kind, const EnumName<E> (&names)[N], const char* what) {
  for (const auto& n : names)
    if (kind == n.name) return n.value;
  NNX_CHECK(false, "unknown ", what, " '", kind, "'");
  return names[0].value;
}

ck::SaveDecisionPolicyPtr build(SavePolicyKind kind, const nlohmann::json& v) {
  switch (kind) {
    case SavePolicyKind::kFixedInterval: return std::make_shared<ck::FixedIntervalPolicy>(v.get<int64_t>());
    case SavePolicyKind::kSpecificSteps: return std::make_shared<ck::SpecificStepsPolicy>(v.get<std::set<int64_t>>());
    case SavePolicyKind::kPreemption: return std::make_shared<ck::PreemptionCheckpointingPolicy>();
    case SavePolicyKind::kContinuous:
      return std::make_shared<ck::ContinuousCheckpointingPolicy>(v.at("minimum_interval_steps").get<int64_t>(),
                                                                 v.at("minimum_interval_seconds").get<double>());
    case SavePolicyKind::kInitialSave: return std::make_shared<ck::InitialSavePolicy>();
  }
  return nullptr;
}

ck::PreservationPolicyPtr build(KeepPolicyKind kind, const nlohmann::json& v) {
  switch (kind) {
    case KeepPolicyKind::kLatestN: return std::make_shared<ck::LatestN>(v.get<int>());
    case KeepPolicyKind::kBestN:
      return std::make_shared<ck::BestN>(ck::metric_key(v.at("metric").get<std::string>()), v.at("mode").get<std::string>(),
                                         v.at("n").get<int>(), v.at("keep_checkpoints_without_metrics").get<bool>());
    case KeepPolicyKind::kEveryNSteps: return std::make_shared<ck::EveryNSteps>(v.get<int64_t>());
    case KeepPolicyKind::kEveryNSeconds: return std::make_shared<ck::EveryNSeconds>(v.get<double>());
    case KeepPolicyKind::kCustomSteps: return std::make_shared<ck::CustomSteps>(v.get<std::set<int64_t>>());
    case KeepPolicyKind::kLatestDurationSeconds: return std::make_shared<ck::LatestDuration>(v.get<double>());
  }
  return nullptr;
}
}  // namespace

ck::SaveDecisionPolicyPtr save_decision_policy(const nlohmann::json& save) {
  std::vector<ck::SaveDecisionPolicyPtr> all;
  for (const auto& entry : save) {
    const auto [kind, value] = kind_of(entry);
    all.push_back(build(kind_named(kind, kSavePolicyKinds, "save decision policy"), value));
  }
  all.push_back(std::make_shared<ck::PreemptionCheckpointingPolicy>());
  return std::make_shared<ck::AnySavePolicy>(std::move(all));
}

ck::PreservationPolicyPtr preservation_policy(const nlohmann::json& keep) {
  std::vector<ck::PreservationPolicyPtr> all;
  for (const auto& entry : keep) {
    const auto [kind, value] = kind_of(entry);
    all.push_back(build(kind_named(kind, kKeepPolicyKinds, "preservation policy"), value));
  }
  return std::make_shared<ck::AnyPreservationPolicy>(std::move(all));
}

ck::CheckpointManagerOptions manager_options(const CheckpointConfig& c) {
  ck::CheckpointManagerOptions mo;
  if (c.keep.is_null()) {
    mo.max_to_keep = c.max_to_keep;
    if (c.keep_period > 0) mo.keep_period = c.keep_period;
  } else {
    mo.preservation_policy = preservation_policy(c.keep);
  }
  mo.save_interval_steps = c.save_interval_steps;
  if (!c.save.is_null()) mo.save_decision_policy = save_decision_policy(c.save);
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
