// When a CheckpointManager saves (Orbax 0.12's save_decision_policy module).
#pragma once

#include <memory>
#include <set>
#include <vector>

#include "nnx/checkpoint/checkpoint_info.h"

namespace nnx::checkpoint {

/// What a save decision may look at besides the steps. With a process group the manager fills
/// reached_preemption with the ranks' agreement (true when any rank saw a signal).
struct DecisionContext {
  bool is_saving_in_progress = false;  ///< an async save has not committed yet
  bool reached_preemption = false;     ///< SIGTERM/SIGINT was seen
  double now = 0;                      ///< seconds since the Unix epoch (unix_seconds_now())
};

/// Decides whether `step` is saved. `previous` holds the manager's steps (ascending; committed
/// ones and the save in flight, if any). The manager itself never saves a step that is not
/// newer than the latest one, whatever the policy says.
class SaveDecisionPolicy {
 public:
  virtual ~SaveDecisionPolicy() = default;
  virtual bool should_save(const CheckpointInfo& step, const std::vector<CheckpointInfo>& previous,
                           const DecisionContext& context) const = 0;
};
using SaveDecisionPolicyPtr = std::shared_ptr<const SaveDecisionPolicy>;

/// Saves steps divisible by `interval` (today's save_interval_steps). Throws nnx::Error for < 1.
class FixedIntervalPolicy : public SaveDecisionPolicy {
 public:
  explicit FixedIntervalPolicy(int64_t interval);
  bool should_save(const CheckpointInfo& s, const std::vector<CheckpointInfo>&, const DecisionContext&) const override;

 private:
  int64_t interval_;
};

/// Saves the listed steps.
class SpecificStepsPolicy : public SaveDecisionPolicy {
 public:
  explicit SpecificStepsPolicy(std::set<int64_t> steps) : steps_(std::move(steps)) {}
  bool should_save(const CheckpointInfo& s, const std::vector<CheckpointInfo>&, const DecisionContext&) const override;

 private:
  std::set<int64_t> steps_;
};

/// Saves once a preemption signal was seen (context.reached_preemption).
class PreemptionCheckpointingPolicy : public SaveDecisionPolicy {
 public:
  bool should_save(const CheckpointInfo&, const std::vector<CheckpointInfo>&, const DecisionContext& c) const override;
};

/// Saves when the directory has no step yet (the run's first save).
class InitialSavePolicy : public SaveDecisionPolicy {
 public:
  bool should_save(const CheckpointInfo&, const std::vector<CheckpointInfo>& previous, const DecisionContext&) const override;
};

/// Saves as soon as the previous save has committed (never two in flight), once at least
/// `minimum_interval_steps` steps and `minimum_interval_seconds` seconds passed since the
/// newest step. Throws nnx::Error for negative intervals.
class ContinuousCheckpointingPolicy : public SaveDecisionPolicy {
 public:
  explicit ContinuousCheckpointingPolicy(int64_t minimum_interval_steps = 1, double minimum_interval_seconds = 0);
  bool should_save(const CheckpointInfo& s, const std::vector<CheckpointInfo>& previous,
                   const DecisionContext& c) const override;

 private:
  int64_t min_steps_;
  double min_seconds_;
};

/// Saves when any of `policies` says so (a union). Throws nnx::Error when empty or one is null.
class AnySavePolicy : public SaveDecisionPolicy {
 public:
  explicit AnySavePolicy(std::vector<SaveDecisionPolicyPtr> policies);
  bool should_save(const CheckpointInfo& s, const std::vector<CheckpointInfo>& previous,
                   const DecisionContext& c) const override;

 private:
  std::vector<SaveDecisionPolicyPtr> policies_;
};

}  // namespace nnx::checkpoint
