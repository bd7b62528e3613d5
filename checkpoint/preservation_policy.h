// Which committed steps retention keeps (Orbax 0.12's preservation_policy module).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "nnx/checkpoint/checkpoint_info.h"

namespace nnx::checkpoint {

/// What a preservation policy may look at besides the steps.
struct PreservationContext {
  double now = 0;  ///< seconds since the Unix epoch (unix_seconds_now())
};

/// Decides which committed steps to keep. A CheckpointManager deletes every committed step that
/// its policy does not preserve, except the latest, which it always keeps.
class PreservationPolicy {
 public:
  virtual ~PreservationPolicy() = default;
  /// One flag per entry of `checkpoints` (ascending steps, committed only): true = keep.
  virtual std::vector<bool> should_preserve(const std::vector<CheckpointInfo>& checkpoints,
                                            const PreservationContext& context) const = 0;
};
using PreservationPolicyPtr = std::shared_ptr<const PreservationPolicy>;

/// Keeps everything (the default without max_to_keep or keep_period).
class PreserveAll : public PreservationPolicy {
 public:
  std::vector<bool> should_preserve(const std::vector<CheckpointInfo>& c, const PreservationContext&) const override;
};

/// Keeps the `n` newest steps. Throws nnx::Error for n < 1.
class LatestN : public PreservationPolicy {
 public:
  explicit LatestN(int n);
  std::vector<bool> should_preserve(const std::vector<CheckpointInfo>& c, const PreservationContext&) const override;

 private:
  int n_;
};

/// Keeps steps divisible by `interval_steps` (today's keep_period). Throws nnx::Error for < 1.
class EveryNSteps : public PreservationPolicy {
 public:
  explicit EveryNSteps(int64_t interval_steps);
  std::vector<bool> should_preserve(const std::vector<CheckpointInfo>& c, const PreservationContext&) const override;

 private:
  int64_t interval_;
};

/// Keeps the oldest step, then each step saved at least `interval_seconds` after the last one
/// kept this way (one step per interval of wall time). Throws nnx::Error for interval <= 0.
class EveryNSeconds : public PreservationPolicy {
 public:
  explicit EveryNSeconds(double interval_seconds);
  std::vector<bool> should_preserve(const std::vector<CheckpointInfo>& c, const PreservationContext&) const override;

 private:
  double interval_;
};

/// Keeps the listed steps.
class CustomSteps : public PreservationPolicy {
 public:
  explicit CustomSteps(std::set<int64_t> steps) : steps_(std::move(steps)) {}
  std::vector<bool> should_preserve(const std::vector<CheckpointInfo>& c, const PreservationContext&) const override;

 private:
  std::set<int64_t> steps_;
};

/// Keeps steps saved less than `ttl_seconds` before context.now (a time to live). Throws
/// nnx::Error for ttl <= 0.
class LatestDuration : public PreservationPolicy {
 public:
  explicit LatestDuration(double ttl_seconds);
  std::vector<bool> should_preserve(const std::vector<CheckpointInfo>& c, const PreservationContext&) const override;

 private:
  double ttl_;
};

/// The metric a step is ranked by, from the metrics saved with it; NaN, Inf, a throw or null
/// metrics mean "no metric" (such a step never counts as best).
using MetricFn = std::function<double(const nlohmann::json& metrics)>;

/// A metric function reading the number `key` from a step's metrics (NaN when absent).
MetricFn metric_key(std::string key);

/// The finite metric of `info`, or nullopt (see MetricFn). Each checkpoint's value is computed
/// once and cached by (step, save time): a committed step's metrics never change.
class MetricCache {
 public:
  explicit MetricCache(MetricFn fn) : fn_(std::move(fn)) {}
  std::optional<double> get(const CheckpointInfo& info) const;
  /// get() of each entry of `infos`, under one lock (retention asks for every step at once).
  std::vector<std::optional<double>> values(const std::vector<CheckpointInfo>& infos) const;

 private:
  std::optional<double> get_locked(const CheckpointInfo& info) const;
  MetricFn fn_;
  mutable std::mutex mu_;  // a policy may be shared by managers on several threads
  // Keyed by step and save time: a policy shared by managers of several directories, or a step
  // deleted and saved again, never gets another checkpoint's value.
  mutable std::map<std::pair<int64_t, double>, std::optional<double>> values_;
};

/// Keeps the `n` best steps by `metric` ("min": lowest is best, "max": highest), NaN and Inf
/// never best; steps without a finite metric are kept when keep_checkpoints_without_metrics.
/// Throws nnx::Error for n < 1 or another mode.
class BestN : public PreservationPolicy {
 public:
  BestN(MetricFn metric, std::string mode, int n, bool keep_checkpoints_without_metrics = true);
  std::vector<bool> should_preserve(const std::vector<CheckpointInfo>& c, const PreservationContext&) const override;

 private:
  MetricCache metric_;
  bool max_;
  int n_;
  bool keep_without_;
};

/// CheckpointManagerOptions::max_to_keep = n: once n steps exist, keeps exactly n, in this
/// order: the latest; then the best by `metric` among the steps that have a finite one (when
/// `metric` is set); then the newest steps without one (when keep_checkpoints_without_metrics,
/// or without `metric`). Throws nnx::Error for n < 1 or another mode than "min"/"max".
class MaxToKeep : public PreservationPolicy {
 public:
  MaxToKeep(int n, MetricFn metric = nullptr, std::string mode = "min", bool keep_checkpoints_without_metrics = true);
  std::vector<bool> should_preserve(const std::vector<CheckpointInfo>& c, const PreservationContext&) const override;

 private:
  int n_;
  std::optional<MetricCache> metric_;
  bool max_;
  bool keep_without_;
};

/// Keeps a step when any of `policies` keeps it (a union). Throws nnx::Error when empty or
/// when one is null.
class AnyPreservationPolicy : public PreservationPolicy {
 public:
  explicit AnyPreservationPolicy(std::vector<PreservationPolicyPtr> policies);
  std::vector<bool> should_preserve(const std::vector<CheckpointInfo>& c, const PreservationContext& ctx) const override;

 private:
  std::vector<PreservationPolicyPtr> policies_;
};

}  // namespace nnx::checkpoint
