#include "nnx/checkpoint/preservation_policy.h"

#include <algorithm>
#include <cmath>

#include "nnx/framework/error.h"

namespace nnx::checkpoint {

using Infos = std::vector<CheckpointInfo>;

std::vector<bool> PreserveAll::should_preserve(const Infos& c, const PreservationContext&) const {
  return std::vector<bool>(c.size(), true);
}

LatestN::LatestN(int n) : n_(n) { NNX_CHECK(n >= 1, "LatestN: n must be >= 1, got ", n); }

std::vector<bool> LatestN::should_preserve(const Infos& c, const PreservationContext&) const {
  std::vector<bool> keep(c.size(), false);
  for (size_t i = c.size() > static_cast<size_t>(n_) ? c.size() - n_ : 0; i < c.size(); ++i) keep[i] = true;
  return keep;
}

EveryNSteps::EveryNSteps(int64_t interval_steps) : interval_(interval_steps) {
  NNX_CHECK(interval_steps >= 1, "EveryNSteps: interval_steps must be >= 1, got ", interval_steps);
}

std::vector<bool> EveryNSteps::should_preserve(const Infos& c, const PreservationContext&) const {
  std::vector<bool> keep(c.size());
  for (size_t i = 0; i < c.size(); ++i) keep[i] = c[i].step % interval_ == 0;
  return keep;
}

EveryNSeconds::EveryNSeconds(double interval_seconds) : interval_(interval_seconds) {
  NNX_CHECK(interval_seconds > 0, "EveryNSeconds: interval_seconds must be > 0, got ", interval_seconds);
}

std::vector<bool> EveryNSeconds::should_preserve(const Infos& c, const PreservationContext&) const {
  std::vector<bool> keep(c.size(), false);
  std::optional<double> last;
  for (size_t i = 0; i < c.size(); ++i) {
    if (!last || c[i].time >= *last + interval_) {
      keep[i] = true;
      last = c[i].time;
    }
  }
  return keep;
}

std::vector<bool> CustomSteps::should_preserve(const Infos& c, const PreservationContext&) const {
  std::vector<bool> keep(c.size());
  for (size_t i = 0; i < c.size(); ++i) keep[i] = steps_.count(c[i].step) > 0;
  return keep;
}

LatestDuration::LatestDuration(double ttl_seconds) : ttl_(ttl_seconds) {
  NNX_CHECK(ttl_seconds > 0, "LatestDuration: ttl_seconds must be > 0, got ", ttl_seconds);
}

std::vector<bool> LatestDuration::should_preserve(const Infos& c, const PreservationContext& ctx) const {
  std::vector<bool> keep(c.size());
  for (size_t i = 0; i < c.size(); ++i) keep[i] = ctx.now - c[i].time < ttl_;
  return keep;
}

MetricFn metric_key(std::string key) {
  return [key = std::move(key)](const nlohmann::json& m) {
    auto it = m.find(key);
    return it != m.end() && it->is_number() ? it->get<double>() : std::nan("");
  };
}

std::optional<double> MetricCache::get(const CheckpointInfo& info) const {
  std::lock_guard<std::mutex> lock(mu_);
  return get_locked(info);
}

std::vector<std::optional<double>> MetricCache::values(const Infos& infos) const {
  std::vector<std::optional<double>> v;
  v.reserve(infos.size());
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& info : infos) v.push_back(get_locked(info));
  return v;
}

std::optional<double> MetricCache::get_locked(const CheckpointInfo& info) const {
  const auto key = std::make_pair(info.step, info.time);
  auto it = values_.find(key);
  if (it != values_.end()) return it->second;
  std::optional<double> v;
  if (info.metrics.is_object()) {
    try {
      double x = fn_(info.metrics);
      if (std::isfinite(x)) v = x;
    } catch (const std::exception&) {  // a metric the function cannot read is no metric
    }
  }
  if (values_.size() > 100000) values_.clear();  // deleted steps' entries: bounded, recomputed on demand
  values_.emplace(key, v);
  return v;
}

namespace {
void check_mode(const std::string& mode, const char* who) {
  NNX_CHECK(mode == "min" || mode == "max", who, ": mode must be 'min' or 'max', got '", mode, "'");
}

// Indices of the steps with a finite metric, best first (ties: the newer step first).
std::vector<size_t> ranked_by_metric(const std::vector<std::optional<double>>& values, bool max) {
  const size_t n = values.size();
  std::vector<std::pair<double, size_t>> ranked;
  ranked.reserve(n);
  for (size_t i = 0; i < n; ++i)
    if (values[i]) ranked.emplace_back(max ? -*values[i] : *values[i], n - i);
  std::sort(ranked.begin(), ranked.end());
  std::vector<size_t> order;
  order.reserve(ranked.size());
  for (const auto& r : ranked) order.push_back(n - r.second);
  return order;
}
}  // namespace

BestN::BestN(MetricFn metric, std::string mode, int n, bool keep_checkpoints_without_metrics)
    : metric_(std::move(metric)), max_(mode == "max"), n_(n), keep_without_(keep_checkpoints_without_metrics) {
  check_mode(mode, "BestN");
  NNX_CHECK(n >= 1, "BestN: n must be >= 1, got ", n);
}

std::vector<bool> BestN::should_preserve(const Infos& c, const PreservationContext&) const {
  std::vector<bool> keep(c.size(), false);
  const auto values = metric_.values(c);
  auto order = ranked_by_metric(values, max_);
  for (size_t k = 0; k < order.size() && k < static_cast<size_t>(n_); ++k) keep[order[k]] = true;
  if (keep_without_)
    for (size_t i = 0; i < c.size(); ++i)
      if (!values[i]) keep[i] = true;
  return keep;
}

MaxToKeep::MaxToKeep(int n, MetricFn metric, std::string mode, bool keep_checkpoints_without_metrics)
    : n_(n), max_(mode == "max"), keep_without_(keep_checkpoints_without_metrics) {
  check_mode(mode, "max_to_keep");
  NNX_CHECK(n >= 1, "max_to_keep must be >= 1, got ", n);
  if (metric) metric_.emplace(std::move(metric));
}

std::vector<bool> MaxToKeep::should_preserve(const Infos& c, const PreservationContext&) const {
  std::vector<bool> keep(c.size(), false);
  if (c.empty()) return keep;
  size_t left = static_cast<size_t>(n_);
  auto take = [&](size_t i) {
    if (left > 0 && !keep[i]) {
      keep[i] = true;
      --left;
    }
  };
  take(c.size() - 1);  // the latest, always
  const auto values = metric_ ? metric_->values(c) : std::vector<std::optional<double>>(c.size());
  if (metric_)
    for (size_t i : ranked_by_metric(values, max_)) take(i);
  for (size_t i = c.size(); i-- > 0 && left > 0;)
    if (!metric_ || (keep_without_ && !values[i])) take(i);
  return keep;
}

AnyPreservationPolicy::AnyPreservationPolicy(std::vector<PreservationPolicyPtr> policies)
    : policies_(std::move(policies)) {
  NNX_CHECK(!policies_.empty(), "AnyPreservationPolicy needs at least one policy");
  for (const auto& p : policies_) NNX_CHECK(p != nullptr, "AnyPreservationPolicy: a policy is null");
}

std::vector<bool> AnyPreservationPolicy::should_preserve(const Infos& c, const PreservationContext& ctx) const {
  std::vector<bool> keep(c.size(), false);
  for (const auto& p : policies_) {
    auto k = p->should_preserve(c, ctx);
    NNX_CHECK(k.size() == c.size(), "a preservation policy returned ", k.size(), " flags for ", c.size(), " steps");
    for (size_t i = 0; i < c.size(); ++i) keep[i] = keep[i] || k[i];
  }
  return keep;
}

}  // namespace nnx::checkpoint
