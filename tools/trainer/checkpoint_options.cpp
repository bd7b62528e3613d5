#include "nnx/trainer/checkpoint_options.h"

#include <set>

#include "nnx/framework/error.h"

namespace nnx::trainer {

namespace ck = nnx::checkpoint;

namespace {
// The one (kind, value) pair of a normalized policy entry.
std::pair<std::string, nlohmann::json> kind_of(const nlohmann::json& entry) {
  NNX_CHECK(entry.is_object() && entry.size() == 1, "a checkpoint policy must be {kind: value}, got ", entry.dump());
  return {entry.begin().key(), entry.begin().value()};
}
}  // namespace

ck::SaveDecisionPolicyPtr save_decision_policy(const nlohmann::json& save) {
  std::vector<ck::SaveDecisionPolicyPtr> all;
  for (const auto& entry : save) {
    auto [kind, v] = kind_of(entry);
    if (kind == "fixed_interval") all.push_back(std::make_shared<ck::FixedIntervalPolicy>(v.get<int64_t>()));
    else if (kind == "specific_steps") all.push_back(std::make_shared<ck::SpecificStepsPolicy>(v.get<std::set<int64_t>>()));
    else if (kind == "preemption") all.push_back(std::make_shared<ck::PreemptionCheckpointingPolicy>());
    else if (kind == "initial_save") all.push_back(std::make_shared<ck::InitialSavePolicy>());
    else if (kind == "continuous")
      all.push_back(std::make_shared<ck::ContinuousCheckpointingPolicy>(v.at("minimum_interval_steps").get<int64_t>(),
                                                                        v.at("minimum_interval_seconds").get<double>()));
    else NNX_CHECK(false, "unknown save decision policy '", kind, "'");
  }
  all.push_back(std::make_shared<ck::PreemptionCheckpointingPolicy>());
  return std::make_shared<ck::AnySavePolicy>(std::move(all));
}

ck::PreservationPolicyPtr preservation_policy(const nlohmann::json& keep) {
  std::vector<ck::PreservationPolicyPtr> all;
  for (const auto& entry : keep) {
    auto [kind, v] = kind_of(entry);
    if (kind == "latest_n") all.push_back(std::make_shared<ck::LatestN>(v.get<int>()));
    else if (kind == "every_n_steps") all.push_back(std::make_shared<ck::EveryNSteps>(v.get<int64_t>()));
    else if (kind == "every_n_seconds") all.push_back(std::make_shared<ck::EveryNSeconds>(v.get<double>()));
    else if (kind == "latest_duration_seconds") all.push_back(std::make_shared<ck::LatestDuration>(v.get<double>()));
    else if (kind == "custom_steps") all.push_back(std::make_shared<ck::CustomSteps>(v.get<std::set<int64_t>>()));
    else if (kind == "best_n")
      all.push_back(std::make_shared<ck::BestN>(ck::metric_key(v.at("metric").get<std::string>()), v.at("mode").get<std::string>(),
                                                v.at("n").get<int>(), v.at("keep_checkpoints_without_metrics").get<bool>()));
    else NNX_CHECK(false, "unknown preservation policy '", kind, "'");
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
