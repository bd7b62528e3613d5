// Learning-rate schedules: pure functions of the optimizer's step count (optax's schedules).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "nnx/optim/schedule_types.h"

namespace nnx::optim {

/// A learning rate as a function of the step count s (the number of updates already applied):
/// the update that takes the count from s to s+1 uses schedule(s). The count is the optimizer's
/// `step` OptState, so a restored optimizer continues the schedule exactly.
class Schedule {
 public:
  Schedule(std::function<double(int64_t)> fn, nlohmann::json description);
  /// A constant schedule (implicit, so a double can stand for a schedule).
  Schedule(double value);  // NOLINT(google-explicit-constructor)
  double operator()(int64_t step) const { return fn_(step); }
  /// {"type": ..., parameters...}; from_json(to_json()) rebuilds the schedule.
  const nlohmann::json& to_json() const { return description_; }
  /// Throws nnx::Error naming the key for unknown types or missing/invalid parameters.
  static Schedule from_json(const nlohmann::json& json);

 private:
  std::function<double(int64_t)> fn_;
  nlohmann::json description_;
};

/// value at every step.
Schedule constant(double value);
/// Linear from init_value to peak_value over warmup_steps, then peak_value
/// (optax.linear_schedule).
Schedule linear_warmup(double peak_value, int64_t warmup_steps, double init_value = 0.0);
/// init_value * ((1 - alpha) * 0.5 * (1 + cos(pi * min(s, decay_steps) / decay_steps)) + alpha)
/// (optax.cosine_decay_schedule; Loshchilov & Hutter, SGDR, 2017).
Schedule cosine_decay(double init_value, int64_t decay_steps, double alpha = 0.0);
/// Linear warmup from init_value to peak_value over warmup_steps, then cosine decay to end_value
/// at decay_steps (total, warmup included) (optax.warmup_cosine_decay_schedule).
Schedule warmup_cosine(double peak_value, int64_t warmup_steps, int64_t decay_steps,
                       double end_value = 0.0, double init_value = 0.0);
/// init_value * gamma^floor(s / step_size) (torch.optim.lr_scheduler.StepLR).
Schedule step_decay(double init_value, int64_t step_size, double gamma);

}  // namespace nnx::optim
